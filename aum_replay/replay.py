"""The replay: run dir -> shard blocks -> margin kernel -> accumulator -> CSV files.

:func:`compute` is the library entry point that ``aum-replay compute`` wraps. It validates every
selected shard, scans the sample ids once, then streams the shards in blocks: worker threads read
a block each and compute its margins, and the caller adds them up in measurement order (string
ids: the scan runs beside the first blocks, :func:`scan_and_stream`). Memory is bounded by a
block per worker plus O(number of samples), whatever the number of epochs. Full
records are spilled to scratch files bucketed by sample, then sorted one bucket at a time, so a
10M-row ``full_aum_records.csv`` never sits in memory.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from aum_replay.allocator import release_free_memory
from aum_replay.csvout import (
    FULL_COLUMNS,
    FULL_NAME,
    VALUES_COLUMNS,
    VALUES_NAME,
    CsvWriter,
    sort_values,
    to_frame,
)
from aum_replay.engine import Fold, Segment
from aum_replay.epochs import EpochSelection
from aum_replay.errors import InputError
from aum_replay.format import DISK_DTYPES, ShardInfo, ShardReader
from aum_replay.kernels import Stats, block_stats, loaded_torch, margin_values
from aum_replay.location import Location, RunDirLike
from aum_replay.outputs import SCRATCH_PREFIX, OutputSet, writing
from aum_replay.reducers import AUM
from aum_replay.run import (
    IdIndex,
    IdScan,
    Run,
    check_targets,
    open_run,
    resolves_rows,
    scan_ids,
)
from aum_replay.summary import SummaryBlock, with_summaries

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

    run_dir: Location
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
    temporaries: list[Location]
    threshold: dict[str, Any] | None
    seconds: float
    aum: pl.DataFrame = field(repr=False)
    lookalikes: list[Location] = field(default_factory=list)
    """Files in the run directory named almost like shards, ignored (see ``Run.lookalikes``)."""
    removed: list[Path] = field(default_factory=list)
    """Files removed from ``out_dir``: an older ``full_aum_records.csv`` that a values-only
    replay replaced, and what killed commands left behind (temporaries, scratch)."""


def compute(
    run_dir: RunDirLike | Run,
    out_dir: str | Path | None = None,
    *,
    epochs: str | EpochSelection | None = None,
    full: bool = True,
    duplicates: Duplicates = "first",
    device: str = "cpu",
    threads: int | None = 1,
    workers: int = 2,
    block_bytes: int = 2 << 20,
    spill_bytes: int = 8 << 20,
    progress: Callable[[int, int], None] | None = None,
    client: Any = None,
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
        Where the margin kernel runs: ``"cpu"`` (numpy; torch is not imported) or a torch
        device such as ``"cuda"`` or ``"cuda:1"``.
    threads
        Torch intra-op threads during the replay, where torch is used (a device other than the
        CPU, or torch already imported); default 1 (robust on busy machines). ``None`` leaves
        torch's setting alone.
    workers
        Threads that read blocks and compute their margins side by side; default 2. Each holds
        one block; more than the machine's cores gains nothing. 0 does everything in the
        calling thread, as a run of summary shards always does (its blocks are too cheap to
        hand over).
    block_bytes
        Logits read per block (bytes): a block is read and its margins computed while it is
        still in the core's cache; fewer, larger blocks cost less Python per row.
    spill_bytes
        Memory allowed for full records before they are bucketed to scratch files.
    progress
        Called as ``progress(rows_done, rows_total)`` after each block.
    client
        A ``dask.distributed.Client``: the shards are read and put through the kernel by the
        cluster's workers (see :mod:`aum_replay.distributed`; the run directory must be visible
        to every worker), the results are the same bit for bit. ``device`` must be ``"cpu"``.

    Returns
    -------
    ComputeResult

    Raises
    ------
    AumReplayError
        Bad run directory, shard, selection or option. No output file is created or changed.
    """
    started = time.perf_counter()
    kernel_device = _device(device)
    if client is not None and kernel_device is not None:
        raise InputError("a replay on Dask runs the kernel on the workers' CPUs: use device='cpu'")
    run = open_checked(run_dir, epochs, duplicates=duplicates, workers=workers)
    with ExitStack() as stack:
        outputs = None
        if out_dir is not None:
            # A values-only replay removes an older full_aum_records.csv: it would not match.
            names = (VALUES_NAME, FULL_NAME) if full else (VALUES_NAME,)
            outputs = stack.enter_context(OutputSet(out_dir, names, stale=(FULL_NAME,)))
        return _compute(
            run,
            outputs,
            full=full,
            duplicates=duplicates,
            device=kernel_device,
            threads=threads,
            workers=workers,
            block_bytes=block_bytes,
            spill_bytes=spill_bytes,
            progress=progress,
            started=started,
            client=client,
        )


