"""``dynamics()``: every training-dynamics signal of a run, from one streamed pass.

The same stream as :func:`aum_replay.compute` (validated shards, worker threads) feeds one
kernel call per block (:func:`aum_replay.kernels.block_stats`: just the statistics the chosen
signals read, each computed once) and one :class:`aum_replay.engine.Fold` (the duplicates
ledger and the reducers of :mod:`aum_replay.reducers`; the AUM reducer is the one ``compute``
uses, so ``aum`` here is bit for bit ``aum_values.csv``'s). The result is one row per sample,
sorted by sample id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, Literal

import polars as pl

from aum_replay.csvout import to_frame
from aum_replay.engine import Fold
from aum_replay.epochs import EpochSelection
from aum_replay.errors import InputError
from aum_replay.location import RunDirLike
from aum_replay.outputs import OutputSet, writing
from aum_replay.reducers import METRICS, reducers_for
from aum_replay.replay import feed, open_checked, scan_and_stream
from aum_replay.run import Run

__all__ = ["DYNAMICS_NAME", "METRICS", "dynamics"]

DYNAMICS_NAME = "training_dynamics.csv"


def dynamics(
    run_dir: RunDirLike | Run,
    out_dir: str | Path | None = None,
    *,
    epochs: str | EpochSelection | None = None,
    metrics: Sequence[str] | None = None,
    duplicates: Literal["first", "all"] = "first",
    workers: int = 2,
    block_bytes: int = 2 << 20,
    progress: Callable[[int, int], None] | None = None,
    client: Any = None,
) -> pl.DataFrame:
    """The training-dynamics signals of every sample of a run, in one pass.

    Parameters
    ----------
    run_dir
        A run directory written by :class:`aum_replay.LogitLogger` (or an opened
        :class:`~aum_replay.run.Run`, with ``epochs`` None).
    out_dir
        Where ``training_dynamics.csv`` goes (committed as one set, like every output); ``None``
        writes nothing.
    epochs
        Epoch selection as for :func:`aum_replay.compute`; default all.
    metrics
        Signals to keep, a subset of :data:`METRICS` (``aum``, ``confidence``, ``variability``,
        ``correctness``, ``forgetting_events``, ``never_learned``, ``el2n``, ``loss``,
        ``aleatoric``); default all. ``sample_id``, ``target`` and ``num_measurements`` are
        always there.
    duplicates
        As for :func:`aum_replay.compute`: ``"first"`` counts an id once per epoch.
    workers, block_bytes, progress, client
        As for :func:`aum_replay.compute` (``client``: a ``dask.distributed.Client`` to run
        the reading and the kernel on).

    Returns
    -------
    polars.DataFrame
        One row per sample, sorted by ``sample_id``: ``sample_id, target, num_measurements``
        and the chosen signals (formulas: :mod:`aum_replay.reducers`). ``forgetting_events``
        and ``never_learned`` are null for a sample with a NaN row.
    """
    chosen = list(METRICS) if metrics is None else list(dict.fromkeys(metrics))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise InputError(f"unknown metric(s) {unknown or chosen}; choose from {', '.join(METRICS)}")
    run = open_checked(run_dir, epochs, duplicates=duplicates, workers=workers)
    with ExitStack() as stack:
        outputs = None
        if out_dir is not None:
            outputs = stack.enter_context(OutputSet(out_dir, (DYNAMICS_NAME,)))
        table = _replay(run, chosen, duplicates, workers, block_bytes, progress, client)
        if outputs is not None:
            with writing(outputs.out_dir, DYNAMICS_NAME):
                csv = outputs.csv(DYNAMICS_NAME, tuple(table.columns))
                csv.write_frame(to_frame(_csv_columns(table)))
            outputs.commit()
    return table


def _replay(
    run: Run,
    chosen: list[str],
    duplicates: Literal["first", "all"],
    workers: int,
    block_bytes: int,
    progress: Callable[[int, int], None] | None,
    client: Any,
) -> pl.DataFrame:
    needs = frozenset().union(*(r.needs for r in reducers_for(chosen, 0)))
    scan, segments = scan_and_stream(run, needs, None, block_bytes, workers, client)
    with closing(segments):
        n = scan.size
        clean = scan.appearances is not None
        fold = Fold(
            n,
            reducers_for(chosen, n),
            duplicates=duplicates,
            clean=clean,
            counts=scan.appearances if clean else None,
            labels_epoch=scan.labels_epoch(run.shards),
        )
        feed(fold, segments, run.num_rows, progress)
    folded = fold.result(run.num_rows)
    signals = folded.signals
    columns: dict[str, Any] = {
        "sample_id": scan.id_column(),
        "target": folded.labels,
        "num_measurements": folded.counts,
    }
    for name in chosen:
        values = signals[name]
        if name in ("forgetting_events", "never_learned"):
            columns[name] = pl.Series(name, values).set(pl.Series(~signals["known"]), None)
        else:
            columns[name] = values
    return pl.DataFrame(columns)


def _csv_columns(table: pl.DataFrame) -> dict[str, Any]:
    """Columns ready for :func:`aum_replay.csvout.to_frame`: floats as numpy (formatted there),
    flags as ``true``/``false``."""
    out: dict[str, Any] = {}
    for name in table.columns:
        col = table[name]
        if col.dtype == pl.Float64:
            out[name] = col.to_numpy()
        elif col.dtype == pl.Boolean:
            out[name] = col.cast(pl.String).str.to_lowercase()
        else:
            out[name] = col
    return out
