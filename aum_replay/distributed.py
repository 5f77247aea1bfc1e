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
from aum_replay.keys import Collision
from aum_replay.run import IdIndex, IdScan, Run, _sorted_unique, scan_epochs
from aum_replay.run import scan_ids as local_scan_ids

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


def _task_ids(info: ShardInfo) -> tuple[np.ndarray, int]:
    """A shard's distinct ids (as keys, see :meth:`ShardReader.read_id_keys`) and its rows."""
    ids = read_all_id_keys(info)
    return _sorted_unique(ids), len(ids)


def scan_ids(client: Any, shards: tuple[ShardInfo, ...], id_kind: str) -> IdScan:
    """:func:`aum_replay.run.scan_ids` with the reading done by the cluster's workers: each
    task sends its shard's distinct ids, the client merges them epoch by epoch
    (:func:`aum_replay.run.scan_epochs`)."""
    results = _gather(client, client.map(_task_ids, shards, pure=False))
    by_epoch: dict[int, tuple[list[np.ndarray], list[int]]] = {}
    for info, (distinct, rows) in zip(shards, results, strict=True):
        if rows:
            parts, counts = by_epoch.setdefault(info.epoch, ([], []))
            parts.append(distinct)
            counts.append(rows)
    try:
        return scan_epochs(((p, sum(c)) for p, c in by_epoch.values()), id_kind)
    except Collision:  # two string ids with one hash (odds ~N^2 / 2^65): compare bytes here
        return local_scan_ids(shards, id_kind)


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
    from aum_replay.replay import _kernel, _ranges, read_segment

    kernel = _kernel(None, needs)
    step = max(1, block_bytes // info.row_bytes)  # of the logits, or of their summary
    buffer = None
    if info.storage == "logits":
        disk = DISK_DTYPES[info.stored_dtype]
        buffer = np.empty((min(step, stop - start), info.num_classes), disk)
    parts = []
    with ShardReader(info.path, info=info) as reader:
        for lo, hi in _ranges(start, stop, step):
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