def open_checked(
    run_dir: RunDirLike | Run,
    epochs: str | EpochSelection | None,
    *,
    duplicates: str,
    workers: int,
) -> Run:
    """The validated, selected run of a replay (``compute``, ``dynamics``), options checked."""
    if duplicates not in ("first", "all"):
        raise InputError(f"duplicates must be 'first' or 'all', not {duplicates!r}")
    if workers < 0:
        raise InputError(f"workers must be 0 or more, not {workers}")
    if isinstance(run_dir, Run):
        if epochs is not None:
            raise InputError("pass epochs to open_run(), not with an opened Run")
        return run_dir
    return open_run(run_dir, epochs)


def _compute(
    run: Run,
    outputs: OutputSet | None,
    *,
    full: bool,
    duplicates: Duplicates,
    device: Any,
    threads: int | None,
    workers: int,
    block_bytes: int,
    spill_bytes: int,
    progress: Callable[[int, int], None] | None,
    started: float,
    client: Any = None,
) -> ComputeResult:
    out_path = outputs.out_dir if outputs is not None else None
    keep_records = full and out_path is not None
    with ExitStack() as stack:
        torch = loaded_torch()  # the kernels use it when it is there (see row_max)
        if threads is not None and torch is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        needs = AUM.needs | (RECORD_STATS if keep_records else frozenset())
        scan, segments = scan_and_stream(run, needs, device, block_bytes, workers, client)
        stack.callback(segments.close)
        keys = scan.index_keys  # string ids as their sorted UTF-8 keys: never decoded here
        n = scan.size
        clean = scan.appearances is not None  # no id twice in an epoch: every row counts
        spill = (
            stack.enter_context(_Spill.open(out_path, n, run.num_rows, spill_bytes))
            if keep_records
            else None
        )
        fold = Fold(
            n,
            [AUM(n)],
            duplicates=duplicates,
            clean=clean,
            counts=scan.appearances if clean else None,
            sink=spill.sink if spill is not None else None,
            labels_epoch=scan.labels_epoch(run.shards),
        )
        feed(fold, segments, run.num_rows, progress)
        folded = fold.result(run.num_rows)
        aum = folded.signals["aum"]
        counts = folded.counts
        order = sort_values(keys, aum, ascending_ids=True)
        ids = scan.id_column(order=order)  # gathered before they become a column
        sorted_aum = aum.take(order)  # take: ~25% faster than indexing with an array
        table = pl.DataFrame(
            [
                ids,
                pl.Series("aum", sorted_aum),
                pl.Series("num_measurements", counts.take(order)),
                pl.Series("target", folded.labels.take(order)),
            ]
        )
        values_path = full_path = None
        removed: list[Path] = []
        if outputs is not None:
            with writing(outputs.out_dir, VALUES_NAME):
                values_csv = outputs.csv(VALUES_NAME, VALUES_COLUMNS)
                values_csv.write({"sample_id": ids, "aum": sorted_aum})
            if spill is not None:
                with writing(outputs.out_dir, FULL_NAME):
                    full_csv = outputs.csv(FULL_NAME, FULL_COLUMNS)
                    spill.write_sorted(full_csv, scan.id_column(), counts)
                spill.close()  # the scratch space is freed before the commit
            committed = outputs.commit()
            values_path = committed[0]
            full_path = committed[1] if len(committed) > 1 else None
            removed = [*outputs.cleaned, *outputs.removed_stale]
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
        num_measurements=int(counts.sum()),
        duplicates_dropped=folded.duplicates_dropped,
        nonfinite_margins=folded.nonfinite_margins,
        nonfinite_samples=int((~np.isfinite(aum)).sum()),
        temporaries=list(run.temporaries),
        threshold=run.threshold,
        seconds=time.perf_counter() - started,
        aum=table,
        lookalikes=list(run.lookalikes),
        removed=removed,
    )


