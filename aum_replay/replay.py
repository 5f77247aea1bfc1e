"""The replay: run dir -> shard blocks -> margin kernel -> accumulator -> CSV files.

:func:`compute` is the library entry point that ``aum-replay compute`` wraps. It streams every
selected shard in blocks (the next block is read on a helper thread while the current one is
computed), so memory is bounded by a few blocks plus O(number of samples), whatever the number of
epochs. Full records are spilled to scratch files bucketed by sample, then sorted one bucket at a
time, so a 10M-row ``full_aum_records.csv`` never sits in memory.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from aum_replay.accumulate import MarginAccumulator, occurrence_rank
from aum_replay.csvout import (
    FULL_COLUMNS,
    FULL_NAME,
    VALUES_COLUMNS,
    VALUES_NAME,
    AtomicCsv,
    prepare_out_dir,
    sort_values,
    to_frame,
)
from aum_replay.epochs import EpochSelection
from aum_replay.errors import InputError
from aum_replay.format import STORED_DTYPES, ShardInfo, ShardReader
from aum_replay.margins import Margins, margins
from aum_replay.run import IdIndex, Run, build_universe, check_targets, open_run

__all__ = [
    "RECORD_DTYPE",
    "WRITE_ROWS",
    "ComputeResult",
    "compute",
    "make_records",
    "write_records",
]

Duplicates = Literal["first", "all"]

#: One full record on the spill: what a row of ``full_aum_records.csv`` holds, ids as dense indices.
RECORD_DTYPE = np.dtype(
    [
        ("index", np.int64),
        ("num_measurements", np.int64),
        ("target_logit", np.int64),
        ("target_val", np.float64),
        ("other_logit", np.int64),
        ("other_val", np.float64),
        ("margin", np.float64),
        ("aum", np.float64),
    ]
)
WRITE_ROWS = 1 << 18  # rows formatted per CSV write
RING = 3  # block buffers: one being read, one being computed on, one spare


@dataclass
class ComputeResult:
    """What :func:`compute` did.

    Attributes
    ----------
    aum
        polars DataFrame with columns ``sample_id``, ``aum``, ``num_measurements`` and ``target``
        (the label of the sample's last counted row), in the order of ``aum_values.csv`` (aum
        descending, NaN last, ties by id).
    values_path, full_path
        The files written (``None`` when not written).
    """

    run_dir: Path
    out_dir: Path | None
    values_path: Path | None
    full_path: Path | None
    epochs: list[int]
    num_shards: int
    num_classes: int
    id_kind: str
    num_samples: int
    num_measurements: int
    duplicates_dropped: int
    nonfinite_margins: int
    nonfinite_samples: int
    temporaries: list[Path]
    threshold: dict[str, Any] | None
    seconds: float
    aum: pl.DataFrame = field(repr=False)


def compute(
    run_dir: str | Path | Run,
    out_dir: str | Path | None = None,
    *,
    epochs: str | EpochSelection | None = None,
    full: bool = True,
    duplicates: Duplicates = "first",
    device: str = "cpu",
    threads: int | None = 1,
    block_bytes: int = 2 << 20,
    spill_bytes: int = 8 << 20,
    progress: Callable[[int, int], None] | None = None,
) -> ComputeResult:
    """Replay a recorded run into AUM values (and full records), as the original library would.

    Parameters
    ----------
    run_dir
        Directory of shards written by :class:`aum_replay.LogitLogger`, or a
        :class:`aum_replay.run.Run` that :func:`~aum_replay.run.open_run` already validated and
        selected (then ``epochs`` must be None).
    out_dir
        Where ``aum_values.csv`` (and ``full_aum_records.csv``) go; created if missing. ``None``
        writes nothing and only returns the table.
    epochs
        Selection of epochs (see :mod:`aum_replay.epochs`), e.g. ``"1:150"``, ``"skip:1"``;
        default all.
    full
        Also write ``full_aum_records.csv`` (the seed's ``compressed=False``). Default True.
    duplicates
        ``"first"`` (default): an id seen twice in one epoch (DDP padding, a restarted epoch)
        counts once, the first time; ``"all"``: every row counts, as the seed did.
    device
        Torch device for the margin kernel (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    threads
        Torch intra-op threads during the replay; default 1 (robust on busy machines). ``None``
        leaves torch's setting alone.
    block_bytes
        Logits read per block (bytes).
    spill_bytes
        Memory allowed for full records before they are bucketed to scratch files.
    progress
        Called as ``progress(rows_done, rows_total)`` after each block.

    Returns
    -------
    ComputeResult

    Raises
    ------
    AumReplayError
        Bad run directory, shard, selection or option. No output file is created or changed.
    """
    started = time.perf_counter()
    if duplicates not in ("first", "all"):
        raise InputError(f"duplicates must be 'first' or 'all', not {duplicates!r}")
    torch_device = _device(device)
    if isinstance(run_dir, Run):
        if epochs is not None:
            raise InputError("pass epochs to open_run(), not with an opened Run")
        run = run_dir
    else:
        run = open_run(run_dir, epochs)
    with ExitStack() as outputs:
        out_path = None
        if out_dir is not None:
            out_path, created = prepare_out_dir(out_dir)
            if created:  # an error below leaves no empty directory behind
                outputs.callback(_remove_if_empty, out_path)
        result = _compute(
            run,
            out_path,
            full=full,
            duplicates=duplicates,
            device=torch_device,
            threads=threads,
            block_bytes=block_bytes,
            spill_bytes=spill_bytes,
            progress=progress,
            started=started,
        )
        outputs.pop_all()
    return result


def _remove_if_empty(path: Path) -> None:
    with suppress(OSError):
        path.rmdir()


def _compute(
    run: Run,
    out_path: Path | None,
    *,
    full: bool,
    duplicates: Duplicates,
    device: torch.device,
    threads: int | None,
    block_bytes: int,
    spill_bytes: int,
    progress: Callable[[int, int], None] | None,
    started: float,
) -> ComputeResult:
    universe = build_universe(run.shards, run.id_kind)
    n = len(universe)
    acc = MarginAccumulator(n)
    stats = _Stats(labels=np.full(n, -1, dtype=np.int64))
    old_threads = torch.get_num_threads()
    with ExitStack() as stack:
        if threads is not None:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, old_threads)
        spill = (
            stack.enter_context(_Spill.open(out_path, n, run.num_rows, spill_bytes))
            if (full and out_path is not None)
            else None
        )
        for block in _stream(run, IdIndex(universe, run.id_kind), block_bytes):
            _process(block, acc, stats, spill, device, duplicates, n)
            if progress is not None:
                progress(stats.rows_read, run.num_rows)
        aum = acc.aum()
        order = sort_values(universe, aum)
        table = pl.DataFrame(
            {
                "sample_id": universe[order],
                "aum": aum[order],
                "num_measurements": acc.counts[order],
                "target": stats.labels[order],
            }
        )
        values_path = full_path = None
        if out_path is not None:
            values_csv = stack.enter_context(AtomicCsv(out_path / VALUES_NAME, VALUES_COLUMNS))
            values_csv.write({"sample_id": universe[order], "aum": aum[order]})
            if spill is not None:
                full_csv = stack.enter_context(AtomicCsv(out_path / FULL_NAME, FULL_COLUMNS))
                spill.write_sorted(full_csv, universe, acc.counts)
                full_path = full_csv.commit()
            values_path = values_csv.commit()
    return ComputeResult(
        run_dir=run.run_dir,
        out_dir=out_path,
        values_path=values_path,
        full_path=full_path,
        epochs=run.epochs,
        num_shards=len(run.shards),
        num_classes=run.num_classes,
        id_kind=run.id_kind,
        num_samples=n,
        num_measurements=int(acc.counts.sum()),
        duplicates_dropped=stats.duplicates_dropped,
        nonfinite_margins=stats.nonfinite,
        nonfinite_samples=int((~np.isfinite(aum)).sum()),
        temporaries=list(run.temporaries),
        threshold=run.threshold,
        seconds=time.perf_counter() - started,
        aum=table,
    )


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass
class _Block:
    shard: ShardInfo
    start: int
    logits: torch.Tensor
    targets: np.ndarray
    index: np.ndarray
    new_epoch: bool


@dataclass
class _Stats:
    rows_read: int = 0
    duplicates_dropped: int = 0
    nonfinite: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _stream(run: Run, ids: IdIndex, block_bytes: int) -> Iterator[_Block]:
    """Blocks of every selected shard in measurement order; the next block is read ahead.

    Blocks are whole HDF5 chunks, read into a small ring of reused buffers: the reader thread
    fills one while the caller computes on another.
    """
    disk_dtype = STORED_DTYPES[run.shards[0].stored_dtype][0]
    row_bytes = run.num_classes * disk_dtype.itemsize
    plan = []
    for shard in run.shards:
        chunk = shard.chunk_rows or max(1, block_bytes // row_bytes)
        if chunk * row_bytes <= block_bytes:  # whole chunks per block
            block_rows = chunk * (block_bytes // (chunk * row_bytes))
        else:  # equal slices of a chunk: small blocks stay in the CPU cache
            block_rows = -(-chunk // -(-chunk * row_bytes // block_bytes))
        plan += [(shard, start, stop) for start, stop in _ranges(shard.num_rows, block_rows)]
    longest = max((stop - start for _, start, stop in plan), default=0)
    ring = [np.empty((longest, run.num_classes), dtype=disk_dtype) for _ in range(RING)]
    readers: dict[Path, ShardReader] = {}

    def read(i: int) -> _Block:
        shard, start, stop = plan[i]
        reader = readers.get(shard.path)
        if reader is None:
            for old in readers.values():
                old.close()
            readers.clear()
            reader = readers[shard.path] = ShardReader(shard.path, info=shard)
        logits, targets = reader.read_block(start, stop, out=ring[i % RING])
        check_targets(targets, run.num_classes, f"{shard.path} rows {start}:{stop}")
        index = ids(reader.read_ids(start, stop))
        new_epoch = i == 0 or plan[i - 1][0].epoch != shard.epoch
        return _Block(shard, start, logits, targets, index, new_epoch)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aum-replay-read") as pool:
        # One block ahead: the reader fills ring[i + 1] while the caller computes on ring[i].
        pending: Future[_Block] | None = pool.submit(read, 0) if plan else None
        try:
            for i in range(len(plan)):
                assert pending is not None
                block = pending.result()
                pending = pool.submit(read, i + 1) if i + 1 < len(plan) else None
                yield block
        finally:
            if pending is not None:
                pending.cancel()
                with suppress(Exception):  # the first error is already raised
                    pending.result()
            for reader in readers.values():
                reader.close()


def _ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _process(
    block: _Block,
    acc: MarginAccumulator,
    stats: _Stats,
    spill: _Spill | None,
    device: torch.device,
    duplicates: Duplicates,
    n: int,
) -> None:
    rows = len(block.targets)
    stats.rows_read += rows
    keep = None
    index = block.index
    if duplicates == "first":
        if block.new_epoch or len(stats.seen) != n:
            stats.seen = np.zeros(n, dtype=bool)
        fresh = ~stats.seen[index]
        if not acc.all_unique(index):
            fresh &= occurrence_rank(index) == 0
        if not fresh.all():
            keep = np.flatnonzero(fresh)
            stats.duplicates_dropped += rows - len(keep)
            index = index[keep]
        stats.seen[index] = True
    stats.labels[index] = block.targets if keep is None else block.targets[keep]
    logits = block.logits.to(device, non_blocking=True)
    targets = torch.from_numpy(block.targets).to(device, non_blocking=True)
    if keep is not None:
        keep_t = torch.from_numpy(keep).to(device)
        logits, targets = logits[keep_t], targets[keep_t]
    m = margins(logits, targets, inplace=True, with_index=spill is not None)
    margin = m.margin.cpu().numpy()
    stats.nonfinite += int((~np.isfinite(margin)).sum())
    result = acc.update(index, margin, running=spill is not None, unique=duplicates == "first")
    if spill is not None and result is not None:
        targets_kept = block.targets if keep is None else block.targets[keep]
        spill.add(make_records(index, targets_kept, m, margin, *result))


def write_records(csv: AtomicCsv, parts: Iterable[np.ndarray], ids: np.ndarray) -> None:
    """Write full records, already in file order, to ``csv``.

    ``parts`` are arrays of :data:`RECORD_DTYPE` whose ``index`` field indexes ``ids``.
    Formatting the next part (polars, outside the GIL) overlaps writing the current one.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aum-replay-csv") as pool:
        pending: Future[pl.DataFrame] | None = None
        for part in parts:
            columns: dict[str, Any] = {"sample_id": ids[part["index"]]}
            columns.update((name, part[name]) for name in FULL_COLUMNS[1:])
            ready = pool.submit(to_frame, columns)
            if pending is not None:
                csv.write_frame(pending.result())
            pending = ready
        if pending is not None:
            csv.write_frame(pending.result())


def make_records(
    index: np.ndarray,
    targets: np.ndarray,
    m: Margins,
    margin: np.ndarray,
    counts: np.ndarray,
    aum: np.ndarray,
) -> np.ndarray:
    """Full records (B,) of :data:`RECORD_DTYPE` from one block's kernel and accumulator output."""
    assert m.other_logit is not None, "full records need the kernel's other_logit"
    records = np.empty(len(index), dtype=RECORD_DTYPE)
    records["index"] = index
    records["num_measurements"] = counts
    records["target_logit"] = targets
    records["target_val"] = _host(m.target_val)  # numpy widens float16/32 exactly on assignment
    records["other_logit"] = _host(m.other_logit)
    records["other_val"] = _host(m.other_val)
    records["margin"] = margin
    records["aum"] = aum
    return records


def _host(values: torch.Tensor) -> np.ndarray:
    if values.dtype == torch.bfloat16:  # numpy has no bfloat16: widen in torch (exact)
        values = values.to(torch.float64)
    return values.detach().cpu().numpy()


class _Spill:
    """Full records bucketed by sample index: in memory when they fit, else in scratch files.

    Bucket b holds the samples with ``index * buckets // n == b``; inside a bucket, records arrive
    in measurement order, so a stable sort by index gives the CSV's (sample_id, num_measurements)
    order one bucket at a time.
    """

    def __init__(self, scratch: Path | None, n: int, buckets: int) -> None:
        self.n = max(n, 1)
        self.buckets = buckets
        self.scratch = scratch
        self.memory: list[list[np.ndarray]] = [[] for _ in range(buckets)]
        self.files = (
            [open(scratch / f"bucket{b:04d}.bin", "wb") for b in range(buckets)]  # noqa: SIM115
            if scratch is not None
            else []
        )

    @classmethod
    @contextmanager
    def open(cls, out_dir: Path | None, n: int, max_rows: int, budget: int) -> Iterator[_Spill]:
        buckets = max(1, -(-max_rows * RECORD_DTYPE.itemsize // max(budget, 1)))
        scratch = None
        if buckets > 1:
            scratch = Path(tempfile.mkdtemp(prefix=".aum-replay-spill-", dir=out_dir))
        spill = cls(scratch, n, buckets)
        try:
            yield spill
        finally:
            for fh in spill.files:
                fh.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def add(self, records: np.ndarray) -> None:
        if self.buckets == 1:
            self.memory[0].append(records)
            return
        bucket = (records["index"] * self.buckets // self.n).astype(np.int16)
        order = np.argsort(bucket, kind="stable")  # a radix sort for 16-bit keys
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        ordered = records[order]
        for b in range(self.buckets):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                self.files[b].write(ordered[lo:hi].tobytes())

    def _bucket(self, b: int) -> np.ndarray:
        if self.buckets == 1:
            parts = self.memory[0]
            self.memory[0] = []
            return np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD_DTYPE)
        fh = self.files[b]
        fh.close()
        return np.fromfile(fh.name, dtype=RECORD_DTYPE)

    def write_sorted(self, csv: AtomicCsv, universe: np.ndarray, counts: np.ndarray) -> None:
        """Write every record to ``csv`` sorted by (sample_id, num_measurements).

        ``counts`` (N,) are the final measurement counts: sample i's k-th record goes to row
        ``start[i] + k - 1`` of its bucket, a scatter instead of a sort.
        """
        write_records(csv, self._sorted_parts(counts), universe)

    def _sorted_parts(self, counts: np.ndarray) -> Iterator[np.ndarray]:
        for b in range(self.buckets):
            records = self._bucket(b)
            if not len(records):
                continue
            lo_index = -(-b * self.n // self.buckets)
            hi_index = -(-(b + 1) * self.n // self.buckets)
            start = np.zeros(hi_index - lo_index + 1, dtype=np.int64)
            np.cumsum(counts[lo_index:hi_index], out=start[1:])
            ordered = np.empty_like(records)
            ordered[start[records["index"] - lo_index] + records["num_measurements"] - 1] = records
            for lo in range(0, len(ordered), WRITE_ROWS):
                yield ordered[lo : lo + WRITE_ROWS]
