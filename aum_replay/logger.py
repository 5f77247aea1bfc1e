"""LogitLogger: the training-time hook that records each epoch's logits to HDF5 shards.

The caller's thread only validates the batch and copies it into a preallocated, chunk-sized host
buffer (one ``copy_``: device, dtype and detach in one go). Full buffers go to a background writer
thread through a bounded pool, so a slow disk slows training down (back-pressure) instead of
growing memory. An epoch is published - flushed, fsynced and renamed to its final name - when the
next epoch starts, on :meth:`LogitLogger.end_epoch` or on :meth:`LogitLogger.close`; publishing
waits for the writer, so once ``end_epoch()`` returns the epoch survives a ``SIGKILL``.

Faults: a full disk, a quota, a file size limit, an I/O or a permission error in the writer
becomes one :class:`RecordingError` raised on the training thread at the next ``log``,
``end_epoch`` or ``close`` (or, with ``on_error="stop"``, one warning, and recording stops); the
unfinished shard is removed and published ones stay intact. One logger records a (run, rank): a
lock on ``.rank_NNN.lock`` in the run directory, released by the OS when the process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import threading
import uuid
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from aum_replay import locks
from aum_replay.batch import check_logits, check_storable_ids, check_targets, normalize_ids
from aum_replay.errors import AumReplayError, InputError, RecordingError, RunLockedError
from aum_replay.format import (
    DISK_DTYPES,
    EPOCH_LIMIT,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    TMP_SUFFIX,
    ShardInfo,
    ShardWriter,
    describe_threshold,
    index_dtype,
    list_shards,
    read_info,
    shard_name,
    torch_dtype,
    torch_to_stored,
)
from aum_replay.summary import summarize

__all__ = ["LogitLogger"]

STORAGE_CHOICES = ("auto", "float32", "float16", "summary")
COMPRESSION_CHOICES = (None, "lzf", "gzip")
ON_ERROR_CHOICES = ("raise", "stop")


class LogitLogger:
    """Record logits, targets and sample ids of every training step, one shard per epoch and rank.

    Parameters
    ----------
    run_dir
        Directory of the run; created if missing. A directory that already holds shards is
        resumed: logging an epoch that is already published replaces that rank's shard (with a
        warning) when the epoch is published again.
    rank, world_size
        Taken from ``torch.distributed`` when it is initialised, else 0 and 1.
    storage
        ``"auto"`` (default) keeps the logits' own precision: float32 as float32, float16 and
        bfloat16 bit-exact, float64 as float64. ``"float16"`` halves the disk of float32 logits
        but is lossy (AUM changes by ~1e-3); ``"float32"`` stores everything as float32.
        ``"summary"`` (format v2) stores per row only what the replay needs - target and largest
        other logit in the logits' dtype, its index, the argmax, log-sum-exp and EL2N - instead
        of the C logits (~100x less disk at C=1000): the same AUM files bit for bit, the
        dynamics signals exactly or to float64 rounding (:mod:`aum_replay.summary`), but no
        other statistic of the full rows can be computed later.
    compression
        ``None`` (default), ``"lzf"`` or ``"gzip"``. Real logits compress only ~1.1-1.3x and
        compressed shards replay 2-10x slower, so the default is off.
    chunk_bytes
        Byte budget of one chunk of rows - logits, targets and ids together (default 2 MiB);
        the host buffers hold the logits of one chunk. A shard takes at least one chunk on
        disk however few rows it has.
    max_pending
        Full buffers that may wait for the writer before ``log`` blocks (default 4).
    metadata
        JSON-able dict stored in every shard (hyper-parameters, a git hash, ...).
    threshold_samples
        A :class:`aum_replay.ThresholdSampleDataset` (or its ``threshold_metadata()`` dict): the
        threshold-sample ids, extra class, seed and set index are recorded for ``aum-replay flag``.
        A resumed run must keep its threshold set: another one is refused.
    on_error
        What a failure to write a shard (disk full, quota, I/O or permission error) does.
        ``"raise"`` (default): a :class:`~aum_replay.RecordingError` at the next ``log``,
        ``end_epoch`` or ``close``, so a run that cannot be recorded is noticed at once, not
        after days of training with epochs missing. ``"stop"``: one ``RuntimeWarning`` with the
        same line, then recording stops and every later call does nothing; training goes on.
        Either way the unfinished shard is removed and the published ones stay intact.
    format_version
        Shard format to write: 2 (checksummed; the default for a new run) or 1 (readable by
        older aum-replay releases). ``None`` (default): a resumed run keeps the version it has.
    run_id
        The run's id, recorded in every v2 shard so that shards of another run are refused.
        ``None`` (default): the first logger of a run makes one up and keeps it in
        ``run_dir/.run_id``, which the other ranks and every resuming logger read. Pass the same
        string on every rank when ranks do not share the run directory (node-local disks).

    Raises
    ------
    RunLockedError
        Another live logger records this rank of ``run_dir`` (its pid and host are named).

    Epochs must be ints with ``0 <= epoch < 2**31``; integer sample ids must fit int64 (a
    ``uint64`` id of ``2**63`` or more is refused, not wrapped).

    Examples
    --------
    >>> with LogitLogger("runs/exp1") as logger:  # doctest: +SKIP
    ...     for epoch in range(num_epochs):
    ...         for inputs, targets, sample_ids in loader:
    ...             logits = model(inputs)
    ...             logger.log(logits, targets, sample_ids, epoch=epoch)
    ...         logger.end_epoch()
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        storage: str = "auto",
        compression: str | None = None,
        chunk_bytes: int = 2 << 20,
        max_pending: int = 4,
        metadata: dict[str, Any] | None = None,
        threshold_samples: Any = None,
        on_error: str = "raise",
        format_version: int | None = None,
        run_id: str | None = None,
    ) -> None:
        if storage not in STORAGE_CHOICES:
            raise InputError(f"storage must be one of {STORAGE_CHOICES}, not {storage!r}")
        if compression not in COMPRESSION_CHOICES:
            raise InputError(
                f"compression must be one of {COMPRESSION_CHOICES}, not {compression!r}"
            )
        if chunk_bytes < 1024:
            raise InputError(f"chunk_bytes must be at least 1024, not {chunk_bytes}")
        if max_pending < 1:
            raise InputError(f"max_pending must be at least 1, not {max_pending}")
        if on_error not in ON_ERROR_CHOICES:
            raise InputError(f"on_error must be one of {ON_ERROR_CHOICES}, not {on_error!r}")
        if format_version is not None and format_version not in FORMAT_VERSIONS:
            raise InputError(
                f"format_version must be one of {FORMAT_VERSIONS}, not {format_version!r}"
            )
        if run_id is not None and not _valid_run_id(run_id):
            raise InputError(
                f"run_id must be 1-64 letters, digits, '-', '_' or '.', not {run_id!r}"
            )
        self.on_error = on_error
        dist_rank, dist_world = _distributed()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank {self.rank} is outside world size {self.world_size}")
        try:
            json.dumps(metadata or {})
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata must be JSON-serialisable: {exc}") from None
        self.metadata = dict(metadata or {})
        self.threshold = _threshold_metadata(threshold_samples)
        self.storage = storage
        self.compression = compression
        self.chunk_bytes = int(chunk_bytes)
        self.run_dir = Path(run_dir).expanduser()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AumReplayError(f"{self.run_dir}: cannot create run directory ({exc})") from None
        self._lock_fd = _lock_rank(self.run_dir, self.rank)
        _LOCKED.add(self)
        try:
            self._clean_temporaries()
            self.num_classes: int | None = None
            self.id_kind: str | None = None
            existing = list_shards(self.run_dir)
            self._published = {(e, r) for e, r, _ in existing}
            resumed = read_info(existing[0][2]) if existing else None
            if resumed is not None:
                self.num_classes, self.id_kind = resumed.num_classes, resumed.id_kind
                self._check_resumed(resumed)
            self.format_version = format_version or (
                resumed.format_version if resumed is not None else FORMAT_VERSION
            )
            if storage == "summary" and self.format_version < 2:
                raise InputError(
                    f"{self.run_dir}: storage='summary' needs format v2; this run is v1"
                    if resumed is not None
                    else "storage='summary' needs format_version=2"
                )
            kind = "summary" if storage == "summary" else "logits"
            if resumed is not None and resumed.storage != kind:
                raise InputError(
                    f"{self.run_dir}: this logger stores {kind}, but the run it resumes stores "
                    f"{resumed.storage} ({resumed.path.name}); a run keeps one storage kind"
                )
            if resumed is not None and self.format_version != resumed.format_version:
                raise InputError(
                    f"{self.run_dir}: this run is written in format v{resumed.format_version} "
                    f"({resumed.path.name}), not v{self.format_version}; a run keeps one format"
                )
            self.run_id = (
                _run_id(self.run_dir, resumed, run_id) if self.format_version >= 2 else None
            )
        except BaseException:
            _LOCKED.discard(self)
            _unlock(self._lock_fd)
            raise

        self._epoch: int | None = None
        self._stored: str | None = None
        self._chunk_rows = 0
        self._buffer: torch.Tensor | None = None
        self._targets = np.zeros(0, dtype=np.int64)
        self._ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self._fill = 0
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._max_pending = max_pending
        self._buffers_made = 0
        self._tasks: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._stopped = False  # on_error="stop" after a failure: every call does nothing
        self._thread = threading.Thread(
            target=self._writer_loop, name="aum-replay-writer", daemon=True
        )
        self._thread.start()
        # A daemon thread still holding an open HDF5 file when the interpreter finalises hangs
        # or segfaults the process, so a logger nobody closed is stopped at exit.
        atexit.register(self._stop_at_exit)

    # ------------------------------------------------------------------ caller's thread
    def log(self, logits: torch.Tensor, targets: Any, sample_ids: Any, *, epoch: int) -> None:
        """Record one batch.

        Parameters
        ----------
        logits
            Tensor (B, C), any float dtype, any device, with or without grad.
        targets
            Integer labels (B,), a tensor or an array, each in ``[0, C)``.
        sample_ids
            (B,) ids: a LongTensor, a numpy array, a list of ints or a list of strings.
        epoch
            The epoch these rows belong to. A new number publishes the previous epoch first.
        """
        self._raise_pending()
        if self._stopped:
            return
        if self._closed:
            raise AumReplayError("log() called on a closed LogitLogger")
        if (
            isinstance(epoch, bool)
            or not isinstance(epoch, (int, np.integer))
            or not 0 <= epoch < EPOCH_LIMIT
        ):
            raise InputError(f"epoch must be an int with 0 <= epoch < 2**31, got {epoch!r}")
        epoch = int(epoch)
        logits = check_logits(logits)
        rows, num_classes = logits.shape
        if rows == 0:
            # Nothing to record, whatever the dtype of the empty targets and ids; an empty id
            # list has no kind, and must not fix the run's.
            check_targets(targets, 0, num_classes)
            normalize_ids(sample_ids, 0)
            return
        if self.num_classes is not None and num_classes != self.num_classes:
            raise InputError(
                f"logits have {num_classes} classes but this run has {self.num_classes}; "
                "the number of classes must not change within a run"
            )
        target_array = check_targets(targets, rows, num_classes)
        ids, kind = normalize_ids(sample_ids, rows)
        if self.id_kind is not None and kind != self.id_kind:
            raise InputError(
                f"sample ids are {kind}s but this run's ids are {self.id_kind}s; "
                "one run uses one id kind"
            )
        if kind == "str":
            check_storable_ids(ids)
        stored = self._stored_dtype(logits.dtype)
        if self._stored is not None and stored != self._stored and epoch == self._epoch:
            raise InputError(
                f"logits dtype changed within epoch {epoch} "
                f"(stored as {self._stored}, now {stored})"
            )
        if epoch != self._epoch:
            self._finish_epoch()
            self._begin_epoch(epoch, num_classes, stored, logits.dtype, kind)
        self.num_classes, self.id_kind = num_classes, kind
        done = 0
        while done < rows:
            if self._buffer is None:
                self._buffer = self._take_buffer()
                self._fill = 0
            take = min(rows - done, self._chunk_rows - self._fill)
            lo, hi = self._fill, self._fill + take
            self._buffer[lo:hi].copy_(logits[done : done + take])
            self._targets[lo:hi] = target_array[done : done + take]
            self._ids[lo:hi] = ids[done : done + take]
            self._fill = hi
            done += take
            if self._fill == self._chunk_rows:
                self._hand_over()

    def end_epoch(self) -> Path | None:
        """Publish the current epoch now and wait until it is on disk; returns its path.

        ``None`` when no epoch was open, or when recording has stopped (``on_error="stop"``).
        """
        if self._stopped:
            return None
        path = self._finish_epoch()
        self._raise_pending()
        return path

    def close(self) -> None:
        """Publish the current epoch, stop the writer and raise any error it met. Idempotent."""
        if self._closed:
            self._raise_pending()
            return
        try:
            if not self._stopped:
                self._finish_epoch()
        finally:
            self._stop()
        self._raise_pending()

    def abort(self) -> None:
        """Discard the unfinished epoch (nothing is published) and stop the writer."""
        if self._closed:
            return
        if self._epoch is not None:
            self._tasks.put(("abort",))
            self._epoch = None
        self._buffer = None
        self._stop()

    def __enter__(self) -> LogitLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard(f"was interrupted by {exc_type.__name__} and is not published")

    # ------------------------------------------------------------------ helpers
    def _check_resumed(self, info: ShardInfo) -> None:
        """Refuse to continue a run whose threshold samples differ from this logger's."""
        if (info.threshold or None) != (self.threshold or None):
            raise InputError(
                f"{self.run_dir}: this logger's threshold samples are "
                f"{describe_threshold(self.threshold)}, but the run it resumes has "
                f"{describe_threshold(info.threshold)} ({info.path.name}); one run keeps one "
                "threshold set: use a new run directory"
            )

    def _stored_dtype(self, dtype: torch.dtype) -> str:
        if self.storage == "float16":
            return "float16"
        if self.storage == "float32":
            return "float32"
        return torch_to_stored(dtype)  # "auto" and "summary" keep the logits' dtype

    def _begin_epoch(
        self, epoch: int, num_classes: int, stored: str, dtype: torch.dtype, kind: str
    ) -> None:
        if (epoch, self.rank) in self._published:
            warnings.warn(
                f"epoch {epoch} rank {self.rank} is already published in {self.run_dir}; "
                "it will be replaced when this epoch is published",
                stacklevel=3,
            )
        # A row costs its logits, a target (int64) and an id (int64, or a 16-byte reference to a
        # string). Sizing chunks by the logits alone made the target and id chunks of a run with
        # few classes several times the budget: every shard, however short, took 8-14 MiB.
        itemsize = DISK_DTYPES[stored].itemsize
        row_bytes = num_classes * itemsize + 8 + (8 if kind == "int" else 16)
        chunk_rows = max(1, self.chunk_bytes // row_bytes)
        if (chunk_rows, num_classes, stored) != (
            self._chunk_rows,
            self.num_classes,
            self._stored,
        ) or kind != self.id_kind:
            self._free = queue.Queue()  # shape changed: old buffers are dropped
            self._buffers_made = 0
            self._targets = np.zeros(chunk_rows, dtype=np.int64)
        self._ids = np.zeros(chunk_rows, dtype=np.int64 if kind == "int" else object)
        self._chunk_rows, self._stored, self._epoch = chunk_rows, stored, epoch
        summary = self.storage == "summary"
        if summary:  # chunks of summary rows, under the same byte budget
            index = index_dtype(num_classes).itemsize
            summary_row = 2 * itemsize + 3 * index + 16 + (8 if kind == "int" else 16)
            chunk_rows = max(1, self.chunk_bytes // summary_row)
        self._tasks.put(
            (
                "open",
                dict(
                    final_path=self.run_dir / shard_name(epoch, self.rank),
                    epoch=epoch,
                    rank=self.rank,
                    world_size=self.world_size,
                    num_classes=num_classes,
                    logits_dtype=str(dtype).removeprefix("torch."),
                    stored_dtype=stored,
                    id_kind=kind,
                    chunk_rows=chunk_rows,
                    compression=self.compression,
                    metadata=self.metadata,
                    threshold=self.threshold,
                    format_version=self.format_version,
                    run_id=self.run_id,
                    storage="summary" if summary else "logits",
                ),
            )
        )

    def _take_buffer(self) -> torch.Tensor:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._buffers_made < self._max_pending + 1:
            self._buffers_made += 1
            assert self.num_classes is not None and self._stored is not None
            return torch.empty(
                (self._chunk_rows, self.num_classes), dtype=torch_dtype(self._stored)
            )
        while True:  # back-pressure: wait for the writer to hand a buffer back
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                self._raise_pending()

    def _hand_over(self) -> None:
        if self._buffer is None or self._fill == 0:
            return
        n = self._fill
        rows = ("rows", self._buffer, self._targets[:n].copy(), self._ids[:n].copy(), n)
        self._tasks.put((*rows, self._stored))
        self._buffer, self._fill = None, 0

    def _finish_epoch(self) -> Path | None:
        if self._epoch is None:
            return None
        self._hand_over()
        done = threading.Event()
        result: list[Path] = []
        self._tasks.put(("publish", done, result))
        while not done.wait(timeout=0.5):
            if not self._thread.is_alive():  # pragma: no cover - the writer never dies silently
                raise AumReplayError("the LogitLogger writer thread died")
        epoch, self._epoch = self._epoch, None
        if not result:  # the writer failed during this epoch: nothing was published
            self._raise_pending()
            if self._stopped:
                return None
            raise AumReplayError(
                f"epoch {epoch} rank {self.rank} was not published: the writer failed earlier "
                "in this epoch (see the error raised then); earlier epochs are intact"
            )
        self._published.add((epoch, self.rank))
        return result[0]

    def _stop(self) -> None:
        self._closed = True
        self._tasks.put(("stop",))
        self._thread.join()
        atexit.unregister(self._stop_at_exit)
        _LOCKED.discard(self)
        fd, self._lock_fd = self._lock_fd, -1
        _unlock(fd)

    def _stop_at_exit(self) -> None:
        # The epoch may be incomplete (an uncaught exception also ends here): never publish it.
        if not self._closed:
            self._discard(
                "is not published (call end_epoch() or close())",
                prefix=f"LogitLogger for {self.run_dir} was not closed: ",
            )

    def _discard(self, what: str, prefix: str = "") -> None:
        """Abort, warning that the unfinished epoch, if any, ``what``."""
        if self._epoch is not None:
            warnings.warn(
                f"{prefix}epoch {self._epoch} {what}; earlier epochs are intact", stacklevel=3
            )
        self.abort()

    def _raise_pending(self) -> None:
        if self._error is None:
            return
        error, self._error = self._error, None
        if not isinstance(error, AumReplayError):  # pragma: no cover - the writer wraps its errors
            error = AumReplayError(f"LogitLogger writer failed: {error}")
        if self.on_error == "stop":
            if not self._stopped:
                self._stopped = True
                self._buffer, self._epoch = None, None
                self._free = queue.Queue()  # the buffers are not needed any more
                warnings.warn(
                    f"{error}; recording stopped, training goes on (on_error='stop')",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        raise error.with_traceback(None) from None

    def _clean_temporaries(self) -> None:
        """Remove this rank's temporary shards left by dead processes (a crash mid-epoch)."""
        suffix = f".rank_{self.rank:03d}.h5."
        for entry in os.scandir(self.run_dir):
            name = entry.name
            if not (name.endswith(TMP_SUFFIX) and suffix in name):
                continue
            pid_text = name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1]
            if pid_text.isdigit() and _alive(int(pid_text)):
                continue
            Path(entry.path).unlink(missing_ok=True)

    # ------------------------------------------------------------------ writer thread
    def _writer_loop(self) -> None:
        writer: ShardWriter | None = None
        while True:
            task = self._tasks.get()
            kind = task[0]
            try:
                if kind == "stop":
                    if writer is not None:
                        writer.abort()
                    return
                if kind == "open":
                    if writer is not None:
                        writer.abort()
                    writer = None
                    if self._error is None:
                        writer = ShardWriter(**task[1])
                elif kind == "rows":
                    _, buffer, targets, ids, n, stored = task
                    if writer is not None:
                        if buffer.dtype == torch.bfloat16:
                            data = buffer[:n].view(torch.int16).numpy().view(np.uint16)
                        else:
                            data = buffer[:n].numpy()
                        if self.storage == "summary":  # the replay's kernels, off the hot path
                            writer.append_summary(summarize(data, targets, stored), targets, ids)
                        else:
                            writer.append(data, targets, ids)
                    self._free.put(buffer)
                elif kind == "publish":
                    # On failure the handler below records the error and removes the temporary
                    # before it wakes the caller, so end_epoch() cannot miss the error.
                    _, done, result = task
                    if writer is not None:
                        result.append(writer.publish())
                        writer = None
                    done.set()
                elif kind == "abort" and writer is not None:
                    writer.abort()
                    writer = None
            except BaseException as exc:
                tmp = writer.tmp_path if writer is not None else None
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.abort()  # safe after any error: HDF5 never saw the failed I/O
                    writer = None
                if isinstance(exc, AumReplayError):
                    message = str(exc)
                else:
                    where = f" writing {tmp}" if tmp is not None else ""
                    message = f"LogitLogger writer failed{where}: {type(exc).__name__}: {exc}"
                if tmp is not None and tmp.exists():
                    message += f"; the unfinished shard {tmp.name} could not be removed"
                elif tmp is not None:
                    message += "; the unfinished shard was removed"
                message += ", published epochs are intact"
                self._error = (
                    RecordingError(message)
                    if isinstance(exc, (RecordingError, OSError))
                    else AumReplayError(message)
                )
                if kind == "rows":
                    self._free.put(task[1])
                if kind == "publish":
                    task[1].set()


def _distributed() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: Loggers of this process that hold a lock; a forked child closes its copies (see _lock_rank).
_LOCKED: weakref.WeakSet[LogitLogger] = weakref.WeakSet()


def _lock_rank(run_dir: Path, rank: int) -> int:
    """Hold ``run_dir/.rank_NNN.lock`` (:mod:`aum_replay.locks`): one logger per (run, rank).

    A forked child (a DataLoader worker) closes its copy of the descriptor, so the lock goes with
    the process that took it, not with the last of its children.
    """
    path = run_dir / f".rank_{rank:03d}.lock"
    try:
        return locks.acquire(path)
    except locks.Busy as busy:
        holder = busy.holder
        if holder.endswith("this very process"):
            holder += " (an earlier LogitLogger on this run and rank was never closed: close() it)"
        raise RunLockedError(
            f"{run_dir}: rank {rank} is already being recorded by {holder} (lock {path.name}); "
            "a second logger would replace its epochs: stop that process, or use another run "
            "directory or rank"
        ) from None
    except locks.LockUnsupported as exc:
        raise AumReplayError(f"{path}: {exc.strerror}") from None


def _unlock(fd: int) -> None:
    locks.release(fd)


def _close_locks_in_child() -> None:
    for logger in list(_LOCKED):
        fd, logger._lock_fd = logger._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copy only: the parent keeps the lock
    _LOCKED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RUN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _valid_run_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _RUN_ID_CHARS


RUN_ID_FILE = ".run_id"


def _run_id(run_dir: Path, resumed: ShardInfo | None, requested: str | None) -> str:
    """The run id this logger records: the run's own when it resumes, else the one the first
    logger of the run wrote to ``run_dir/.run_id`` (made atomically: ranks that start together
    agree on one), else ``requested`` or a new random one."""
    path = run_dir / RUN_ID_FILE
    known = resumed.run_id if resumed is not None else None
    where = resumed.path.name if resumed is not None else ""
    if known is None:
        known, where = _read_run_id(path), path.name
    if known is None:
        candidate = requested or uuid.uuid4().hex
        tmp = run_dir / f"{RUN_ID_FILE}.{os.getpid()}{TMP_SUFFIX}"
        try:
            tmp.write_text(candidate + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic: exactly one logger's id wins
        except OSError as exc:
            raise RecordingError(f"{path}: cannot record the run id ({exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        known, where = _read_run_id(path), path.name
        if known is None:  # pragma: no cover - the file was just made
            raise RecordingError(f"{path}: cannot read back the run id")
        if known == candidate and requested is None:
            return known
    if requested is not None and requested != known:
        raise InputError(
            f"{run_dir}: run_id {requested!r} was given, but the run already has run id "
            f"{known!r} ({where}); shards of two runs must not mix"
        )
    return known


def _read_run_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read the run id ({exc})") from None
    if not _valid_run_id(text):
        raise RecordingError(f"{path}: not a run id ({text[:40]!r}); remove the file")
    return text


def _threshold_metadata(source: Any) -> dict[str, Any] | None:
    if source is None:
        return None
    meta = source.threshold_metadata() if hasattr(source, "threshold_metadata") else source
    if not isinstance(meta, dict) or "sample_ids" not in meta or "extra_class" not in meta:
        raise InputError(
            "threshold_samples must be a ThresholdSampleDataset or its threshold_metadata() dict"
        )
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise InputError(f"threshold metadata must be JSON-serialisable: {exc}") from None
    return dict(meta)
