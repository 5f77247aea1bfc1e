"""The on-disk contract (formats v1 and v2): file names, datasets, records; writer and reader.

A run directory holds one HDF5 *shard* per (epoch, rank)::

    run_dir/epoch_00003.rank_001.h5

**Format v2** (written by default). Every dataset has R rows (in the order they were logged) or,
for the string-id blob, the bytes of R ids:

- storage ``"logits"``: ``logits`` (R, C) in the stored dtype (``float32``, ``float64``,
  ``float16``; ``bfloat16`` kept bit-exact as ``uint16``) and ``targets`` (R,) ``int64``;
- storage ``"summary"``: per row what every replayed signal needs instead of the C logits
  (:mod:`aum_replay.summary`): ``target_val``, ``other_val`` (stored dtype), ``other_logit``,
  ``argmax`` and ``targets`` (the smallest signed int that holds C), ``lse`` and ``el2n``
  (``float64``);
- ids: ``sample_ids`` (R,) ``int64``, or ``sample_id_ends`` (R,) ``int64`` (where each row's
  UTF-8 bytes end) and ``sample_id_bytes`` (the ids' UTF-8 bytes, one blob).

The HDF5 attributes are only ``format`` and ``format_version`` (fixed-size: no variable-length
string anywhere). Everything else - epoch, rank, run id, classes, dtypes, metadata, threshold
samples, chunk offsets, and a checksum (XXH3-64) of each group of ``group_rows`` rows of every
dataset - is one checksummed manifest appended after the HDF5 file (:mod:`aum_replay.manifest`).
The reader validates a shard from that record alone and reads rows with ``preadv`` at the offsets
it gives, verifying every group it returns; HDF5 reads only compressed datasets.

**Format v1** (read forever, written with ``format_version=1``): ``logits``, ``targets`` and
``sample_ids`` (``int64`` or variable-length UTF-8 strings), described by the HDF5 attributes
listed in :data:`REQUIRED_ATTRS`, without checksums.

A shard is written under a temporary name (``<final name>.<pid>.tmp``) and renamed once
complete, so a file under its final name is always whole. Both the writer
(:mod:`aum_replay.logger`) and every reader import this module; nothing else knows dataset
names, attribute keys or the manifest's fields.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import h5py
import numpy as np

from aum_replay import location, manifest
from aum_replay._version import __version__
from aum_replay.errors import FormatError, InputError, RecordingError
from aum_replay.location import Blob, Entry, Location, list_dir, open_blob

if TYPE_CHECKING:  # torch is imported where a tensor is made, never by the readers
    import torch

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "describe_threshold",
    "list_lookalikes",
    "list_shards",
    "list_temporaries",
    "read_all_ids",
    "shard_name",
    "utf8_keys",
]

FORMAT_NAME = "aum-replay-shard"
#: The newest version this package reads and writes; :data:`FORMAT_VERSIONS` are all it reads.
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)

LOGITS = "logits"
TARGETS = "targets"
SAMPLE_IDS = "sample_ids"
ID_ENDS = "sample_id_ends"
ID_BYTES = "sample_id_bytes"

#: What a v2 shard stores per row: the logits, or their summary (:mod:`aum_replay.summary`).
STORAGE_KINDS = ("logits", "summary")
TARGET_VAL, OTHER_VAL, OTHER_LOGIT, ARGMAX, LSE, EL2N = (
    "target_val",
    "other_val",
    "other_logit",
    "argmax",
    "lse",
    "el2n",
)
SUMMARY_COLUMNS = (TARGET_VAL, OTHER_VAL, OTHER_LOGIT, ARGMAX, LSE, EL2N)

SHARD_RE = re.compile(r"^epoch_(\d{5,})\.rank_(\d{3,})\.h5$")
TMP_SUFFIX = ".tmp"

REQUIRED_ATTRS = (
    "format",
    "format_version",
    "epoch",
    "rank",
    "world_size",
    "num_classes",
    "logits_dtype",
    "stored_dtype",
    "id_kind",
    "num_rows",
    "package_version",
    "created_utc",
    "metadata",
)

#: Stored dtype name -> numpy dtype on disk (bfloat16 is kept as its 16-bit patterns). The torch
#: dtype of the same name is the one in memory (:func:`torch_dtype`).
DISK_DTYPES: dict[str, np.dtype[Any]] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}

ID_KINDS = ("int", "str")
STR_DTYPE = h5py.string_dtype("utf-8")


def index_dtype(num_classes: int) -> np.dtype[Any]:
    """The smallest signed integer dtype that holds class indices ``-1 .. num_classes - 1``
    (a summary shard's ``targets``, ``other_logit`` and ``argmax``)."""
    if num_classes <= 2**15 - 1:
        return np.dtype("<i2")
    if num_classes <= 2**31 - 1:
        return np.dtype("<i4")
    return np.dtype("<i8")


Columns = dict[str, tuple[np.dtype[Any], tuple[int, ...]]]


def row_columns(storage: str, stored_dtype: str, num_classes: int) -> Columns:
    """``name -> (disk dtype, row shape)`` of the per-row datasets of a v2 shard, ids aside
    (a new dict: the caller may change it)."""
    return dict(_row_columns(storage, stored_dtype, num_classes))


@functools.lru_cache(maxsize=64)
def _row_columns(storage: str, stored_dtype: str, num_classes: int) -> Columns:
    if storage == "logits":
        return {LOGITS: (DISK_DTYPES[stored_dtype], (num_classes,)), TARGETS: (_INT64, ())}
    value, index, f64 = DISK_DTYPES[stored_dtype], index_dtype(num_classes), np.dtype("<f8")
    return {
        TARGET_VAL: (value, ()),
        OTHER_VAL: (value, ()),
        OTHER_LOGIT: (index, ()),
        ARGMAX: (index, ()),
        LSE: (f64, ()),
        EL2N: (f64, ()),
        TARGETS: (index, ()),
    }


#: Epochs a shard can be written for: ``0 <= epoch < EPOCH_LIMIT`` (the logger refuses others).
EPOCH_LIMIT = 2**31


def describe_threshold(threshold: dict[str, Any] | None) -> str:
    """A threshold-sample description in a few words, for messages."""
    if not threshold:
        return "none"
    ids = threshold.get("sample_ids") or []
    return (
        f"set {threshold.get('set_index')} (seed {threshold.get('seed')}, {len(ids)} ids, "
        f"extra class {threshold.get('extra_class')})"
    )


def shard_name(epoch: int, rank: int) -> str:
    """File name of the shard of ``epoch`` written by ``rank``."""
    return f"epoch_{epoch:05d}.rank_{rank:03d}.h5"


def list_shards(
    run_dir: Location, entries: list[Entry] | None = None
) -> list[tuple[int, int, Location]]:
    """``(epoch, rank, path)`` of every published shard in ``run_dir`` (a path or a URL), by
    epoch then rank; ``entries``, the directory's listing if the caller already has it."""
    found = []
    for entry in list_dir(run_dir) if entries is None else entries:
        m = SHARD_RE.match(entry.name)
        if m and entry.is_file:
            found.append((int(m.group(1)), int(m.group(2)), entry.path))
    # by epoch and rank; two names of one (epoch, rank) (epoch_1 and epoch_00001 both match)
    # in name order, so that the order never depends on the directory listing
    return sorted(found, key=lambda f: (f[0], f[1], str(f[2])))


def list_lookalikes(run_dir: Location, entries: list[Entry] | None = None) -> list[Location]:
    """Files that look like shards but are not named like one (``epoch_1.rank_0.h5``, a renamed
    copy): readers ignore them, and the commands say so."""
    return sorted(
        (
            e.path
            for e in (list_dir(run_dir) if entries is None else entries)
            if (e.name.lower().endswith(".h5") or e.name.startswith("epoch_"))
            and not SHARD_RE.match(e.name)
            and not e.name.endswith(TMP_SUFFIX)
        ),
        key=str,
    )


def list_temporaries(run_dir: Location, entries: list[Entry] | None = None) -> list[Location]:
    """Leftover temporary shards (a process died before publishing them); readers ignore them."""
    return sorted(
        (
            e.path
            for e in (list_dir(run_dir) if entries is None else entries)
            if e.name.endswith(TMP_SUFFIX) and e.is_file
        ),
        key=str,
    )


def torch_dtype(stored: str) -> torch.dtype:
    """The torch dtype of stored dtype ``stored`` (imports torch: the writer side only)."""
    import torch

    return getattr(torch, stored)


def torch_to_stored(dtype: torch.dtype) -> str:
    """Name of the stored dtype that keeps ``dtype`` exactly."""
    for name in DISK_DTYPES:
        if torch_dtype(name) == dtype:
            return name
    raise KeyError(str(dtype))


class ChunkMap(NamedTuple):
    """Where the chunks of one dataset lie in its file, when they can be read without HDF5.

    Uncompressed, unfiltered little-endian chunks of whole rows hold the rows exactly as they are
    in memory, so a reader copies them with ``os.preadv`` straight into its buffer: no HDF5 call,
    no chunk-cache copy, and the GIL is released while the page cache is copied.
    """

    chunk_rows: int
    row_bytes: int
    offsets: tuple[int, ...]
    """Byte offset in the file of chunk k, which holds rows ``[k * chunk_rows, ...)``."""


@dataclass(frozen=True)
class ShardInfo:
    """The attributes of one shard, validated."""

    path: Location
    epoch: int
    rank: int
    world_size: int
    num_classes: int
    num_rows: int
    logits_dtype: str
    stored_dtype: str
    id_kind: str
    package_version: str
    created_utc: str
    metadata: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    chunk_rows: int = 0
    """Rows per HDF5 chunk of the logits (0 if not chunked); blocks aligned to it read fastest."""
    raw: dict[str, ChunkMap] = field(default_factory=dict, repr=False, compare=False)
    """Datasets whose chunks can be read straight from the file (see :class:`ChunkMap`)."""
    identity: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    """Inode, size and mtime of the file that was validated (size and modification stamp of a
    remote one, :class:`~aum_replay.location.Blob`): a reader refuses a file replaced since (a
    resumed run republishes shards), whose chunks may lie elsewhere."""
    run_id: str | None = None
    """The run this shard belongs to (v2; ``None`` for v1, which has no run id)."""
    storage: str = "logits"
    """``"logits"``, or ``"summary"``: per-row statistics instead of the logits (v2)."""
    group_rows: int = 0
    """Rows per checksummed group (v2); 0 for v1, which has no checksums."""
    checksums: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """The checksum (``checksum``) of each group of ``group_rows`` rows of each dataset (v2; for
    the id blob, of the bytes of that group's ids)."""
    checksum: str = "crc32c"
    """The groups' checksum algorithm (:data:`~aum_replay.manifest.GROUP_SUMS`; v2)."""
    dtypes: dict[str, np.dtype[Any]] = field(default_factory=dict, repr=False, compare=False)
    """Disk dtype of each dataset of a v2 shard."""
    sizes: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    """Length (first axis) of each dataset of a v2 shard."""

    @property
    def nbytes(self) -> int:
        """Size of the file on disk."""
        return location.size(self.path)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's values on disk (the logits, or their summary), ids and targets
        aside: what the replay sizes its blocks by."""
        if self.storage == "summary":
            return sum(self.dtypes[name].itemsize for name in SUMMARY_COLUMNS)
        return self.num_classes * DISK_DTYPES[self.stored_dtype].itemsize


class _ShardFile:
    """The temporary shard's bytes, as the file object HDF5 writes through (h5py's fileobj driver).

    HDF5 cannot survive a failed write: when a dataset's chunk cache cannot be written (a full
    disk), HDF5 2.0 fails to close the dataset yet frees part of it, and the next flush or close
    of the file - or HDF5's own shutdown at exit - dereferences it and segfaults the process. So
    HDF5 is never told: the first ``OSError`` of a write is kept in :attr:`error`, the write is
    reported done and every later write is dropped (counted in :attr:`dropped`). HDF5's state
    stays consistent, so it can close the file safely, and :class:`ShardWriter` checks
    :attr:`error` after every HDF5 call and raises it as :class:`RecordingError`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self.pos = 0
        self.end = 0  # the file's size as HDF5 believes it (writes dropped after an error count)
        self.written = 0
        self.error: OSError | None = None
        self.dropped = 0

    # The methods h5py's fileobj driver calls.
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self.pos = offset
        elif whence == os.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.end + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        size = max(0, self.end - self.pos) if size < 0 else size
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(buffer)])

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view)
        got = 0
        if self.error is None:
            try:
                while got < size:
                    step = os.preadv(self.fd, [view[got:]], self.pos + got)
                    if step <= 0:
                        break
                    got += step
            except OSError as exc:
                self._fail(exc, 0)
        view[got:] = bytes(size - got)  # past the end, or after an error: zeros, as HDF5 expects
        self.pos += size
        return size

    def write(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view)
        done = 0
        if self.error is None:
            try:
                while done < size:
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self._fail(exc, size - done)
        else:
            self.dropped += size
        self.written += done
        self.pos += size
        self.end = max(self.end, self.pos)
        return size

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self._fail(exc, 0)
        self.end = size
        return size

    def flush(self) -> None:
        pass

    # Ours.
    def _fail(self, exc: OSError, dropped: int) -> None:
        if self.error is None:
            self.error = exc
        self.dropped += dropped

    def sync(self) -> None:
        """fsync the data; an error is kept like a write's."""
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self._fail(exc, 0)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