def id_scan(run: Run, client: Any = None) -> IdScan:
    """The run's id scan, on the cluster when there is a ``client``."""
    if client is None:
        return scan_ids(run.shards, run.id_kind)
    from aum_replay import distributed

    return distributed.scan_ids(client, run.shards, run.id_kind)


#: Bytes of segments (statistics and labels) that the replay computes ahead while the id scan
#: runs beside it (:func:`scan_and_stream`): ~0.5M rows of a values-only replay; beyond it the
#: workers wait for the scan. Measured at 2M rows of string ids (one noisy machine): 32 and 16
#: MiB replayed alike and faster than holding none (0.68 against 0.80 s); 8 MiB as fast again,
#: and it adds ~10 MiB less to the replay's peak.
AHEAD_BYTES = 8 << 20


def scan_and_stream(
    run: Run,
    needs: frozenset[str],
    device: Any,
    block_bytes: int,
    workers: int,
    client: Any = None,
) -> tuple[IdScan, Generator[Segment, None, None]]:
    """The run's :func:`id_scan` and its segments (:func:`stream`), once the scan is done.

    Where the scan hands back every row's index of string ids (reading, hashing and looking up
    each id costs 5-10x the integer scan), the two run side by side: the scan in a thread of its
    own, while the workers read the logits and put them through the kernel, which needs no ids.
    Up to :data:`AHEAD_BYTES` of segments wait for their indices meanwhile. Elsewhere the scan
    comes first (an integer scan beside the stream of a summary run, ~1 ms each for 200k rows,
    made it 1.7x slower: the two threads hand the GIL back and forth). Close the returned
    generator when done with it.
    """
    if client is not None or run.id_kind != "str" or not resolves_rows(run.shards, "str"):
        scan = id_scan(run, client)
        return scan, _resumed(None, stream(run, scan, needs, device, block_bytes, workers, client))
    workers = _workers_for(run, workers)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aum-replay-ids")
    later = pool.submit(scan_ids, run.shards, run.id_kind, stop)
    segments = _stream(run, None, _kernel(device, needs), block_bytes, workers, later=later)
    try:
        first = next(segments, None)  # starts the workers; here once the scan is done
        scan = later.result()
        release_free_memory()  # what the scan freed: the fold and the output do not add to it
    except BaseException:
        stop.set()  # the scan stops before its next shard
        segments.close()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=False)
    return scan, _resumed(first, segments)


def _resumed(first: Segment | None, rest: Iterator[Segment]) -> Generator[Segment, None, None]:
    """``first`` (unless None), then ``rest``, which is closed with the generator."""
    try:
        if first is not None:
            yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def stream(
    run: Run,
    scan: IdScan,
    needs: frozenset[str],
    device: Any,
    block_bytes: int,
    workers: int,
    client: Any = None,
) -> Iterator[Segment]:
    """Every selected row through the kernel computing ``needs``: here, in measurement order,
    or on the cluster of ``client``, in arrival order (a :class:`Fold` takes either). ``scan``:
    the run's :func:`id_scan`, whose universe the rows' ids are indexed in."""
    ids = IdIndex(scan.index_keys, run.id_kind)
    if client is None:
        kernel = _kernel(device, needs)
        return _stream(run, ids, kernel, block_bytes, _workers_for(run, workers), scan.rows)
    from aum_replay import distributed

    return distributed.segments(client, run, ids, needs, block_bytes=block_bytes)


def _workers_for(run: Run, workers: int) -> int:
    """The worker threads that stream ``run``: none for a run of summary shards, whose block is
    a few vector operations on ~40 bytes a row, so that handing it to a thread costs more than
    doing it (6.3 against 9.3 ms for 200k rows at C=1000)."""
    return 0 if all(shard.storage == "summary" for shard in run.shards) else workers


