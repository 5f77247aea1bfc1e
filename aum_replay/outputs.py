"""A command's output files, committed together or not at all.

Every command that writes into an OUT_DIR (``compute``, ``flag``, ``plot``) does it through one
:class:`OutputSet`:

1. **One command at a time.** The set holds an exclusive lock (:mod:`aum_replay.locks`) on
   ``OUT_DIR/.aum-replay.lock`` for its lifetime, removed when released; the operating system
   releases it when the process ends, however it ends.
   A second command on the same OUT_DIR is refused with an error naming the holder.
2. **Everything checked first.** Before any work: the directory is created if missing and must
   be writable, and no final name may be taken by something that is not a regular file.
3. **Temporary names.** Each file is written under ``.NAME.PID.tmp`` beside its final name.
4. **A journaled commit.** Once every file is complete and fsynced, the list of renames (and of
   stale files of the set to remove) is written to ``.aum-replay-commit.json`` with one atomic
   rename; then the renames run and the journal is removed. A crash before the journal leaves
   the old files untouched; a crash after it is rolled forward by the next command, so the
   directory never settles on a mix of two commands' files.
5. **Leftovers.** Holding the lock proves that no other command is writing, so the next command
   removes any temporary file or scratch directory a killed command left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from aum_replay import locks
from aum_replay.csvout import CsvWriter
from aum_replay.errors import AumReplayError

__all__ = [
    "JOURNAL_NAME",
    "LOCK_NAME",
    "SCRATCH_PREFIX",
    "OutputSet",
    "describe_os_error",
    "write_error",
    "writing",
]

LOCK_NAME = ".aum-replay.lock"
JOURNAL_NAME = ".aum-replay-commit.json"
SCRATCH_PREFIX = ".aum-replay-"
"""Prefix of every scratch file or directory a command makes in OUT_DIR (spills, probes)."""
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp$")


def describe_os_error(exc: OSError) -> str:
    """``strerror`` of an OSError, with a hint for the errors a user can act on."""
    text = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some space or choose another OUT_DIR)"
    return text


def write_error(out_dir: Path, what: str, exc: BaseException) -> AumReplayError:
    """The one-line error for a failed write of ``what`` into ``out_dir``.

    ``exc`` is an OSError or the exception a library raised around one (polars wraps them).
    """
    if isinstance(exc, OSError):
        reason = describe_os_error(exc)
    else:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "No space left" in str(exc) or "os error 28" in str(exc):
            reason = "No space left on device (free some space or choose another OUT_DIR)"
    return AumReplayError(f"{out_dir}: cannot write {what}: {reason}; no output was changed")


class OutputSet:
    """The files one command writes into ``out_dir``, committed as a set.

    Parameters
    ----------
    out_dir
        The output directory; created if missing (and removed again if the command fails and
        it is still empty).
    names
        File names this command may write (each must be free or a regular file).
    stale
        Names of other files of the same set that this command does not write this time (e.g.
        ``full_aum_records.csv`` for a values-only replay): removed at commit, so that the
        directory never holds files of two different commands.

    Use as a context manager; call :meth:`commit` at the end of the ``with`` block. Leaving the
    block without committing (an error, Ctrl-C) removes every temporary file.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        names: Iterable[str],
        *,
        stale: Iterable[str] = (),
    ) -> None:
        self.out_dir = Path(out_dir).expanduser()
        self.names = tuple(names)
        self.stale = tuple(n for n in stale if n not in self.names)
        self.created = False
        self.removed_stale: list[Path] = []
        self.cleaned: list[Path] = []
        self._lock_fd: int | None = None
        self._pending: dict[str, Path] = {}
        self._handles: list[IO[bytes]] = []
        self._committed = False

    # ---------------------------------------------------------------- context
    def __enter__(self) -> OutputSet:
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                self._abort()
        finally:
            self._release()

    def check(self) -> OutputSet:
        """Check, without writing anything, that nothing is in the way of the outputs.

        For a command that does its work before it opens the set: a file where OUT_DIR or one of
        its parents should be, or a directory where an output file goes, fails here, before the
        work. :meth:`__enter__` checks again (and everything else). Returns ``self``.
        """
        path = self.out_dir
        ancestor = path
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            where = "output directory" if ancestor == path else f"parent of {path}"
            raise AumReplayError(f"{ancestor}: {where} is a file, not a directory")
        if ancestor == path:
            self._check_names()
        return self

    def _check_names(self) -> None:
        for name in (*self.names, *self.stale):
            final = self.out_dir / name
            if final.is_symlink() or (final.exists() and not final.is_file()):
                kind = "directory" if final.is_dir() else "something that is not a file"
                raise AumReplayError(
                    f"{final}: a {kind} is in the way of an output file; move it or choose "
                    "another OUT_DIR"
                )

    def _open(self) -> None:
        self.check()
        path = self.out_dir
        try:
            self.created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=path, prefix=SCRATCH_PREFIX + "probe-")  # noqa: SIM115
            probe.close()
        except OSError as exc:
            raise AumReplayError(
                f"{path}: output directory is not writable ({describe_os_error(exc)})"
            ) from None
        self._lock()
        self._recover()
        self._clean_leftovers()
        self._check_names()

    def _lock(self) -> None:
        lock_path = self.out_dir / LOCK_NAME
        try:
            self._lock_fd = locks.acquire(lock_path, removable=True)
        except locks.Busy as busy:
            raise AumReplayError(
                f"{self.out_dir}: another aum-replay command ({busy.holder}) is writing to this "
                "directory; wait for it to finish or choose another OUT_DIR"
            ) from None
        except locks.LockUnsupported as exc:
            raise AumReplayError(f"{lock_path}: {exc.strerror}") from None

    def _release(self) -> None:
        for fh in self._handles:
            with contextlib.suppress(OSError):
                fh.close()
        self._handles.clear()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            locks.release(fd, self.out_dir / LOCK_NAME)
        if self.created and not self._committed:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()  # only if nothing else is in it

    # ---------------------------------------------------------------- recovery
    def _recover(self) -> None:
        """Finish a commit that a killed command had journaled (roll forward)."""
        journal = self.out_dir / JOURNAL_NAME
        try:
            plan = json.loads(journal.read_text())
            renames = [(str(a), str(b)) for a, b in plan["renames"]]
            removes = [str(n) for n in plan.get("removes", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            # A journal is published by rename after it is complete, so this is not ours.
            raise AumReplayError(
                f"{journal}: unreadable commit journal; remove it after checking the outputs"
            ) from None
        self._apply(renames, removes)
        journal.unlink()
        _fsync_dir(self.out_dir)

    def _clean_leftovers(self) -> None:
        """Remove what killed commands left: we hold the lock, so no one else is writing."""
        for entry in os.scandir(self.out_dir):
            name = entry.name
            dead = name.startswith(SCRATCH_PREFIX) and name not in (LOCK_NAME, JOURNAL_NAME)
            match = _TEMPORARY.match(name)
            if match and entry.is_file(follow_symlinks=False):
                dead = True
            if not dead:
                continue
            target = Path(entry.path)
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(target)
                else:
                    target.unlink()
                self.cleaned.append(target)

    # ---------------------------------------------------------------- writing
    def temporary(self, name: str) -> Path:
        """The temporary path to write output ``name`` to; committed with the set."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this set's outputs {self.names}")
        tmp = self.out_dir / f".{name}.{os.getpid()}.tmp"
        self._pending[name] = tmp
        return tmp

    def open(self, name: str) -> IO[bytes]:
        """A binary file handle on the temporary of ``name`` (closed and fsynced at commit)."""
        fh = open(self.temporary(name), "wb")  # noqa: SIM115 - closed at commit or abort
        self._handles.append(fh)
        return fh

    def csv(self, name: str, columns: tuple[str, ...]) -> CsvWriter:
        """A CSV writer (header written) on the temporary of ``name``."""
        return CsvWriter(self.open(name), columns)

    def commit(self) -> list[Path]:
        """Publish every written file (and remove the stale ones) as one step.

        Returns the final paths written, in the order of ``names``.

        Raises
        ------
        AumReplayError
            If a file cannot be completed (a full disk, say): nothing is changed.
        """
        assert not self._committed, "already committed"
        pending = [(n, self._pending[n]) for n in self.names if n in self._pending]
        try:
            for fh in self._handles:
                if not fh.closed:
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
            for _, tmp in pending:
                _fsync_file(tmp)
            renames = [(tmp.name, name) for name, tmp in pending]
            removes = [n for n in self.stale if (self.out_dir / n).exists()]
            journal = self.out_dir / JOURNAL_NAME
            staged = journal.with_name(f"{JOURNAL_NAME}.{os.getpid()}.tmp")
            plan = {"pid": os.getpid(), "renames": renames, "removes": removes}
            with open(staged, "wb") as raw:
                raw.write(json.dumps(plan).encode())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(staged, journal)
            _fsync_dir(self.out_dir)
        except OSError as exc:
            raise write_error(self.out_dir, "the outputs", exc) from None
        # From here on the commit is decided: a crash is rolled forward by the next command.
        self._committed = True
        self._apply(renames, removes)
        self.removed_stale = [self.out_dir / n for n in removes]
        journal.unlink()
        _fsync_dir(self.out_dir)
        return [self.out_dir / name for name, _ in pending]

    def _apply(self, renames: list[tuple[str, str]], removes: list[str]) -> None:
        for tmp, final in renames:
            source = self.out_dir / tmp
            if source.exists():
                os.replace(source, self.out_dir / final)
        for name in removes:
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / name).unlink()

    def _abort(self) -> None:
        for fh in self._handles:
            with contextlib.suppress(OSError):
                fh.close()
        for tmp in self._pending.values():
            with contextlib.suppress(OSError):
                tmp.unlink()

    @property
    def pending(self) -> dict[str, Path]:
        """Output name -> temporary path, for the files written so far."""
        return dict(self._pending)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def writing(out_dir: Path, what: str) -> Iterator[None]:
    """Turn an OSError (or polars' wrapped one) while writing ``what`` into the one-line error."""
    try:
        yield
    except AumReplayError:
        raise
    except OSError as exc:
        raise write_error(out_dir, what, exc) from None
    except Exception as exc:
        if _is_io_error(exc):
            raise write_error(out_dir, what, exc) from None
        raise


def _is_io_error(exc: BaseException) -> bool:
    text = str(exc)
    return type(exc).__module__.startswith("polars") and (
        "os error" in text or "No space left" in text or "I/O" in text
    )
