"""Pictures of a run: the AUM histogram, margin-over-epochs curves, the data map (dataset
cartography's variability x confidence, coloured by correctness) and flagged counts per class.

Everything is drawn with matplotlib's headless Agg backend into PNG files. The margin curves
stream the shards block by block and keep only the rows of the few ids asked for (plus a per-epoch
mean of every margin for context), so a big run is never loaded into memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aum_replay import location
from aum_replay.dynamics import dynamics
from aum_replay.epochs import EpochSelection, parse_epochs
from aum_replay.errors import InputError
from aum_replay.flag import (
    DEFAULT_RULE,
    DETAILS_NAME,
    MISLABELED_NAME,
    SUMMARY_NAME,
    FlagResult,
    Rule,
    flag,
)
from aum_replay.format import ShardReader
from aum_replay.kernels import margin_values
from aum_replay.location import RunDirLike
from aum_replay.outputs import OutputSet, writing
from aum_replay.replay import compute
from aum_replay.run import Run, open_run
from aum_replay.threshold import threshold_alpha

__all__ = [
    "DATA_MAP_PNG",
    "FLAGGED_PNG",
    "HISTOGRAM_PNG",
    "MARGINS_PNG",
    "MarginCurves",
    "margin_curves",
    "plot",
]

HISTOGRAM_PNG = "aum_histogram.png"
MARGINS_PNG = "margins.png"
FLAGGED_PNG = "flagged_per_class.png"
DATA_MAP_PNG = "data_map.png"
PNG_NAMES = (HISTOGRAM_PNG, MARGINS_PNG, DATA_MAP_PNG, FLAGGED_PNG)
BLOCK_ROWS = 1 << 16


@dataclass
class MarginCurves:
    """Per-epoch margins of a few samples.

    Attributes
    ----------
    epochs
        The selected epochs, shape (E,).
    ids
        The samples asked for, in the order asked, length K.
    margins
        Shape (K, E): the margin of each sample in each epoch (its first row in that epoch); NaN
        where the sample has no row in that epoch.
    mean_margin
        Shape (E,): the mean margin over every row of each epoch.
    """

    epochs: np.ndarray
    ids: list[Any]
    margins: np.ndarray
    mean_margin: np.ndarray


def margin_curves(
    run_dir: RunDirLike,
    ids: Sequence[Any],
    *,
    epochs: str | EpochSelection | None = None,
) -> MarginCurves:
    """Stream the shards of ``run_dir`` and collect the per-epoch margins of ``ids``.

    Memory is one block of rows plus (K, E) values, whatever the size of the run.
    """
    run = open_run(run_dir, epochs)
    wanted = _as_ids(ids, run.id_kind)
    sorted_wanted = np.sort(wanted)
    position = np.argsort(wanted, kind="stable")
    epoch_list = run.epochs
    column = {e: j for j, e in enumerate(epoch_list)}
    values = np.full((len(wanted), len(epoch_list)), np.nan)
    sums = np.zeros(len(epoch_list))
    counts = np.zeros(len(epoch_list), dtype=np.int64)
    for shard in run.shards:
        j = column[shard.epoch]
        with ShardReader(shard.path, info=shard) as reader:
            for start, stop in reader.blocks(BLOCK_ROWS):
                logits, targets = reader.read_arrays(start, stop)
                margin = margin_values(logits, targets, shard.stored_dtype)
                sums[j] += margin.sum()
                counts[j] += len(margin)
                if not len(wanted):
                    continue
                block_ids = reader.read_ids(start, stop)
                if run.id_kind == "str":
                    block_ids = block_ids.astype(np.str_)
                slot = np.searchsorted(sorted_wanted, block_ids).clip(0, len(wanted) - 1)
                hit = np.flatnonzero(sorted_wanted[slot] == block_ids)
                for row in hit:  # a few ids: a short loop
                    k = position[slot[row]]
                    if np.isnan(values[k, j]):
                        values[k, j] = margin[row]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return MarginCurves(np.asarray(epoch_list), [_plain(i) for i in wanted], values, mean)


def plot(
    run_dir: RunDirLike,
    out_dir: str | os.PathLike[str],
    *,
    ids: Sequence[Any] = (),
    lowest: int = 10,
    flags: FlagResult | str | os.PathLike[str] | None = None,
    epochs: str | EpochSelection | None = None,
    rule: Rule = DEFAULT_RULE,
    percentile: float = 99.0,
) -> list[Path]:
    """Draw the PNG files of one run; returns their paths.

    Parameters
    ----------
    run_dir
        A run directory written by :class:`aum_replay.LogitLogger`.
    out_dir
        Where the PNG files go (created if missing).
    ids
        Sample ids whose margin curves to draw in addition to the lowest-AUM ones.
    lowest
        How many of the lowest-AUM samples (threshold samples excluded) to draw; default 10.
    flags
        The output of :func:`aum_replay.flag` (the result, or its ``OUT_DIR``): alpha is taken
        from it and the per-class plot shows its flags. Without it, a run with threshold
        samples is flagged on its own; a run without gives no alpha line and no per-class plot.
    epochs
        Epoch selection (see :mod:`aum_replay.epochs`); default all.
    rule, percentile
        How :func:`aum_replay.flag` cuts when ``flags`` is not given (the default rule, or the
        paper's ``percentile`` of the threshold AUMs with ``rule="paper"``), over ``epochs``.

    Returns
    -------
    list of Path
        ``aum_histogram.png``, ``margins.png``, ``data_map.png`` and, when flags are known,
        ``flagged_per_class.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if lowest < 0:
        raise InputError(f"lowest must be >= 0, not {lowest}")
    selection = epochs if isinstance(epochs, EpochSelection) else parse_epochs(epochs)
    run = open_run(run_dir, selection)
    wanted = [_plain(i) for i in _as_ids(list(ids), run.id_kind)]
    # Without flags there is no per-class figure: an older one would belong to another run.
    outputs = OutputSet(out_dir, PNG_NAMES, stale=(FLAGGED_PNG,)).check()

    if flags is None and run.threshold:
        # Flag this run on its own; its replay is the AUM table too (one replay, not two).
        flags = flag([run.run_dir], None, rule=rule, epochs=selection, percentile=percentile)
        result = flags.runs[0].result
    else:
        result = compute(run, None, full=False)
    table = result.aum
    sample_ids = table["sample_id"].to_numpy()
    aum = table["aum"].to_numpy()
    is_thr = _threshold_mask(run, sample_ids)
    known = _load_flags(flags, run)
    alpha = known.alpha if known is not None else None
    if alpha is None and is_thr.any():
        alpha = threshold_alpha(aum[is_thr], percentile)
    figures: list[tuple[str, Any]] = []

    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    finite = np.isfinite(aum)
    bins = np.histogram_bin_edges(aum[finite], bins=60).tolist() if finite.any() else 10
    ax.hist(aum[finite & ~is_thr], bins=bins, color="tab:blue", alpha=0.75, label="samples")
    if is_thr.any():
        ax.hist(
            aum[finite & is_thr], bins=bins, color="tab:orange", alpha=0.75,
            label="threshold samples",
        )  # fmt: skip
    if alpha is not None and np.isfinite(alpha):
        ax.axvline(alpha, color="tab:red", linestyle="--", label=f"alpha = {alpha:.3g}")
    ax.set_xlabel("AUM (mean margin)")
    ax.set_ylabel("samples")
    ax.set_title(f"AUM of {run.run_dir.name}: {len(aum):,} samples, {len(result.epochs)} epochs")
    ax.legend()
    figures.append((HISTOGRAM_PNG, fig))

    order = np.argsort(np.where(finite & ~is_thr, aum, np.inf), kind="stable")
    low = [_plain(i) for i in sample_ids[order[: min(lowest, int((finite & ~is_thr).sum()))]]]
    chosen = list(dict.fromkeys(low + wanted))
    missing = set(wanted) - {_plain(i) for i in sample_ids}
    if missing:
        raise InputError(f"sample id(s) {sorted(missing, key=str)[:5]} are not in {run.run_dir}")
    curves = margin_curves(run.run_dir, chosen, epochs=selection)
    aum_of = dict(zip((_plain(i) for i in sample_ids), aum.tolist(), strict=True))
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.plot(curves.epochs, curves.mean_margin, color="black", linestyle="--", label="mean, all")
    low_set = set(low)
    for k, sid in enumerate(curves.ids):
        is_low = sid in low_set and sid not in wanted
        ax.plot(
            curves.epochs,
            curves.margins[k],
            alpha=0.6 if is_low else 0.95,
            linewidth=1.0 if is_low else 1.8,
            linestyle=":" if is_low else "-",
            marker=None if len(curves.epochs) > 30 else ".",
            label=f"id {sid} (AUM {aum_of[sid]:.3g})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("margin (assigned logit - largest other)")
    parts = [f"{len(low)} lowest-AUM samples (dotted)"] if low else []
    if wanted:
        parts.append(f"{len(wanted)} chosen (solid)")
    ax.set_title(f"Margin per epoch in {run.run_dir.name}: " + " and ".join(parts or ["mean only"]))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figures.append((MARGINS_PNG, fig))

    # The data map (dataset cartography): variability x confidence, coloured by correctness.
    dyn = dynamics(run, metrics=["confidence", "variability", "correctness"])
    dyn_ids = dyn["sample_id"].to_numpy()
    thr_map = _threshold_mask(run, dyn_ids)
    fig, ax = plt.subplots(figsize=(7, 5.2), layout="constrained")
    points = ax.scatter(
        dyn["variability"].to_numpy(), dyn["confidence"].to_numpy(), s=6,
        c=dyn["correctness"].to_numpy(), cmap="viridis", vmin=0.0, vmax=1.0, linewidths=0,
    )  # fmt: skip
    fig.colorbar(points, ax=ax, label="correctness (fraction of epochs argmax = label)")
    if thr_map.any():
        ax.scatter(
            dyn["variability"].to_numpy()[thr_map], dyn["confidence"].to_numpy()[thr_map],
            s=14, facecolors="none", edgecolors="tab:orange", linewidths=0.6,
            label=f"threshold samples ({int(thr_map.sum()):,})",
        )  # fmt: skip
    if known is not None and known.flagged is not None:
        hit = np.isin(dyn_ids.astype(np.str_) if run.id_kind == "str" else dyn_ids, known.flagged)
        ax.scatter(
            dyn["variability"].to_numpy()[hit], dyn["confidence"].to_numpy()[hit], s=10,
            marker="x", color="tab:red", linewidths=0.6, label=f"flagged ({int(hit.sum()):,})",
        )  # fmt: skip
    ax.set_xlabel("variability (std of p[label] over epochs)")
    ax.set_ylabel("confidence (mean of p[label] over epochs)")
    ax.set_title(f"Data map of {run.run_dir.name}: {len(dyn_ids):,} samples")
    if thr_map.any() or (known is not None and known.flagged is not None):
        ax.legend(loc="lower right", fontsize="small")
    figures.append((DATA_MAP_PNG, fig))

    if known is not None:
        classes = np.arange(max(known.num_classes, 1))
        counts = np.array([known.per_class.get(int(c), 0) for c in classes])
        labels = known.labels if known.labels is not None else table["target"].to_numpy()[~is_thr]
        totals = np.array([(labels == c).sum() for c in classes])
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(totals > 0, 100.0 * counts / np.maximum(totals, 1), 0.0)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        left.bar(classes, counts, color="tab:red")
        left.set_ylabel("flagged samples")
        right.bar(classes, rate, color="tab:purple")
        right.set_ylabel("flagged, % of the label's samples")
        for axis in (left, right):
            axis.set_xticks(classes)
            axis.set_xlabel("given label")
        fig.suptitle(
            f"Flagged as mislabeled: {int(counts.sum()):,} of {int(totals.sum()):,} samples, "
            "by given label"
        )
        figures.append((FLAGGED_PNG, fig))
    try:
        with outputs:
            for name, figure in figures:
                with writing(outputs.out_dir, name), outputs.open(name) as fh:
                    figure.savefig(fh, format="png", dpi=110)
            return outputs.commit()
    finally:
        for _, figure in figures:
            plt.close(figure)


@dataclass
class _Flags:
    alpha: float | None
    per_class: dict[int, int]
    num_classes: int
    labels: np.ndarray | None = None
    """Given label of every scored sample (the denominators of the per-class rate)."""
    flagged: np.ndarray | None = None
    """Ids of the flagged samples (marked on the data map)."""


def _load_flags(
    flags: FlagResult | str | os.PathLike[str] | None,
    run: Run,
) -> _Flags | None:
    """Alpha of ``run`` and the flagged counts per class, from a flag result, its dir, or a flag."""
    num_classes = int(run.threshold["extra_class"]) if run.threshold else run.num_classes
    if flags is None:  # a run without threshold samples, and no flag output given
        return None
    if isinstance(flags, FlagResult):
        alpha = next((r.alpha for r in flags.runs if location.same(r.run_dir, run.run_dir)), None)
        given = flags.details["label"].drop_nulls().to_numpy()
        ids = _as_ids(flags.flagged_ids, run.id_kind)
        return _Flags(alpha, dict(flags.flagged_per_class), num_classes, given, ids)
    folder = Path(flags).expanduser()
    mislabeled = folder / MISLABELED_NAME
    if not mislabeled.is_file():
        raise InputError(f"{folder}: no {MISLABELED_NAME}; run 'aum-replay flag ... -o {folder}'")
    try:
        table = pl.read_csv(mislabeled, columns=["sample_id", "label"], infer_schema_length=0)
        labels = table["label"].drop_nulls().cast(pl.Int64).to_list()
        flagged = _as_ids(table["sample_id"].to_list(), run.id_kind)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise InputError(f"{mislabeled}: cannot read ({exc})") from None
    per_class: dict[int, int] = {}
    for value in labels:
        per_class[int(value)] = per_class.get(int(value), 0) + 1
    scored: np.ndarray | None = None
    details = folder / DETAILS_NAME
    if details.is_file():
        try:
            scored = pl.read_csv(details, columns=["label"])["label"].drop_nulls().to_numpy()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{details}: cannot read ({exc})") from None
    alpha = None
    summary = folder / SUMMARY_NAME
    if summary.is_file():
        try:
            runs = json.loads(summary.read_text()).get("runs", [])
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{summary}: cannot read ({exc})") from None
        for entry in runs:
            if (
                location.same(location.location(entry.get("run_dir", "")), run.run_dir)
                and entry.get("alpha") is not None
            ):
                alpha = float(entry["alpha"])
    return _Flags(alpha, per_class, num_classes, scored, flagged)


def _threshold_mask(run: Run, sample_ids: np.ndarray) -> np.ndarray:
    if not run.threshold:
        return np.zeros(len(sample_ids), dtype=bool)
    recorded = _as_ids(run.threshold.get("sample_ids", []), run.id_kind)
    ids = sample_ids.astype(np.str_) if run.id_kind == "str" else sample_ids
    return np.isin(ids, recorded)


def _as_ids(ids: Sequence[Any], id_kind: str) -> np.ndarray:
    try:
        if id_kind == "str":
            return np.asarray([str(i) for i in ids], dtype=np.str_)
        return np.asarray([int(i) for i in ids], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(
            f"sample ids {list(ids)[:5]} are not {id_kind} ids like the run's"
        ) from None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
