"""The replay on a Dask cluster: the same kernels and fold, with the reading spread over workers.

Each shard is cut into tasks of about ``task_bytes`` of logits. A task opens its shard by path
(h5py objects cannot be pickled, so the run directory must be visible to every worker under
the same path: a shared filesystem), reads its rows block by block, runs the kernel and sends
back one :class:`~aum_replay.engine.Segment`: per row, the dense sample index, the label and
the statistics the chosen reducers read (24 bytes a row for values-only AUM, whatever the
number of classes). The client folds the segments into one :class:`~aum_replay.engine.Fold`
as they arrive; one that arrives before its predecessors waits, so the result is bit for bit
the single-machine replay's, and at most ``window`` tasks are in flight, so the client's memory
stays bounded. The id scan is spread the same way: each task sends its shard's distinct ids.

Workers need aum-replay (and its core dependencies) installed; nothing else of the client's
process travels but the id index, broadcast once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from aum_replay.engine import Segment
from aum_replay.errors import AumReplayError, InputError
from aum_replay.format import DISK_DTYPES, ShardInfo, ShardReader, read_all_id_keys
from aum_replay.run import IdIndex, IdScan, Run, _sorted_unique, decode_keys

__all__ = ["TASK_BYTES", "connect", "scan_ids", "segments"]

#: Logits per task (bytes): large enough that the scheduler's ~1 ms a task is noise, small
#: enough that a killed worker loses little and tasks spread over many workers.
TASK_BYTES = 64 << 20

_EXTRA = "pip install 'aum-replay[dask]'"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(f"--dask needs Dask's distributed scheduler: {_EXTRA}") from None
    return distributed


@contextlib.contextmanager
def connect(address: str, *, timeout: float = 10.0) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for the CLI's ``--dask`` value, closed on exit.

    ``address``: a scheduler address (``tcp://host:8786``), or ``local:N`` for a
    ``LocalCluster`` of N worker processes (one thread each) that lives for the command.
    """
    distributed = _distributed()
    if address.startswith("local:"):
        count = address.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--dask local:N needs a number of workers >= 1, not {address!r}")
        with (
            distributed.LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: never collide with a running cluster
                silence_logs=logging.CRITICAL,  # a failed task is our one-line error, not a log
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"no Dask scheduler reachable at {address!r} ({exc})") from None
    with client:
        yield client


def _task_ids(info: ShardInfo) -> tuple[np.ndarray, bool]:
    """A shard's distinct ids (as keys, see :meth:`ShardReader.read_id_keys`), sorted, and
    whether any id repeats within it."""
    ids = read_all_id_keys(info)
    distinct = _sorted_unique(ids)
    return distinct, len(distinct) < len(ids)


def scan_ids(client: Any, shards: tuple[ShardInfo, ...], id_kind: str) -> IdScan:
    """:func:`aum_replay.run.scan_ids` with the reading done by the cluster's workers."""
    futures = client.map(_task_ids, shards, pure=False)
    results = _gather(client, futures)
    if not results:
        empty = np.zeros(0, dtype=np.int64 if id_kind == "int" else np.str_)
        keys = None if id_kind == "int" else np.zeros(0, dtype="S1")
        return IdScan(empty, np.zeros(0, dtype=np.int64), keys)
    universe = _sorted_unique(np.concatenate([distinct for distinct, _ in results]))
    if id_kind == "int":
        universe = universe.astype(np.int64, copy=False)
    clean = not any(repeats for _, repeats in results)
    appearances = np.zeros(len(universe), dtype=np.int64)
    by_epoch: dict[int, list[np.ndarray]] = {}
    for info, (distinct, _) in zip(shards, results, strict=True):
        by_epoch.setdefault(info.epoch, []).append(distinct)
    for parts in by_epoch.values():
        present = _sorted_unique(np.concatenate(parts))
        clean = clean and len(present) == sum(len(p) for p in parts)  # no id on two ranks
        appearances[np.searchsorted(universe, present)] += 1
    if id_kind == "str":
        return IdScan(decode_keys(universe), appearances if clean else None, universe)
    return IdScan(universe, appearances if clean else None)


def _task_replay(
    info: ShardInfo,
    start: int,
    stop: int,
    position: int,
    ids: IdIndex,
    needs: frozenset[str],
    block_bytes: int,
) -> Segment:
    """Rows ``start:stop`` of one shard through the numpy kernel, block by block."""
    from aum_replay.replay import _kernel, read_segment

    kernel = _kernel(None, needs)
    step = max(1, block_bytes // info.row_bytes)  # of the logits, or of their summary
    buffer = None
    if info.storage == "logits":
        disk = DISK_DTYPES[info.stored_dtype]
        buffer = np.empty((min(step, stop - start), info.num_classes), disk)
    parts = []
    with ShardReader(info.path, info=info) as reader:
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            parts.append(read_segment(reader, lo, hi, position + lo - start, ids, kernel, buffer))
    return Segment.concat(parts)


def segments(
    client: Any,
    run: Run,
    ids: IdIndex,
    needs: frozenset[str],
    *,
    block_bytes: int,
    task_bytes: int | None = None,
    window: int | None = None,
) -> Iterator[Segment]:
    """Every row of ``run`` through the kernel on the cluster, as segments in arrival order.

    Feed them to a :class:`~aum_replay.engine.Fold`: it puts them back in measurement order.
    Tasks hold about ``task_bytes`` of logits (default :data:`TASK_BYTES`); at most
    ``window`` of them (default: two per worker thread, at least 4) are in flight or finished
    but waiting for an earlier one, so the client holds at most ``window`` segments.
    """
    from aum_replay.replay import _plan

    distributed = _distributed()
    plan = _plan(run, TASK_BYTES if task_bytes is None else task_bytes)
    positions = np.cumsum([0] + [stop - start for _, start, stop in plan]).tolist()
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = max(4, 2 * threads)
    [ids_future] = client.scatter([ids], broadcast=True)

    def submit(i: int) -> Any:
        shard, start, stop = plan[i]
        return client.submit(
            _task_replay, shard, start, stop, positions[i], ids_future, needs, block_bytes,
            pure=False,
        )  # fmt: skip

    # Task i is submitted only while i < lowest unfinished + window: a straggler holds back new
    # submissions, so what waits for it on the client (finished, not yet foldable) stays below
    # ``window`` segments.
    submitted = min(window, len(plan))
    index = {}
    for i in range(submitted):
        index[submit(i)] = i
    running = distributed.as_completed(list(index))
    finished: set[int] = set()
    lowest = 0
    try:
        for future in running:
            seg = _result(future)
            finished.add(index.pop(future))
            while lowest in finished:
                finished.discard(lowest)
                lowest += 1
            while submitted < len(plan) and submitted < lowest + window:
                future = submit(submitted)
                index[future] = submitted
                running.add(future)
                submitted += 1
            yield seg
    finally:
        client.cancel(list(index))


def _result(future: Any) -> Any:
    try:
        return future.result()
    except AumReplayError:
        raise
    except Exception as exc:  # the cluster's failures (a task killed too often, a lost worker)
        raise AumReplayError(f"the Dask cluster failed: {type(exc).__name__}: {exc}") from exc


def _gather(client: Any, futures: list[Any]) -> list[Any]:
    try:
        return [_result(f) for f in futures]
    finally:
        client.cancel(futures)
