"""Exclusive locks that the operating system releases when their process dies.

One writer per (run, rank) (:class:`aum_replay.LogitLogger`) and one command per OUT_DIR
(:class:`aum_replay.outputs.OutputSet`) both hold an ``flock`` on a small file: however the
holder ends (``SIGKILL``, OOM, a lost node), the kernel drops the lock, so there is never a stale
lock to remove by hand. The file holds the holder's pid and host, for the message the next one
gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["Busy", "LockUnsupported", "acquire", "release"]


class Busy(Exception):
    """Another live process holds the lock; ``holder`` says who, in words."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class LockUnsupported(OSError):
    """The lock file cannot be opened or locked (the file system has no locks, say)."""


def acquire(path: Path, *, removable: bool = False) -> int:
    """Hold ``path`` exclusively (created if missing); returns the descriptor to :func:`release`.

    ``removable``: the holder removes the file when it releases it (an OUT_DIR stays clean).
    Then a process that opened the file just before it was removed may lock a file nobody else
    sees, so after locking it checks that the path still names its file, and tries again if not.

    Raises
    ------
    Busy
        Another process holds the lock.
    LockUnsupported
        The file cannot be opened or locked.
    """
    if fcntl is None:  # pragma: no cover
        return -1
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise LockUnsupported(
                exc.errno, f"cannot open the lock file ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise Busy(who) from None
        except OSError as exc:
            os.close(fd)
            raise LockUnsupported(
                exc.errno, f"cannot lock ({exc.strerror}); this file system has no locks"
            ) from None
        except BaseException:  # Ctrl-C between the open and the lock: hold nothing, leave nothing
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                release(fd, path if removable else None)
                fd = -1
            if fd >= 0:
                os.close(fd)
            raise
        if not removable or _names(path, fd):
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # the lock is what counts; the text only helps a message
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname()}
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return fd


def release(fd: int, path: Path | None = None) -> None:
    """Let go of a lock from :func:`acquire`; with ``path`` (a removable lock), remove its file
    first, while still holding it (see :func:`acquire`)."""
    if fd < 0:
        return
    if path is not None and _names(path, fd):
        with contextlib.suppress(OSError):
            path.unlink()
    os.close(fd)  # releases the flock


def _names(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (pid unknown)"
    if pid == os.getpid() and host == socket.gethostname():
        return f"pid {pid} on host {host}, this very process"
    return f"pid {pid} on host {host}"