#: What a writer's ``OSError`` means, in words, by errno.
_ERRNO_WORDS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


class _GroupSums:
    """Running checksum (:data:`~aum_replay.manifest.GROUP_SUM`) of each group of
    ``group_rows`` rows of one dataset, fed as rows arrive."""

    def __init__(self, group_rows: int) -> None:
        self.group_rows = group_rows
        self.sums: list[int] = []
        self._running = manifest.RunningSum()
        self._rows = 0  # rows in the open group

    def feed(self, data: Any, bounds: np.ndarray | None, rows: int, row_bytes: int = 0) -> None:
        """Add ``rows`` rows whose bytes are ``data``: row k spans ``[k, k + 1) * row_bytes``,
        or ``[bounds[k], bounds[k + 1])`` when ``bounds`` (``rows + 1`` offsets) is given."""
        view = memoryview(data).cast("B")
        done = 0
        while done < rows:
            take = min(rows - done, self.group_rows - self._rows)
            if bounds is None:
                lo, hi = done * row_bytes, (done + take) * row_bytes
            else:
                lo, hi = int(bounds[done]), int(bounds[done + take])
            self._running.update(view[lo:hi])
            self._rows += take
            done += take
            if self._rows == self.group_rows:
                self._close_group()

    def _close_group(self) -> None:
        self.sums.append(self._running.digest())
        self._running, self._rows = manifest.RunningSum(), 0

    def finish(self) -> list[int]:
        if self._rows:
            self._close_group()
        return self.sums


