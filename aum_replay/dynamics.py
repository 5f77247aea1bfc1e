"""``dynamics()``: every training-dynamics signal of a run, from one streamed pass.

The same stream as :func:`aum_replay.compute` (validated shards, worker threads, the duplicates
ledger) feeds one kernel per block (:func:`aum_replay.kernels.row_signals`: the margin and the
softmax statistics of each row, computed once) and two states: the exact AUM accumulator that
``compute`` uses (so ``aum`` here is bit for bit ``aum_values.csv``'s) and the reducers of
:mod:`aum_replay.reducers`. The result is one row per sample, sorted by sample id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import polars as pl

from aum_replay.accumulate import MarginAccumulator, occurrence_rank
from aum_replay.csvout import to_frame
from aum_replay.epochs import EpochSelection
from aum_replay.errors import InputError
from aum_replay.kernels import RowSignals, row_signals
from aum_replay.outputs import OutputSet, writing
from aum_replay.reducers import METRICS, DynamicsState
from aum_replay.replay import _Ledger, _stream, open_checked
from aum_replay.run import IdIndex, Run, scan_ids
from aum_replay.summary import with_summaries

__all__ = ["DYNAMICS_NAME", "METRICS", "dynamics"]

DYNAMICS_NAME = "training_dynamics.csv"


def dynamics(
    run_dir: str | Path | Run,
    out_dir: str | Path | None = None,
    *,
    epochs: str | EpochSelection | None = None,
    metrics: Sequence[str] | None = None,
    duplicates: Literal["first", "all"] = "first",
    workers: int = 2,
    block_bytes: int = 2 << 20,
    progress: Callable[[int, int], None] | None = None,
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
    workers, block_bytes, progress
        As for :func:`aum_replay.compute`.

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
        table = _replay(run, chosen, duplicates, workers, block_bytes, progress)
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
) -> pl.DataFrame:
    scan = scan_ids(run.shards, run.id_kind)
    universe = scan.universe
    n = len(universe)
    aum = MarginAccumulator(n)
    state = DynamicsState(n)
    ledger = _Ledger(n, duplicates, None, clean=scan.appearances is not None)

    def on_rows(logits: np.ndarray, targets: np.ndarray, stored: str) -> tuple[np.ndarray, Any]:
        rows = row_signals(logits, targets, stored)
        return rows.margin, rows

    kernel = with_summaries(on_rows, "signals")  # a summary shard's rows give the same fields

    ids = IdIndex(universe, run.id_kind)
    for block in _stream(run, ids, kernel, block_bytes, workers):
        keep = ledger.admit(block.index, block.targets, block.new_epoch)
        index, rows = block.index, cast(RowSignals, block.fields)  # this kernel's fields
        if keep is not None:
            index, rows = index[keep], RowSignals(*(field[keep] for field in rows))
        aum.update(index, rows.margin)  # exact, in measurement order, repeats included
        if ledger.unique_rows:
            state.update(index, rows)
        else:  # --duplicates all: an index may repeat; fold its k-th rows in round k
            rank = occurrence_rank(index)
            for k in range(int(rank.max(initial=-1)) + 1):
                pick = np.flatnonzero(rank == k)
                state.update(index[pick], RowSignals(*(field[pick] for field in rows)))
        if progress is not None:
            progress(block.rows_done, run.num_rows)
    ledger.close()
    signals = state.compute()
    signals["aum"] = aum.aum()
    columns: dict[str, Any] = {
        "sample_id": universe,
        "target": ledger.labels,
        "num_measurements": aum.counts,
    }
    known = signals.pop("known")
    for name in chosen:
        values = signals[name]
        if name in ("forgetting_events", "never_learned"):
            columns[name] = pl.Series(name, values).set(pl.Series(~known), None)
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
