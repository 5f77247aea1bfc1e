"""What both integrations share: the missing-extra error and the checks of logger options."""

from __future__ import annotations

from typing import Any

from aum_replay.errors import AumReplayError, InputError

__all__ = ["MissingExtraError", "check_logger_options", "missing_extra"]

# Options the callbacks set themselves: the trainer knows the rank, the world size and the epoch.
_OWNED = ("rank", "world_size")


class MissingExtraError(AumReplayError, ImportError):
    """An integration's framework is not installed; the message names the extra to install."""


def missing_extra(module: str, framework: str, extra: str) -> MissingExtraError:
    return MissingExtraError(
        f'{module} needs {framework}, which is not installed: pip install "aum-replay[{extra}]"'
    )


def check_logger_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``**logger_options`` up front (in ``__init__``), not when training starts."""
    import inspect

    from aum_replay.logger import COMPRESSION_CHOICES, STORAGE_CHOICES, LogitLogger

    taken = sorted(set(options) & set(_OWNED))
    if taken:
        raise InputError(
            f"{', '.join(taken)} come(s) from the trainer; do not pass them to the callback"
        )
    accepted = set(inspect.signature(LogitLogger.__init__).parameters) - {"self", "run_dir"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(
            f"unknown LogitLogger option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted - set(_OWNED)))}"
        )
    if options.get("storage", "auto") not in STORAGE_CHOICES:
        raise InputError(f"storage must be one of {STORAGE_CHOICES}, not {options['storage']!r}")
    if options.get("compression") not in COMPRESSION_CHOICES:
        raise InputError(
            f"compression must be one of {COMPRESSION_CHOICES}, not {options['compression']!r}"
        )
    return dict(options)