class ShardWriter:
    """Appends rows to one shard under a temporary name; :meth:`publish` makes it final.

    Every failure to create, write, sync or rename the file (a full disk, a quota, a file size
    limit, an I/O or a permission error) raises :class:`RecordingError` with one line naming the
    epoch, rank and file, and - for a lack of space - how much more was needed. After an error
    :meth:`abort` is always safe: HDF5 never saw the failure (see :class:`_ShardFile`).

    Parameters
    ----------
    final_path
        Where the finished shard goes.
    epoch, rank, world_size
        Written into the shard's description.
    num_classes
        C, the width of the logits.
    logits_dtype
        Name of the dtype the logits had when logged (informational).
    stored_dtype
        One of :data:`DISK_DTYPES`.
    id_kind
        ``"int"`` or ``"str"``.
    chunk_rows
        Rows per HDF5 chunk (computed by the caller from a byte budget); in v2 also the rows
        of each checksummed group.
    compression
        ``None`` (default, fastest replay), ``"lzf"`` or ``"gzip"``.
    metadata
        JSON-able dict stored with the shard.
    threshold
        Threshold-sample description (see :mod:`aum_replay.threshold`), or ``None``.
    format_version
        2 (default) or 1 (the old format, for readers older than v2).
    run_id
        The run's id (v2; required there).
    storage
        ``"logits"`` or ``"summary"`` (v2 only; rows come through :meth:`append_summary`).
    """

    def __init__(
        self,
        final_path: Path,
        *,
        epoch: int,
        rank: int,
        world_size: int,
        num_classes: int,
        logits_dtype: str,
        stored_dtype: str,
        id_kind: str,
        chunk_rows: int,
        compression: str | None = None,
        metadata: dict[str, Any] | None = None,
        threshold: dict[str, Any] | None = None,
        format_version: int = FORMAT_VERSION,
        run_id: str | None = None,
        storage: str = "logits",
    ) -> None:
        if format_version not in FORMAT_VERSIONS:
            raise InputError(f"format_version must be one of {FORMAT_VERSIONS}")
        if format_version == 1 and storage != "logits":
            raise InputError("format v1 stores logits only; summary storage needs format v2")
        if format_version >= 2 and not run_id:
            raise InputError("a format v2 shard needs a run id")
        self.final_path = final_path
        self.tmp_path = final_path.with_name(f"{final_path.name}.{os.getpid()}{TMP_SUFFIX}")
        self.epoch, self.rank = epoch, rank
        self.version = format_version
        self.rows = 0
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._columns = (
            row_columns(storage, stored_dtype, num_classes)
            if format_version >= 2
            else {LOGITS: (DISK_DTYPES[stored_dtype], (num_classes,)), TARGETS: (_INT64, ())}
        )
        self._sums: dict[str, _GroupSums] = {}
        self._pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self._pending_rows = 0
        self._blob_bytes = 0  # v2 string ids: bytes of the blob so far
        self._record: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": format_version,
            "run_id": run_id,
            "storage": storage,
            "epoch": epoch,
            "rank": rank,
            "world_size": world_size,
            "num_classes": num_classes,
            "logits_dtype": logits_dtype,
            "stored_dtype": stored_dtype,
            "id_kind": id_kind,
            "package_version": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metadata": metadata or {},
            "threshold": threshold,
            "group_rows": chunk_rows,
            "checksum": manifest.GROUP_SUM,
        }
        try:
            self._io: _ShardFile | None = _ShardFile(self.tmp_path)
        except OSError as exc:
            self._io = None
            raise self._error(exc, "creating") from None
        row_bytes = sum(dt.itemsize * math.prod(shape) for dt, shape in self._columns.values())
        self._layout = (id_kind, chunk_rows, compression)
        try:
            self._file = h5py.File(
                self._io, "w", rdcc_nbytes=max(4 * chunk_rows * row_bytes, 1 << 20)
            )
            attrs = self._file.attrs
            if format_version >= 2:  # fixed-size values only; the rest is in the manifest
                attrs["format"] = np.bytes_(FORMAT_NAME)
                attrs["format_version"] = np.int64(format_version)
            else:
                self._write_v1_attrs(attrs)
        except BaseException:
            self.abort()
            raise
        self._check("creating")

    def _write_v1_attrs(self, attrs: h5py.AttributeManager) -> None:
        record = self._record
        for key in REQUIRED_ATTRS:  # in this order, as v1 always wrote them
            if key == "num_rows":
                attrs[key] = -1  # set by publish(): -1 marks an unfinished file
            elif key == "metadata":
                attrs[key] = json.dumps(record[key], sort_keys=True)
            else:
                attrs[key] = record[key]
        if record["threshold"] is not None:
            attrs["threshold"] = json.dumps(record["threshold"], sort_keys=True)

    def _create(self, first_rows: int, first_blob: int) -> None:
        """Create the datasets, sized by the first rows appended.

        HDF5 allocates whole chunks, so a shard shorter than one chunk would still take a full
        chunk (~2 MiB) on disk. The logger hands rows over a full buffer at a time, or the whole
        epoch at once when it is shorter than a buffer: then the chunk is made just that long.
        """
        id_kind, chunk_rows, compression = self._layout
        rows = max(1, min(chunk_rows, first_rows))
        opts: dict[str, Any] = {"compression": compression} if compression else {}
        f = self._file
        assert f is not None

        def make(name: str, dtype: Any, shape: tuple[int, ...], chunk: int, **extra: Any) -> None:
            self._datasets[name] = f.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(chunk, *shape),
                **extra,
            )

        for name, (dtype, shape) in self._columns.items():
            make(name, dtype, shape, rows, **(opts if name != TARGETS else {}))
        if self.version < 2:
            make(SAMPLE_IDS, np.int64 if id_kind == "int" else STR_DTYPE, (), rows)
        elif id_kind == "int":
            make(SAMPLE_IDS, _INT64, (), rows)
        else:  # no variable-length strings: one UTF-8 blob and where each id ends
            make(ID_ENDS, _INT64, (), rows)
            make(ID_BYTES, np.uint8, (), max(1, min(chunk_rows * 16, first_blob)), **opts)
        if self.version >= 2:
            self._sums = {name: _GroupSums(chunk_rows) for name in self._datasets}
        # Kept open: a dataset closed (and its chunk cache written) at every append cost a
        # lookup by name, and a close is where HDF5 met write errors it could not survive.

    def append(self, logits: np.ndarray, targets: np.ndarray, sample_ids: np.ndarray) -> None:
        """Append ``n`` rows: logits (n, C) in the disk dtype, targets (n,), ids (n,)."""
        self._append({LOGITS: logits, TARGETS: targets}, sample_ids)

    def append_summary(
        self, summary: dict[str, np.ndarray], targets: np.ndarray, sample_ids: np.ndarray
    ) -> None:
        """Append ``n`` rows of a summary shard: every :data:`SUMMARY_COLUMNS` array (n,).

        Rows are held until a whole chunk has come (a summary row is ~100x smaller than the
        logits buffer it came from), so that chunks, and checksummed groups, are full-sized.
        """
        self._pending.append(({**summary, TARGETS: targets}, sample_ids))
        self._pending_rows += len(sample_ids)
        if self._pending_rows >= self._layout[1]:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        parts, self._pending, self._pending_rows = self._pending, [], 0
        columns = {name: np.concatenate([c[name] for c, _ in parts]) for name in parts[0][0]}
        self._append(columns, np.concatenate([ids for _, ids in parts]))

    def _append(self, columns: dict[str, np.ndarray], sample_ids: np.ndarray) -> None:
        if self._file is None:
            raise RecordingError(f"{self.tmp_path}: append() after the writer was closed")
        n = len(sample_ids)
        data: dict[str, np.ndarray] = {}
        for name, (dtype, _) in self._columns.items():
            data[name] = np.ascontiguousarray(columns[name], dtype=dtype)
        bounds = None
        if self.version >= 2 and self._layout[0] == "str":
            encoded = [value.encode("utf-8") for value in sample_ids]
            blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
            bounds = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=bounds[1:])
            data[ID_ENDS] = bounds[1:] + self._blob_bytes
        else:
            data[SAMPLE_IDS] = sample_ids if self.version < 2 else sample_ids.astype(_INT64)
            blob = None
        if not self._datasets:
            self._create(n, len(blob) if blob is not None else 0)
        start, stop = self.rows, self.rows + n
        for name, values in data.items():
            ds = self._datasets[name]
            ds.resize(stop, axis=0)
            ds[start:stop] = values
            if self._sums:
                self._sums[name].feed(values, None, n, values[:1].nbytes)
        if blob is not None:
            ds = self._datasets[ID_BYTES]
            ds.resize(self._blob_bytes + len(blob), axis=0)
            ds[self._blob_bytes :] = blob
            self._blob_bytes += len(blob)
            self._sums[ID_BYTES].feed(blob, bounds, n)
        self.rows = stop
        self._check("writing")

    def publish(self) -> Path:
        """Finish the file, fsync it and rename it to its final name (replacing an old shard)."""
        if self._file is None or self._io is None:
            raise RecordingError(f"{self.tmp_path}: publish() after the writer was closed")
        self._flush_pending()
        if not self._datasets:
            self._create(0, 0)
        trailer = b""
        if self.version >= 2:
            self._file.flush()
            self._check("writing")
            trailer = self._manifest()
        else:
            self._file.attrs["num_rows"] = self.rows
        self._datasets = {}
        self._file.close()  # flushes every cache through _ShardFile
        self._file = None
        self._check("writing")
        if trailer:  # after HDF5's own end of file, which HDF5 ignores
            self._io.seek(0, os.SEEK_END)
            self._io.write(trailer)
            self._check("writing")
        self._io.sync()
        self._check("syncing")
        self._io.close()
        try:
            os.replace(self.tmp_path, self.final_path)
        except OSError as exc:
            raise self._error(exc, "publishing", f" as {self.final_path.name}") from None
        self._io = None
        _fsync_dir(self.final_path.parent)
        return self.final_path

    def _manifest(self) -> bytes:
        """The v2 manifest: the record, and per dataset its chunk offsets and group checksums."""
        table: list[int] = []
        datasets = {}
        for name, ds in self._datasets.items():
            dsid = ds.id
            plist = dsid.get_create_plist()
            chunk = tuple(int(c) for c in plist.get_chunk())
            chunks = _chunk_map(dsid, plist, ds.shape, chunk, ds.dtype)
            entry: dict[str, Any] = {
                "dtype": ds.dtype.str,
                "shape": list(ds.shape),
                "chunk_rows": chunk[0],
                "offsets": None,
            }
            if chunks is not None:  # uncompressed: the reader needs no HDF5
                entry["offsets"] = [len(table), len(chunks.offsets)]
                table += chunks.offsets
            sums = self._sums[name].finish()
            entry["checksums"] = [len(table), len(sums)]
            table += sums
            datasets[name] = entry
        record = {**self._record, "num_rows": self.rows, "datasets": datasets}
        return manifest.pack(record, np.array(table, dtype=np.int64))

    def abort(self) -> None:
        """Close and delete the temporary file (best effort); safe after any error."""
        self._datasets = {}
        try:
            if self._file is not None:
                file, self._file = self._file, None
                file.close()
        finally:
            if self._io is not None:
                io, self._io = self._io, None
                io.close()
                with contextlib.suppress(OSError):  # the caller can see the file is still there
                    self.tmp_path.unlink(missing_ok=True)

    def _check(self, what: str) -> None:
        if self._io is not None and self._io.error is not None:
            raise self._error(self._io.error, what)

    def _error(self, exc: OSError, doing: str, after: str = "") -> RecordingError:
        """One line: what failed, for which epoch and rank, where, and what space it lacked."""
        words = _ERRNO_WORDS.get(exc.errno or 0, exc.strerror or str(exc))
        detail = exc.strerror or str(exc)
        line = (
            f"cannot record epoch {self.epoch} rank {self.rank}: {words} "
            f"(errno {exc.errno}, {detail}) {doing} {self.tmp_path}{after}"
        )
        if exc.errno in _SPACE_ERRNOS and self._io is not None:
            line += (
                f"; it needed at least {_size(max(self._io.dropped, 1))} more after "
                f"{_size(self._io.written)} written, {_free_space(self.final_path.parent)} free "
                "there"
            )
        return RecordingError(line)


