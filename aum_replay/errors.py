"""The exception family: every error the library raises on bad input is an ``AumReplayError``."""

from __future__ import annotations

__all__ = ["AumReplayError", "FormatError", "InputError", "RecordingError", "RunLockedError"]


class AumReplayError(Exception):
    """Base class of every error aum-replay raises for bad input, files or options.

    Messages name the file, epoch, sample or value at fault. The CLI prints the message as one
    line on stderr and exits with status 1.
    """


class InputError(AumReplayError, ValueError):
    """Bad arguments to the logger, the calculator or the replay (shapes, dtypes, ids, options)."""


class FormatError(AumReplayError):
    """A shard file or run directory that is missing, corrupt, foreign or of an unknown version."""


class RecordingError(AumReplayError):
    """The logger could not write a shard: disk full, quota, file size limit, I/O or permission.

    Raised on the training thread at the next ``log``/``end_epoch``/``close``; the unfinished
    shard is removed and every epoch published before stays intact.
    """


class RunLockedError(AumReplayError):
    """Another live logger already records this rank of this run directory."""
