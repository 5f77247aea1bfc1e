"""The exception family: every error the library raises on bad input is an ``AumReplayError``."""

from __future__ import annotations

__all__ = ["AumReplayError", "FormatError", "InputError"]


class AumReplayError(Exception):
    """Base class of every error aum-replay raises for bad input, files or options.

    Messages name the file, epoch, sample or value at fault. The CLI prints the message as one
    line on stderr and exits with status 1.
    """


class InputError(AumReplayError, ValueError):
    """Bad arguments to the logger, the calculator or the replay (shapes, dtypes, ids, options)."""


class FormatError(AumReplayError):
    """A shard file or run directory that is missing, corrupt, foreign or of an unknown version."""