def _free_space(directory: Path) -> str:
    try:
        st = os.statvfs(directory)
    except OSError:  # pragma: no cover
        return "unknown space"
    return _size(st.f_bavail * st.f_frsize)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_INT64 = np.dtype(np.int64)

#: The type of each attribute: its value is read straight into a buffer of that type.
_ATTR_TYPES: dict[str, type] = {key: str for key in REQUIRED_ATTRS} | {
    key: int for key in ("format_version", "epoch", "rank", "world_size", "num_classes", "num_rows")
}


def _attr(fid: h5py.h5f.FileID, key: str, path: Location) -> Any:
    """One scalar attribute of an open file, as an ``int`` or a ``str`` (:data:`_ATTR_TYPES`).

    Read through HDF5's low-level API into a buffer of the expected type: ~3x cheaper than
    ``f.attrs[key]``, which matters when a replay validates thousands of shards.
    """
    value, problem = _read_attr(fid, key)
    if problem:  # raised here, where no HDF5 object is held (see _read_attr)
        raise FormatError(f"{path}: {problem}")
    return value


def _read_attr(fid: h5py.h5f.FileID, key: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, what is wrong)``.

    Returns rather than raises: an exception's traceback would keep this frame, so the open
    attribute, so the file, alive for as long as the caller keeps the error.
    """
    name = key.encode()
    if not h5py.h5a.exists(fid, name):
        return None, f"not an aum-replay shard (attribute {key!r} missing)"
    attr = h5py.h5a.open(fid, name)
    kind = _ATTR_TYPES.get(key, str)
    if attr.shape != ():  # HDF5 would write every element into the one-value buffer
        return None, f"attribute {key!r} is not a single value"
    stored = attr.get_type()
    # Read only into a buffer the stored type converts to safely: a failed conversion into an
    # object buffer can leave a stray pointer there, which numpy would later free.
    if kind is int and stored.get_class() == h5py.h5t.INTEGER:
        buffer = np.empty((), dtype=_INT64)
    elif kind is str and stored.get_class() == h5py.h5t.STRING:
        size = stored.get_size()
        buffer = np.empty((), dtype=STR_DTYPE if stored.is_variable_str() else f"S{size}")
    else:
        return None, f"attribute {key!r} is not {'an integer' if kind is int else 'a string'}"
    try:
        if kind is str and not stored.is_variable_str():
            attr.read(buffer, mtype=stored)  # same size, and no character-set conversion
        else:
            attr.read(buffer)
    except (OSError, TypeError, ValueError) as exc:
        return None, f"attribute {key!r} cannot be read ({exc})"
    value = buffer[()]
    if kind is int:
        return int(value), None
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return text, None


#: Called with a shard's path when :func:`read_info` starts validating it, and with ``None``
#: when it is done. HDF5 loops forever on some corrupt files, holding the GIL: the CLI uses this
#: to arm a watchdog that can still end the process (see ``cli._hang_watchdog``).
validation_hook: Callable[[Location | None], None] | None = None


def read_info(path: Location) -> ShardInfo:
    """Open ``path`` (a local path or a URL) and validate its description and datasets; raise
    :class:`FormatError` if bad.

    A v2 shard is validated from its checksummed manifest alone (one ``pread``, no HDF5); a v1
    shard through HDF5's attributes, under :data:`validation_hook`.
    """
    try:
        blob = open_blob(path)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be opened ({_why(exc)})") from None
    with blob:
        try:
            found = manifest.read(blob.pread, blob.size)
        except OSError as exc:
            raise FormatError(f"{path}: cannot be read ({_why(exc)})") from None
        if isinstance(found, str):
            raise FormatError(f"{path}: corrupt v2 shard: {found}")
        if found is not None:
            record, table, end = found
            try:
                return _validate_v2(path, record, table, end, blob.identity)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise FormatError(
                    f"{path}: corrupt v2 manifest ({type(exc).__name__}: {exc})"
                ) from None
        hook = validation_hook
        if hook is None:
            return _read_info(blob)
        hook(path)
        try:
            return _read_info(blob)
        finally:
            hook(None)


def _why(exc: OSError) -> str:
    return str(exc.strerror or exc)


#: The :class:`ShardInfo` fields that v1's attributes and v2's manifest hold under the same key.
_SCALARS = (
    "epoch",
    "rank",
    "world_size",
    "num_classes",
    "num_rows",
    "logits_dtype",
    "stored_dtype",
    "id_kind",
    "package_version",
    "created_utc",
)


def _newer(path: Location, version: Any) -> FormatError:
    return FormatError(
        f"{path}: shard format version {version} is newer than this aum-replay "
        f"({__version__}) reads (versions {', '.join(map(str, FORMAT_VERSIONS))}); "
        "upgrade aum-replay"
    )


@functools.lru_cache(maxsize=64)
def _parsed_dtype(text: str) -> np.dtype[Any]:
    """A manifest's dtype string as a numpy dtype (shards of a run repeat the same few)."""
    return np.dtype(text)


