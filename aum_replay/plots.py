"""Pictures of a run: the AUM histogram, margin-over-epochs curves, flagged counts per class.

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

from aum_replay.csvout import prepare_out_dir
from aum_replay.epochs import EpochSelection, parse_epochs
from aum_replay.errors import AumReplayError, InputError
from aum_replay.flag import MISLABELED_NAME, SUMMARY_NAME, FlagResult, flag
from aum_replay.format import ShardReader
from aum_replay.kernels import margin_values
from aum_replay.replay import compute
from aum_replay.run import Run, open_run
from aum_replay.threshold import threshold_alpha

__all__ = [
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
    run_dir: str | os.PathLike[str],
    ids: Sequence[Any],
    *,
    epochs: str | EpochSelection | None = None,
) -> MarginCurves:
    """Stream the shards of ``run_dir`` and collect the per-epoch margins of ``ids``.

    Memory is one block of rows plus (K, E) values, whatever the size of the run.
    """
    run = open_run(Path(run_dir), epochs)
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
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ids: Sequence[Any] = (),
    lowest: int = 10,
    flags: FlagResult | str | os.PathLike[str] | None = None,
    epochs: str | EpochSelection | None = None,
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
    percentile
        Percentile of the threshold AUMs for alpha when ``flags`` is not given.

    Returns
    -------
    list of Path
        ``aum_histogram.png``, ``margins.png`` and, when flags are known,
        ``flagged_per_class.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if lowest < 0:
        raise InputError(f"lowest must be >= 0, not {lowest}")
    selection = epochs if isinstance(epochs, EpochSelection) else parse_epochs(epochs)
    run = open_run(Path(run_dir), selection)
    wanted = [_plain(i) for i in _as_ids(list(ids), run.id_kind)]
    out_path, _ = prepare_out_dir(out_dir)

    if flags is None and run.threshold:
        # Flag this run on its own; its replay is the AUM table too (one replay, not two).
        flags = flag([run.run_dir], None, epochs=selection, percentile=percentile)
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
    paths: list[Path] = []

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
    paths.append(_save(fig, out_path / HISTOGRAM_PNG))
    plt.close(fig)

    order = np.argsort(np.where(finite & ~is_thr, aum, np.inf), kind="stable")
    low = [_plain(i) for i in sample_ids[order[: min(lowest, int((finite & ~is_thr).sum()))]]]
    chosen = list(dict.fromkeys(low + wanted))
    missing = set(wanted) - {_plain(i) for i in sample_ids}
    if missing:
        raise InputError(f"sample id(s) {sorted(missing, key=str)[:5]} are not in {run.run_dir}")
    curves = margin_curves(run.run_dir, chosen, epochs=selection)
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.plot(curves.epochs, curves.mean_margin, color="black", linestyle="--", label="mean, all")
    low_set = set(low)
    for k, sid in enumerate(curves.ids):
        is_low = sid in low_set and sid not in wanted
        ax.plot(
            curves.epochs,
            curves.margins[k],
            color="tab:red" if is_low else None,
            alpha=0.45 if is_low else 0.95,
            linewidth=1.0 if is_low else 1.8,
            marker=None if len(curves.epochs) > 30 else ".",
            label=None if is_low else f"id {sid}",
        )
    if low:
        ax.plot([], [], color="tab:red", alpha=0.45, label=f"{len(low)} lowest AUM")
    ax.set_xlabel("epoch")
    ax.set_ylabel("margin (assigned logit - largest other)")
    ax.set_title("Margin over training: clean samples rise, mislabeled ones stay below zero")
    ax.legend(fontsize="small", ncols=2)
    paths.append(_save(fig, out_path / MARGINS_PNG))
    plt.close(fig)

    if known is not None:
        classes = np.arange(max(known.num_classes, 1))
        counts = np.array([known.per_class.get(int(c), 0) for c in classes])
        fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
        ax.bar(classes, counts, color="tab:red")
        ax.set_xticks(classes)
        ax.set_xlabel("given label")
        ax.set_ylabel("flagged samples")
        ax.set_title(f"Flagged as mislabeled: {int(counts.sum()):,} samples")
        paths.append(_save(fig, out_path / FLAGGED_PNG))
        plt.close(fig)
    return paths


@dataclass
class _Flags:
    alpha: float | None
    per_class: dict[int, int]
    num_classes: int


def _load_flags(
    flags: FlagResult | str | os.PathLike[str] | None,
    run: Run,
) -> _Flags | None:
    """Alpha of ``run`` and the flagged counts per class, from a flag result, its dir, or a flag."""
    num_classes = int(run.threshold["extra_class"]) if run.threshold else run.num_classes
    if flags is None:  # a run without threshold samples, and no flag output given
        return None
    if isinstance(flags, FlagResult):
        alpha = next((r.alpha for r in flags.runs if _same(r.run_dir, run.run_dir)), None)
        return _Flags(alpha, dict(flags.flagged_per_class), num_classes)
    folder = Path(flags).expanduser()
    mislabeled = folder / MISLABELED_NAME
    if not mislabeled.is_file():
        raise InputError(f"{folder}: no {MISLABELED_NAME}; run 'aum-replay flag ... -o {folder}'")
    try:
        labels = pl.read_csv(mislabeled, columns=["label"])["label"].drop_nulls().to_list()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{mislabeled}: cannot read ({exc})") from None
    per_class: dict[int, int] = {}
    for value in labels:
        per_class[int(value)] = per_class.get(int(value), 0) + 1
    alpha = None
    summary = folder / SUMMARY_NAME
    if summary.is_file():
        try:
            runs = json.loads(summary.read_text()).get("runs", [])
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{summary}: cannot read ({exc})") from None
        for entry in runs:
            if (
                _same(Path(entry.get("run_dir", "")), run.run_dir)
                and entry.get("alpha") is not None
            ):
                alpha = float(entry["alpha"])
    return _Flags(alpha, per_class, num_classes)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover
        return False


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


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AumReplayError(f"{path}: cannot write ({exc.strerror})") from None
    return path