def feed(
    fold: Fold,
    segments: Iterator[Segment],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Every segment into ``fold``, reporting ``progress(rows_done, total)`` after each."""
    done = 0
    for seg in segments:
        fold.update(seg)
        done += len(seg.index)
        if progress is not None:
            progress(done, total)


def _device(device: str) -> Any:
    """``None`` for the CPU (the numpy kernel), else the torch device (torch is imported)."""
    if device == "cpu":
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cpu":
        return None
    return dev


#: The kernel statistics a full record holds besides the margin.
RECORD_STATS = frozenset({"target_val", "other_logit", "other_val"})

Kernel = Callable[[np.ndarray, np.ndarray, str], Stats]


def _kernel(device: Any, needs: frozenset[str]) -> Kernel:
    """The kernel for a block: ``(logits, targets, stored) -> statistics`` (see
    :func:`aum_replay.kernels.block_stats`).

    ``logits`` is in its disk dtype (``stored`` names it) and is used as scratch; the
    statistics are on the host. ``device`` is ``None`` for the numpy kernel, else a torch
    device, which computes the margin and the full records' fields (not the softmax ones).
    """
    if device is None:
        if needs == {"margin"}:  # the values-only replay: the fewest calls per block

            def margins_only(logits: np.ndarray, targets: np.ndarray, stored: str) -> Stats:
                return {"margin": margin_values(logits, targets, stored)}

            return with_summaries(margins_only, needs)

        def on_host(logits: np.ndarray, targets: np.ndarray, stored: str) -> Stats:
            return block_stats(logits, targets, stored, needs)

        return with_summaries(on_host, needs)

    unsupported = needs - RECORD_STATS - {"margin"}
    if unsupported:
        raise InputError(f"the {device} kernel computes no {', '.join(sorted(unsupported))}")
    import torch

    from aum_replay.format import torch_dtype
    from aum_replay.margins import host_fields, margins

    fields = bool(needs & RECORD_STATS)

    def on_device(logits: np.ndarray, targets: np.ndarray, stored: str) -> Stats:
        block = torch.from_numpy(logits.view(np.int16) if stored == "bfloat16" else logits)
        block = block.view(torch_dtype(stored)).to(device, non_blocking=True)
        labels = torch.from_numpy(targets).to(device, non_blocking=True)
        m = margins(block, labels, inplace=True, with_index=fields)
        stats: Stats = {"margin": m.margin.cpu().numpy()}
        if fields:
            stats.update(host_fields(m)._asdict())
        return stats

    return with_summaries(on_device, needs)


def _stream(
    run: Run,
    ids: IdIndex | None,
    kernel: Kernel,
    block_bytes: int,
    workers: int,
    resolved: dict[Location, np.ndarray] | None = None,
    later: Future[IdScan] | None = None,
) -> Generator[Segment, None, None]:
    """Blocks of every selected shard, through the kernel, in measurement order.

    ``resolved`` (:attr:`aum_replay.run.IdScan.rows`): each shard's rows' indices, already
    found by the id scan; the ids are then not read again. ``later`` instead of ``ids``: the
    scan, still running; blocks are computed without their indices and given them, here, once
    it is done (see :func:`scan_and_stream`).

    ``workers`` threads each read a block into a buffer of their own and compute its margins
    while the block is still in that core's cache; the caller gets the blocks back in order.
    Reads (``preadv``) and the kernel release the GIL, so the workers run side by side.
    """
    plan = _plan(run, block_bytes)
    longest = max(
        (stop - start for shard, start, stop in plan if shard.storage == "logits"), default=0
    )
    local = threading.local()
    opened: list[ShardReader] = []
    lock = threading.Lock()

    def work(i: int) -> Segment:
        shard, start, stop = plan[i]
        state = local.__dict__
        reader: ShardReader | None = state.get("reader")
        if reader is None or reader.info is not shard:
            with lock:  # the caller closes whatever is left open at the end
                if reader is not None:
                    reader.close()
                    opened.remove(reader)
                reader = state["reader"] = ShardReader(shard.path, info=shard)
                opened.append(reader)
        buffer = None
        if shard.storage == "logits":  # a summary shard's rows are read without a buffer
            buffer = state.get(shard.stored_dtype)  # one per stored dtype (a run may change it)
            if buffer is None:
                disk = DISK_DTYPES[shard.stored_dtype]
                buffer = state[shard.stored_dtype] = np.empty((longest, run.num_classes), disk)
        index = ids if resolved is None else resolved[shard.path]
        return read_segment(reader, start, stop, positions[i], index, kernel, buffer)

    positions = np.cumsum([0] + [stop - start for _, start, stop in plan]).tolist()
    if workers == 0:
        done: Generator[Segment, None, None] = (work(i) for i in range(len(plan)))
    else:
        done = _in_order(work, len(plan), workers)
    try:
        if later is None:
            yield from done
        else:
            yield from _indexed_later(run, plan, done, later)
    finally:
        # Closed here, not when collected: a traceback that holds these frames would keep the
        # workers alive. _in_order waits for every worker before the readers are closed.
        done.close()
        for reader in opened:
            reader.close()


def _indexed_later(
    run: Run,
    plan: list[tuple[ShardInfo, int, int]],
    done: Iterator[Segment],
    later: Future[IdScan],
) -> Iterator[Segment]:
    """The segments of ``plan`` from ``done``, given their indices once the scan ``later`` is
    done; up to :data:`AHEAD_BYTES` of them wait for it, then the workers do."""
    held: deque[tuple[int, Segment]] = deque()
    held_bytes = 0
    lookup: IdIndex | None = None

    def indexed(i: int, seg: Segment) -> Segment:
        nonlocal lookup
        shard, start, stop = plan[i]
        scan = later.result()
        if scan.rows is not None:
            seg.index = scan.rows[shard.path][start:stop].astype(np.int64)
        else:  # two ids shared a hash, and the scan compared bytes instead: look them up
            lookup = lookup or IdIndex(scan.index_keys, run.id_kind)
            with ShardReader(shard.path, info=shard) as reader:
                seg.index = lookup(reader.read_id_keys(start, stop))
        return seg

    for i, seg in enumerate(done):
        if not later.done() and held_bytes < AHEAD_BYTES:
            held.append((i, seg))
            held_bytes += seg.nbytes
            continue
        while held:
            yield indexed(*held.popleft())
        held_bytes = 0
        yield indexed(i, seg)
    while held:
        yield indexed(*held.popleft())


def read_segment(
    reader: ShardReader,
    start: int,
    stop: int,
    position: int,
    ids: IdIndex | np.ndarray | None,
    kernel: Kernel,
    buffer: np.ndarray | None,
) -> Segment:
    """Rows ``start:stop`` of one shard through the kernel, as the segment at ``position``.

    ``ids`` maps the rows' ids to their index, or is already every row's index in the shard,
    or is ``None``: the segment's ``index`` is then empty, for the caller to fill.

    ``buffer`` (at least ``stop - start`` rows of the shard's disk dtype) receives the logits
    and is the kernel's scratch; a summary shard (``storage="summary"``) needs none.
    """
    shard = reader.info
    if shard.storage == "summary":  # per-row statistics instead of logits
        # Only the columns the kernel's statistics need (see summary.summary_columns).
        columns, targets = reader.read_summary(start, stop, getattr(kernel, "columns", None))
        logits: Any = SummaryBlock(columns)
    else:
        logits, targets = reader.read_arrays(start, stop, out=buffer)
    check_targets(targets, shard.num_classes, f"{shard.path} rows {start}:{stop}")
    if ids is None:  # given later (see _indexed_later)
        index = np.zeros(0, dtype=np.int64)
    elif isinstance(ids, np.ndarray):
        index = ids[start:stop].astype(np.int64, copy=False)
    else:
        index = ids(reader.read_id_keys(start, stop))  # string ids as UTF-8 keys: no str a row
    stats = kernel(logits, targets, shard.stored_dtype)
    margin = stats.get("margin")
    finite = None if margin is None else bool(np.isfinite(margin.sum()))  # here: one pass
    return Segment(position, shard.epoch, index, targets, stats, finite)


def _in_order(
    work: Callable[[int], Segment], count: int, workers: int
) -> Generator[Segment, None, None]:
    """``work(0), work(1), ...`` computed by ``workers`` threads, a few ahead, yielded in order.

    However the caller stops (an error, ``close()``), no thread is still working on return.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aum-replay") as pool:
        pending: deque[Future[Segment]] = deque()
        submitted = 0
        try:
            while submitted < count or pending:
                while submitted < count and len(pending) < 2 * workers:
                    pending.append(pool.submit(work, submitted))
                    submitted += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                with suppress(Exception):  # the first error is already raised
                    future.result()


def _plan(run: Run, block_bytes: int) -> list[tuple[ShardInfo, int, int]]:
    """``(shard, start, stop)`` of every block, in measurement order.

    Blocks are whole HDF5 chunks, or equal slices of one, of about ``block_bytes`` of logits.
    """
    plan = []
    for shard in run.shards:
        row_bytes = shard.row_bytes  # of the logits, or of their summary
        chunk = shard.chunk_rows or max(1, block_bytes // row_bytes)
        if chunk * row_bytes <= block_bytes:  # whole chunks per block
            block_rows = chunk * (block_bytes // (chunk * row_bytes))
            plan += [(shard, a, b) for a, b in _ranges(0, shard.num_rows, block_rows)]
        else:  # equal slices of each chunk: a block stays in the CPU cache
            slice_rows = -(-chunk // -(-chunk * row_bytes // block_bytes))
            for first, last in _ranges(0, shard.num_rows, chunk):
                plan += [(shard, a, b) for a, b in _ranges(first, last, slice_rows)]
    return plan


def _ranges(start: int, stop: int, step: int) -> Iterator[tuple[int, int]]:
    for first in range(start, stop, step):
        yield first, min(first + step, stop)


def write_records(csv: CsvWriter, parts: Iterable[np.ndarray], ids: np.ndarray | pl.Series) -> None:
    """Write full records, already in file order, to ``csv``.

    ``parts`` are arrays of :data:`RECORD_DTYPE` whose ``index`` field indexes ``ids`` (an
    array, or a polars column).
    Formatting the next part (polars, outside the GIL) overlaps writing the current one.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aum-replay-csv") as pool:
        pending: Future[pl.DataFrame] | None = None
        for part in parts:
            index = part["index"]
            picked = (
                ids.gather(np.ascontiguousarray(index))
                if isinstance(ids, pl.Series)
                else ids[index]
            )
            columns: dict[str, Any] = {"sample_id": picked}
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
    stats: Stats,
    counts: np.ndarray,
    aum: np.ndarray,
) -> np.ndarray:
    """Full records (B,) of :data:`RECORD_DTYPE` from counted rows: their kernel statistics
    (the margin and :data:`RECORD_STATS`), running counts and AUM."""
    records = np.empty(len(index), dtype=RECORD_DTYPE)
    records["index"] = index
    records["num_measurements"] = counts
    records["target_logit"] = targets
    for name in ("target_val", "other_logit", "other_val", "margin"):
        records[name] = stats[name]
    records["aum"] = aum
    return records


def _words(records: np.ndarray) -> np.ndarray:
    """A (n, 8) ``int64`` view of :data:`RECORD_DTYPE` records: numpy moves rows of plain words
    ~3x faster than structured records when gathering or scattering them."""
    return records.view(np.int64).reshape(len(records), RECORD_DTYPE.itemsize // 8)


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
        with writing(out_dir or Path("."), "scratch space for the full records"):
            if buckets > 1:
                scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX + "spill-", dir=out_dir))
            spill = cls(scratch, n, buckets)
        try:
            yield spill
        finally:
            spill.close()

    def close(self) -> None:
        """Free the scratch files (idempotent)."""
        for fh in self.files:
            fh.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def sink(
        self, rows: Segment, where: np.ndarray | None, counts: np.ndarray, aum: np.ndarray
    ) -> None:
        """The fold's sink (:data:`aum_replay.engine.Sink`): counted rows become records."""
        self.add(make_records(rows.index, rows.targets, rows.stats, counts, aum))

    def add(self, records: np.ndarray) -> None:
        if self.buckets == 1:
            self.memory[0].append(records)
            return
        bucket = (records["index"] * self.buckets // self.n).astype(np.int16)
        order = np.argsort(bucket, kind="stable")  # a radix sort for 16-bit keys
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        ordered = _words(records)[order]  # rows of 8 words: ~3x faster than the struct
        assert self.scratch is not None
        with writing(self.scratch.parent, "scratch space for the full records"):
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

    def write_sorted(self, csv: CsvWriter, universe: Any, counts: np.ndarray) -> None:
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
            place = start[records["index"] - lo_index] + records["num_measurements"] - 1
            _words(ordered)[place] = _words(records)
            for lo in range(0, len(ordered), WRITE_ROWS):
                yield ordered[lo : lo + WRITE_ROWS]