_INT_FIELDS = ("epoch", "rank", "world_size", "num_classes", "num_rows", "group_rows")
_TEXT_FIELDS = (
    "run_id",
    "storage",
    "logits_dtype",
    "stored_dtype",
    "id_kind",
    "package_version",
    "created_utc",
)


def _fields(path: Location, record: dict[str, Any], keys: tuple[str, ...], kind: type) -> Any:
    """``{key: record[key]}`` for ``keys``, each of exactly type ``kind`` (what JSON decodes;
    a bool is not an int here)."""
    values = {key: record.get(key) for key in keys}
    for key, value in values.items():
        if type(value) is not kind:
            raise FormatError(f"{path}: manifest field {key!r} is missing or not {kind.__name__}")
    return values


def _validate_v2(
    path: Location, record: dict[str, Any], table: np.ndarray, end: int, identity: tuple[Any, ...]
) -> ShardInfo:
    """The :class:`ShardInfo` of a v2 manifest, after checking that it describes a whole shard.

    The manifest passed its checksum, so this guards against a writer's bug, not against
    flipped bytes: every dataset's rows, chunks and checksums must add up.
    """
    if record.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an aum-replay shard (format {record.get('format')!r})")
    version = _fields(path, record, ("format_version",), int)["format_version"]
    if version > FORMAT_VERSION:
        raise _newer(path, version)
    if version != 2:
        raise FormatError(f"{path}: a v2 manifest says format version {version}")
    ints: dict[str, int] = _fields(path, record, _INT_FIELDS, int)
    texts: dict[str, str] = _fields(path, record, _TEXT_FIELDS, str)
    stored, id_kind, storage = texts["stored_dtype"], texts["id_kind"], texts["storage"]
    if stored not in DISK_DTYPES:
        raise FormatError(f"{path}: unknown stored dtype {stored!r}")
    if id_kind not in ID_KINDS:
        raise FormatError(f"{path}: unknown id kind {id_kind!r}")
    if storage not in STORAGE_KINDS:
        raise FormatError(f"{path}: unknown storage {storage!r}; upgrade aum-replay?")
    algorithm = record.get("checksum", "crc32c")  # shards written before XXH3 name none
    if algorithm not in manifest.GROUP_SUMS:
        raise FormatError(f"{path}: unknown checksum {algorithm!r}; upgrade aum-replay?")
    num_rows, num_classes, group = ints["num_rows"], ints["num_classes"], ints["group_rows"]
    if num_rows < 0 or num_classes < 2 or group < 1:
        raise FormatError(f"{path}: impossible rows, classes or group size in the manifest")
    expected: dict[str, tuple[np.dtype[Any], tuple[int, ...] | None]] = dict(
        _row_columns(storage, stored, num_classes)
    )
    if id_kind == "int":
        expected[SAMPLE_IDS] = (_INT64, ())
    else:
        expected[ID_ENDS] = (_INT64, ())
        expected[ID_BYTES] = (np.dtype(np.uint8), None)  # a blob: any length
    datasets = record.get("datasets")
    if not isinstance(datasets, dict) or set(datasets) != set(expected):
        raise FormatError(f"{path}: the manifest does not list the datasets of a {storage} shard")
    groups = -(-num_rows // group)
    raw: dict[str, ChunkMap] = {}
    checksums: dict[str, np.ndarray] = {}
    dtypes: dict[str, np.dtype[Any]] = {}
    sizes: dict[str, int] = {}
    for name, (dtype, row_shape) in expected.items():
        entry = datasets[name]
        shape = tuple(entry["shape"])
        if _parsed_dtype(entry["dtype"]) != dtype or not shape:
            raise FormatError(
                f"{path}: dataset {name!r} has dtype {entry['dtype']}, expected {dtype}"
            )
        if row_shape is not None and shape != (num_rows, *row_shape):
            raise FormatError(
                f"{path}: dataset {name!r} has shape {shape}, expected {(num_rows, *row_shape)}"
            )
        at, count = entry["checksums"]
        if count != groups or not 0 <= at <= at + count <= len(table):
            raise FormatError(f"{path}: dataset {name!r} has {count} checksums for {groups} groups")
        checksums[name] = table[at : at + count]
        dtypes[name] = dtype
        sizes[name] = shape[0]
        if entry["offsets"] is not None:
            chunk_rows = int(entry["chunk_rows"])
            row_bytes = dtype.itemsize * math.prod(shape[1:])
            at, count = entry["offsets"]
            if chunk_rows < 1 or count != -(-shape[0] // chunk_rows) or at + count > len(table):
                raise FormatError(f"{path}: dataset {name!r} has a damaged chunk table")
            offsets = table[at : at + count].tolist()  # a few numbers: Python's min is faster
            if count and (min(offsets) < 0 or max(offsets) + chunk_rows * row_bytes > end):
                raise FormatError(
                    f"{path}: truncated or corrupt: a chunk of {name!r} lies past its data"
                )
            raw[name] = ChunkMap(chunk_rows, row_bytes, tuple(offsets))
    metadata, threshold = record.get("metadata"), record.get("threshold")
    if not isinstance(metadata, dict) or not isinstance(threshold, (dict, type(None))):
        raise FormatError(f"{path}: metadata or threshold in the manifest is not an object")
    main = LOGITS if storage == "logits" else TARGET_VAL
    fields: dict[str, Any] = {**ints, **texts}
    return ShardInfo(
        path=path,
        **{key: fields[key] for key in _SCALARS},
        metadata=metadata,
        threshold=threshold,
        format_version=version,
        chunk_rows=int(datasets[main]["chunk_rows"]),
        raw=raw,
        identity=identity,
        run_id=texts["run_id"],
        storage=storage,
        group_rows=group,
        checksums=checksums,
        checksum=algorithm,
        dtypes=dtypes,
        sizes=sizes,
    )


def _read_info(blob: Blob) -> ShardInfo:
    path = blob.path
    try:
        fid = _open_hdf5(blob)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise FormatError(f"{path}: corrupt or not an HDF5 shard ({exc})") from None
    try:
        return _validate(fid, path, blob.identity)
    except FormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
        raise FormatError(f"{path}: corrupt or not an HDF5 shard ({exc})") from None
    finally:
        fid.close()


def _open_hdf5(blob: Blob) -> h5py.h5f.FileID:
    """The low-level HDF5 file of ``blob``: opened by path, or through h5py's file-object
    driver for a remote shard."""
    target = blob.h5_target()
    if isinstance(target, bytes):
        return h5py.h5f.open(target, h5py.h5f.ACC_RDONLY)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fileobj_driver(h5py.h5fd.fileobj_driver, target)
    return h5py.h5f.open(repr(target).encode("ascii", "replace"), h5py.h5f.ACC_RDONLY, fapl=fapl)


def _validate(fid: h5py.h5f.FileID, path: Location, identity: tuple[Any, ...]) -> ShardInfo:
    name = _attr(fid, "format", path)
    if name != FORMAT_NAME:
        raise FormatError(f"{path}: not an aum-replay shard (format {name!r})")
    version = _attr(fid, "format_version", path)
    if version > FORMAT_VERSION:
        raise _newer(path, version)
    if version == 2:  # v2 is described by its manifest, which is not there
        raise FormatError(
            f"{path}: corrupt or truncated v2 shard (its manifest at the end of the file is "
            "missing)"
        )
    if version < 1:
        raise FormatError(f"{path}: unknown shard format version {version}")
    values = {key: _attr(fid, key, path) for key in REQUIRED_ATTRS[2:]}
    stored = values["stored_dtype"]
    if stored not in DISK_DTYPES:
        raise FormatError(f"{path}: unknown stored dtype {stored!r}")
    id_kind = values["id_kind"]
    if id_kind not in ID_KINDS:
        raise FormatError(f"{path}: unknown id kind {id_kind!r}")
    num_rows = values["num_rows"]
    num_classes = values["num_classes"]
    if num_rows < 0:
        raise FormatError(f"{path}: shard was never finished (num_rows unset)")
    disk_dtypes = {
        LOGITS: DISK_DTYPES[stored],
        TARGETS: _INT64,
        SAMPLE_IDS: _INT64 if id_kind == "int" else None,
    }
    shapes: dict[str, tuple[int, ...]] = {}
    raw: dict[str, ChunkMap] = {}
    chunk_rows = 0
    for ds_name, disk_dtype in disk_dtypes.items():
        facts, problem = _inspect_dataset(fid, ds_name, disk_dtype)
        if problem or facts is None:  # raised here, where no HDF5 object is held
            raise FormatError(f"{path}: {problem}")
        shape, chunk, chunks = facts
        shapes[ds_name] = shape
        rows = shape[0] if shape else 0
        if not shape or rows != num_rows:
            raise FormatError(f"{path}: dataset {ds_name!r} has {rows} rows, expected {num_rows}")
        if ds_name == LOGITS and chunk:
            chunk_rows = chunk[0]
        if chunks is not None:
            raw[ds_name] = chunks
    if len(shapes[LOGITS]) != 2 or shapes[LOGITS][1] != num_classes:
        raise FormatError(f"{path}: logits shape {shapes[LOGITS]} does not match C={num_classes}")
    try:
        metadata = json.loads(values["metadata"])
        has_threshold = h5py.h5a.exists(fid, b"threshold")
        threshold = json.loads(_attr(fid, "threshold", path)) if has_threshold else None
    except (json.JSONDecodeError, TypeError) as exc:
        raise FormatError(f"{path}: metadata is not valid JSON ({exc})") from None
    return ShardInfo(
        path=path,
        **{key: values[key] for key in _SCALARS},
        metadata=metadata,
        threshold=threshold,
        format_version=version,
        chunk_rows=chunk_rows,
        raw=raw,
        identity=identity,
    )


def _inspect_dataset(
    fid: h5py.h5f.FileID, name: str, disk_dtype: np.dtype[Any] | None
) -> tuple[tuple[tuple[int, ...], tuple[int, ...], ChunkMap | None] | None, str | None]:
    """``((shape, chunk shape or (), chunk map or None), None)``, or ``(None, what is wrong)``.

    Returns rather than raises, like :func:`_read_attr`: a traceback holding this frame would
    hold the open dataset, so the file.
    """
    try:
        dataset = h5py.h5d.open(fid, name.encode())  # low-level: ~5x cheaper than f[name]
    except KeyError:
        return None, f"dataset {name!r} missing"
    try:
        shape = dataset.shape
        plist = dataset.get_create_plist()
        if plist.get_layout() != h5py.h5d.CHUNKED or not shape:
            return (shape, (), None), None  # readable, through HDF5
        chunk = tuple(int(c) for c in plist.get_chunk())
        chunks = _chunk_map(dataset, plist, shape, chunk, disk_dtype) if disk_dtype else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
        return None, f"dataset {name!r} cannot be read ({exc})"
    if chunks is not None and chunks.offsets:
        end = max(chunks.offsets) + chunks.chunk_rows * chunks.row_bytes
        if end > fid.get_filesize():
            return None, f"truncated or corrupt: a chunk of {name!r} lies past the end of the file"
    return (shape, chunk, chunks), None


def _chunk_map(
    dataset: h5py.h5d.DatasetID,
    plist: h5py.h5p.PropDCID,
    shape: tuple[int, ...],
    chunk: tuple[int, ...],
    dtype: np.dtype[Any],
) -> ChunkMap | None:
    """The :class:`ChunkMap` of a chunked dataset, or ``None`` if it must be read through HDF5
    (filtered or compressed, another dtype or byte order, a chunk not written or of a size
    that whole rows do not make)."""
    if (
        dataset.dtype != dtype
        or dtype.byteorder not in ("<", "=", "|")
        or sys.byteorder != "little"
        or not hasattr(os, "preadv")
        or plist.get_nfilters()
        or tuple(chunk[1:]) != tuple(shape[1:])  # a chunk is not whole rows
    ):
        return None
    chunk_rows = int(chunk[0])
    row_bytes = dtype.itemsize * math.prod(shape[1:])
    offsets = [-1] * -(-shape[0] // chunk_rows)

    def place(first_row: int, info: Any) -> None:
        k, within = divmod(first_row, chunk_rows)
        whole = info.size == chunk_rows * row_bytes and not info.filter_mask
        if info.byte_offset is not None and whole and not within and k < len(offsets):
            offsets[k] = int(info.byte_offset)

    try:  # one HDF5 call for all chunks (HDF5 >= 1.12.3); else one per chunk
        dataset.chunk_iter(lambda info: place(info.chunk_offset[0], info))
    except (AttributeError, NotImplementedError, RuntimeError):
        tail = (0,) * (len(shape) - 1)
        for k in range(len(offsets)):
            place(k * chunk_rows, dataset.get_chunk_info_by_coord((k * chunk_rows, *tail)))
    if -1 in offsets:
        return None
    return ChunkMap(chunk_rows, row_bytes, tuple(offsets))


#: Whether readers check every row they return against its checksum (v2). It costs a few percent
#: of a replay (see the README's benchmarks); a benchmark turns it off to measure that share.
VERIFY = True


def utf8_keys(blob: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Fixed-width ``S`` keys (n,) of n UTF-8 strings held in ``blob`` at ``bounds`` (n + 1)."""
    lengths = np.diff(bounds)
    n = len(lengths)
    width = max(1, int(lengths.max(initial=0)))
    if n and int(lengths.min()) == width:  # ids of one length (img_000123.jpg): the blob,
        return np.ascontiguousarray(blob[: n * width]).view(f"S{width}")  # viewed as keys
    keys = np.zeros((n, width), dtype=np.uint8)
    if len(blob):
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(len(blob)) - np.repeat(bounds[:-1] - bounds[0], lengths)
        keys[rows, cols] = blob
    return keys.view(f"S{width}").reshape(n)


def read_all_ids(info: ShardInfo) -> np.ndarray:
    """Every sample id of a validated shard: ``int64``, or an object array of ``str``."""
    with ShardReader(info.path, info=info) as reader:
        return reader.read_ids()


def read_all_id_keys(info: ShardInfo) -> np.ndarray:
    """Every sample id of a validated shard as a key (:meth:`ShardReader.read_id_keys`)."""
    with ShardReader(info.path, info=info) as reader:
        return reader.read_id_keys()


class ShardReader:
    """Reads a published shard in blocks of rows.

    ``info``, the :class:`ShardInfo` that :func:`read_info` returned for this file, skips the
    validation. Datasets with a :class:`ChunkMap` are read with ``os.preadv`` alone; HDF5 opens
    the file only for the others (compressed chunks, v1 string ids).

    Every row a v2 reader returns has been checked against its group's checksum (``verify``,
    default :data:`VERIFY`): a read that touches part of a group reads the rest of it too.

    Use as a context manager. Every failure is re-raised as :class:`FormatError` naming the file,
    so a corrupt or truncated shard never surfaces as a bare ``OSError``.
    """

    def __init__(
        self,
        path: Location,
        *,
        info: ShardInfo | None = None,
        cache_bytes: int = 16 << 20,
        verify: bool | None = None,
    ) -> None:
        self.path = path
        self.info = read_info(path) if info is None else info
        self.verify = (VERIFY if verify is None else verify) and bool(self.info.checksums)
        self._cache_bytes = cache_bytes
        self._blob: Blob | None = None
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}

    def _dataset(self, name: str) -> h5py.Dataset:
        # Opening a file and a dataset by name costs ~0.3 ms in h5py: blocks reuse the handles.
        ds = self._datasets.get(name)
        if ds is None:
            if self._file is None:
                target = self._open().h5_target()
                try:
                    self._file = h5py.File(
                        self.path if isinstance(target, bytes) else target,
                        "r",
                        rdcc_nbytes=self._cache_bytes,
                    )
                except (OSError, ValueError) as exc:
                    raise FormatError(
                        f"{self.path}: corrupt or not an HDF5 shard ({exc})"
                    ) from None
            ds = self._datasets[name] = self._file[name]
        return ds

    def _open(self) -> Blob:
        """The shard's bytes, opened once, after checking it is the file that was validated."""
        if self._blob is None:
            try:
                blob = open_blob(self.path)
            except OSError as exc:
                raise FormatError(f"{self.path}: cannot be opened ({_why(exc)})") from None
            if self.info.identity is not None and blob.identity != self.info.identity:
                blob.close()
                raise FormatError(
                    f"{self.path}: the file changed since it was validated (a shard republished "
                    "by a resumed run?); run again"
                )
            self._blob = blob
        return self._blob

    def _check_rows(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.info.num_rows:
            raise InputError(
                f"{self.path}: rows {start}:{stop} are outside the shard's 0:{self.info.num_rows}"
            )

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._datasets.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._blob is not None:
            self._blob.close()
            self._blob = None

    def read_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Sample ids of rows ``[start, stop)``: ``int64``, or an object array of ``str``."""
        stop = self.info.num_rows if stop is None else stop
        self._check_rows(start, stop)
        try:
            if self.info.id_kind == "int":
                return self._ints(start, stop)
            if self.info.format_version < 2:
                return np.asarray(self._dataset(SAMPLE_IDS).asstr()[start:stop], dtype=object)
            blob, bounds = self._id_bytes(start, stop)
            data = blob.tobytes()
            cuts = bounds.tolist()
            values = [data[a:b].decode("utf-8") for a, b in itertools.pairwise(cuts)]
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out
        except FormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
            raise FormatError(f"{self.path}: cannot read sample ids ({exc})") from None

    def read_id_keys(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Sample ids of rows ``[start, stop)`` as sort keys: ``int64``, or for string ids their
        UTF-8 bytes as a fixed-width ``S`` array (no Python object per row).

        UTF-8 bytes sort as the code points do, and ids hold no NUL (the logger refuses it), so
        comparing these keys orders and matches ids exactly as comparing the strings would.
        """
        stop = self.info.num_rows if stop is None else stop
        if self.info.id_kind == "int":
            return self.read_ids(start, stop)
        self._check_rows(start, stop)
        try:
            if self.info.format_version < 2:
                values = self._dataset(SAMPLE_IDS)[start:stop]  # bytes objects, no decoding
                return np.asarray(values.tolist() if len(values) else [], dtype=np.bytes_)
            blob, bounds = self._id_bytes(start, stop)
        except FormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
            raise FormatError(f"{self.path}: cannot read sample ids ({exc})") from None
        return utf8_keys(blob, bounds)

    def _ints(self, start: int, stop: int) -> np.ndarray:
        return self._rows(SAMPLE_IDS, start, stop, np.empty(stop - start, dtype=np.int64))

    def _id_bytes(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The UTF-8 bytes of the ids of rows ``[start, stop)`` of a v2 shard, and ``stop -
        start + 1`` offsets into them: row ``start + k`` is ``blob[bounds[k]:bounds[k + 1]]``."""
        # The end offsets of rows start - 1 .. stop - 1 are the bounds: read straight into them
        # (no second array of a shard's rows while its ids are read).
        bounds = np.empty(stop - start + 1, dtype=np.int64)
        if start:
            self._rows(ID_ENDS, start - 1, stop, bounds)
        else:
            bounds[0] = 0
            self._rows(ID_ENDS, 0, stop, bounds[1:])
        size = self.info.sizes[ID_BYTES]
        if len(bounds) > 1 and (
            bounds[0] < 0 or bounds[-1] > size or bool((bounds[1:] < bounds[:-1]).any())
        ):
            raise FormatError(f"{self.path}: sample id offsets are out of order (corrupt)")
        low = int(bounds[0])
        blob = np.empty(int(bounds[-1]) - low, dtype=np.uint8)
        self._read(ID_BYTES, low, low + len(blob), blob)
        bounds -= low
        if self.verify:
            self._verify_groups(ID_BYTES, start, stop, blob, bounds)
        return blob, bounds

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Logits (n, C) as a torch tensor in the stored dtype and targets (n,) ``int64``.

        Imports torch; :meth:`read_arrays` is the same read in the disk dtype, without torch.
        """
        import torch

        logits, targets = self.read_arrays(start, stop, out)
        if self.info.stored_dtype == "bfloat16":
            return torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16), targets
        return torch.from_numpy(logits), targets

    def read_arrays(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n, C) in the disk dtype (:data:`DISK_DTYPES`) and targets (n,) ``int64``.

        ``out``, an array of at least ``n`` rows of the disk dtype and C columns, is filled and
        reused instead of allocating (fresh pages cost more than the read itself). A summary
        shard has no logits: :meth:`read_summary` reads it.
        """
        self._check_rows(start, stop)
        if self.info.storage != "logits":
            raise FormatError(
                f"{self.path}: a {self.info.storage} shard stores no logits (read_summary)"
            )
        n = stop - start
        try:
            disk = DISK_DTYPES[self.info.stored_dtype]
            if out is None:
                out = np.empty((n, self.info.num_classes), dtype=disk)
            if len(out) < n or out.dtype != disk or out.shape[1:] != (self.info.num_classes,):
                raise ValueError(f"buffer {out.shape} {out.dtype} cannot hold rows {start}:{stop}")
            logits = self._rows(LOGITS, start, stop, out[:n])
            targets = self._rows(TARGETS, start, stop, np.empty(n, dtype=np.int64))
        except FormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
            raise FormatError(f"{self.path}: cannot read rows {start}:{stop} ({exc})") from None
        return logits, targets

    def read_summary(
        self, start: int, stop: int, columns: Iterable[str] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A summary shard's rows ``[start, stop)``: each of ``columns`` (default: every one of
        :data:`SUMMARY_COLUMNS`) (n,) in its disk dtype, and the targets (n,) ``int64``. Only
        the columns asked for are read and verified."""
        wanted = SUMMARY_COLUMNS if columns is None else tuple(columns)
        unknown = set(wanted) - set(SUMMARY_COLUMNS)
        if unknown:
            raise InputError(f"no summary column {sorted(unknown)}")
        self._check_rows(start, stop)
        if self.info.storage != "summary":
            raise FormatError(f"{self.path}: not a summary shard")
        n = stop - start
        try:
            columns = {
                name: self._rows(name, start, stop, np.empty(n, dtype=self.info.dtypes[name]))
                for name in (*wanted, TARGETS)
            }
        except FormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as exc:
            raise FormatError(f"{self.path}: cannot read rows {start}:{stop} ({exc})") from None
        return columns, columns.pop(TARGETS).astype(np.int64)

    def verify_all(self, block_bytes: int = 8 << 20) -> int:
        """Read every byte of every dataset and check it against its checksum (v2), or just read
        it all (v1, which has none). Returns the bytes checked; raises :class:`FormatError`."""
        checked = 0
        info = self.info
        step = max(1, info.group_rows or 1024)
        per_row = max(1, info.row_bytes + 16)
        step *= max(1, block_bytes // (step * per_row))
        for start in range(0, info.num_rows, step):
            stop = min(start + step, info.num_rows)
            if info.storage == "summary":
                columns, targets = self.read_summary(start, stop)
                checked += sum(c.nbytes for c in columns.values()) + targets.nbytes
            else:
                logits, targets = self.read_arrays(start, stop)
                checked += logits.nbytes + targets.nbytes
            checked += self.read_id_keys(start, stop).nbytes
        return checked

    def _rows(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``[start, stop)`` of dataset ``name`` into ``out``, checked when verifying."""
        self._read(name, start, stop, out)
        if self.verify:
            self._verify_groups(name, start, stop, out, None)
        return out

    def _verify_groups(
        self, name: str, start: int, stop: int, data: np.ndarray, bounds: np.ndarray | None
    ) -> None:
        """Check the rows ``[start, stop)`` just read into ``data`` against their groups'
        checksums.

        ``bounds`` (``stop - start + 1`` byte offsets into ``data``) for the id blob; ``None``
        for a dataset of fixed-size rows. A group only partly read is read whole, separately.
        """
        if stop <= start:
            return
        group, sums = self.info.group_rows, self.info.checksums[name]
        algorithm = self.info.checksum
        view = memoryview(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        row_bytes = data.nbytes // (stop - start) if bounds is None else 0
        for g in range(start // group, -(-stop // group)):
            lo, hi = g * group, min((g + 1) * group, self.info.num_rows)
            if lo >= start and hi <= stop:
                if bounds is None:
                    part = view[(lo - start) * row_bytes : (hi - start) * row_bytes]
                else:
                    part = view[int(bounds[lo - start]) : int(bounds[hi - start])]
                crc = manifest.group_sum(part, algorithm)
            elif bounds is None:
                whole = np.empty((hi - lo, *data.shape[1:]), dtype=data.dtype)
                read = self._read(name, lo, hi, whole).reshape(-1).view(np.uint8)
                crc = manifest.group_sum(read, algorithm)
            else:
                saved, self.verify = self.verify, False  # the group's own bytes, unchecked
                try:
                    blob, _ = self._id_bytes(lo, hi)
                finally:
                    self.verify = saved
                crc = manifest.group_sum(blob, algorithm)
            if crc != int(sums[g]):
                raise FormatError(
                    f"{self.path}: checksum mismatch in {name} rows {lo}:{hi}; the shard is corrupt"
                )

    def _read(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``[start, stop)`` of dataset ``name`` into ``out`` (contiguous, right dtype)."""
        if stop <= start:
            return out
        chunks = self.info.raw.get(name)
        if (
            chunks is None
            or not out.flags.c_contiguous
            or out.nbytes != (stop - start) * chunks.row_bytes
        ):
            self._dataset(name).read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
            return out
        blob = self._open()
        dest = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        row_bytes, chunk_rows = chunks.row_bytes, chunks.chunk_rows
        done, row = 0, start
        while row < stop:
            chunk, within = divmod(row, chunk_rows)
            rows = min(stop - row, chunk_rows - within)
            offset = chunks.offsets[chunk] + within * row_bytes
            want = rows * row_bytes
            if blob.readinto(dest[done : done + want], offset) != want:
                raise FormatError(
                    f"{self.path}: truncated: {name} rows {row}:{row + rows} lie past the "
                    "end of the file"
                )
            done += want
            row += rows
        return out

    def blocks(self, block_rows: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` row ranges covering the shard in blocks of ``block_rows``."""
        n = self.info.num_rows
        for start in range(0, n, block_rows):
            yield start, min(start + block_rows, n)
