"""Flag mislabeled samples from one or more recorded runs (the library behind ``aum-replay flag``).

Each run is replayed with :func:`aum_replay.compute` (the same engine, so the same AUMs), its
alpha is taken from its threshold samples with a rule (or given), and the flags are combined over
the runs with the rule of :mod:`aum_replay.threshold`. The rules (``rule=``):

``"f1"`` (default)
    A two-component mixture of the scored AUMs (with a uniform background component for the
    tails), started at the threshold samples, fitted to all runs at once (shared weights; the
    mislabeled component's spread pooled with the threshold samples' when wider); the samples,
    ranked by their mean AUM, are flagged up to where the expected F1 under their lowest
    posterior over the runs is largest, never above any run's paper alpha on the same epochs
    (:func:`aum_replay.rules.combined_mixture_flags`), with ``epochs="auto"``;
    README "How flag chooses the cut-off" has the evidence.
``"paper"``
    SPEC section 5 exactly: alpha = the ``percentile`` (99) of the threshold AUMs, all epochs
    unless ``epochs`` says otherwise.
``"replication"``
    The official replication code's test: flagged when more than 1% of the threshold AUMs are
    strictly greater (:func:`aum_replay.rules.replication_alpha`).

``epochs="auto"`` counts the epochs up to the threshold samples' memorisation point
(:mod:`aum_replay.auto_epochs`), per run. Two CSV files are written atomically:

``mislabeled.csv``
    The flagged samples, most suspicious (lowest mean AUM) first: ``sample_id``, ``aum_run1`` ..
    ``aum_runR`` (empty where the run did not score the sample: absent, or one of its threshold
    samples), ``aum_mean`` (the mean over the runs that scored it) and ``label`` (the given label).
``aum_details.csv``
    Every sample, by ``sample_id``: ``label``, then per run ``aum_runR``, ``threshold_runR`` and
    ``alpha_runR``, then ``aum_mean`` and ``flagged``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from aum_replay import location
from aum_replay.auto_epochs import AutoEpochs, choose_epochs, epoch_margins, epochs_spec
from aum_replay.epochs import EpochSelection, parse_epochs
from aum_replay.errors import InputError
from aum_replay.location import URL, Location, RunDirLike
from aum_replay.outputs import OutputSet, writing
from aum_replay.replay import ComputeResult, compute
from aum_replay.rules import CombinedCut, combined_mixture_flags, replication_alpha
from aum_replay.run import open_run
from aum_replay.threshold import combine_flags, flag_run, fraction_alpha, threshold_alpha

__all__ = [
    "DEFAULT_RULE",
    "DETAILS_NAME",
    "MISLABELED_NAME",
    "RULES",
    "SUMMARY_NAME",
    "FlagResult",
    "MissingThresholdError",
    "RunFlags",
    "flag",
]

MISLABELED_NAME = "mislabeled.csv"
DETAILS_NAME = "aum_details.csv"
SUMMARY_NAME = "flag_summary.json"

AlphaSource = Literal["threshold", "alpha", "fraction"]
Rule = Literal["f1", "paper", "replication"]
RULES: tuple[str, ...] = ("f1", "paper", "replication")
DEFAULT_RULE: Rule = "f1"
# epochs=None means this for the default rule on runs with threshold samples (README, measured)
DEFAULT_EPOCHS = "auto"


class MissingThresholdError(InputError):
    """A run has no threshold samples and neither ``alpha`` nor ``fraction`` was given."""


@dataclass
class RunFlags:
    """One run's part of a :class:`FlagResult`.

    Attributes
    ----------
    run_dir
        The run directory.
    alpha
        The cut-off used for this run. Rule ``"f1"``: the highest AUM among the samples flagged
        in this run (the rule cuts the runs' combined ranking, not each run:
        :func:`aum_replay.rules.combined_mixture_flags`), ``-inf`` when none.
    alpha_source
        ``"threshold"`` (percentile of the threshold samples' AUMs), ``"alpha"`` (given) or
        ``"fraction"`` (the lowest-AUM fraction of the scored samples).
    epochs
        The epochs counted in this run.
    num_samples, num_threshold, num_scored, num_flagged
        Samples in the run; its threshold samples present in it; the rest (scored); those of the
        scored ones with ``aum <= alpha``.
    threshold
        The recorded threshold metadata (``None`` for a run without threshold samples).
    rule
        The rule that set alpha (``"f1"``, ``"paper"``, ``"replication"``), or ``None`` when
        alpha was given or came from ``fraction``.
    noise_estimate, expected_f1
        Rule ``"f1"`` only: the estimated mislabeled fraction of this run's scored samples (the
        joint fit's posteriors) and the expected F1 of the flagged set (the same for every
        run; ``None`` otherwise).
    capped
        Rule ``"f1"`` only: ``True`` when the combined cut without the ceiling would flag a
        sample above the paper rule's alpha on the same epochs (the ``percentile`` of this
        run's threshold AUMs), so that the ceiling set the cut.
    auto
        With ``epochs="auto"``: the :class:`~aum_replay.auto_epochs.AutoEpochs` decision (the
        memorisation point and the threshold samples' median margin per epoch).
    """

    run_dir: Location
    alpha: float
    alpha_source: AlphaSource
    epochs: list[int]
    num_samples: int
    num_threshold: int
    num_scored: int
    num_flagged: int
    threshold: dict[str, Any] | None
    result: ComputeResult = field(repr=False)
    rule: str | None = None
    noise_estimate: float | None = None
    expected_f1: float | None = None
    capped: bool | None = None
    auto: AutoEpochs | None = field(default=None, repr=False)

    @property
    def epochs_spec(self) -> str:
        """The counted epochs as an epoch spec (``"A:B"`` when contiguous)."""
        return epochs_spec(self.epochs)


@dataclass
class FlagResult:
    """What :func:`flag` found.

    Attributes
    ----------
    runs
        Per-run alpha and counts, in the order the runs were given (``aum_run1`` is ``runs[0]``).
    num_samples
        Distinct sample ids over all runs.
    num_scored
        Samples scored by at least one run (present and not one of its threshold samples).
    num_flagged
        Samples flagged: rule ``"f1"``, the lowest mean AUMs up to ``mean_aum_cut``; the
        others, those at or below alpha in every run that scored them.
    flagged_per_class
        ``{label: count}`` of the flagged samples, by given label, ascending.
    rule
        The rule used (``"f1"``, ``"paper"``, ``"replication"``; ``"alpha"`` or ``"fraction"``
        when the cut was given).
    epochs
        The epoch selection asked for (``"auto"``, a spec, or ``"all"``).
    warnings
        Sentences about a result that looks wrong (e.g. more than half the data flagged), also
        in ``flag_summary.json``; empty when nothing looks off.
    mislabeled, details
        The two tables, as written (see the module docstring).
    mean_aum_cut
        Rule ``"f1"``: the cut on the mean AUM over the runs that scored a sample
        (:func:`aum_replay.rules.combined_mixture_flags`); ``None`` for the other rules or
        when nothing was flagged.
    """

    runs: list[RunFlags]
    num_samples: int
    num_scored: int
    num_flagged: int
    flagged_per_class: dict[int, int]
    percentile: float
    out_dir: Path | None
    mislabeled_path: Path | None
    details_path: Path | None
    summary_path: Path | None
    seconds: float
    mislabeled: pl.DataFrame = field(repr=False)
    details: pl.DataFrame = field(repr=False)
    rule: str = DEFAULT_RULE
    epochs: str = "all"
    warnings: list[str] = field(default_factory=list)
    mean_aum_cut: float | None = None

    @property
    def fraction_flagged(self) -> float:
        """Flagged samples over scored samples (0 when nothing was scored)."""
        return self.num_flagged / self.num_scored if self.num_scored else 0.0

    @property
    def flagged_ids(self) -> list[Any]:
        """Ids of the flagged samples, most suspicious first."""
        return self.mislabeled["sample_id"].to_list()


def flag(
    run_dirs: RunDirLike | Sequence[RunDirLike],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    rule: Rule = DEFAULT_RULE,
    percentile: float = 99.0,
    epochs: str | EpochSelection | None = None,
    alpha: float | None = None,
    fraction: float | None = None,
    duplicates: Literal["first", "all"] = "first",
    device: str = "cpu",
    threads: int | None = 1,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    client: Any = None,
) -> FlagResult:
    """Flag the samples whose AUM is at or below the threshold samples' alpha, over several runs.

    Parameters
    ----------
    run_dirs
        One run directory or several (e.g. threshold set 1 and set 2 of the same seed).
    out_dir
        Where ``mislabeled.csv``, ``aum_details.csv`` and ``flag_summary.json`` go (created if
        missing); ``None`` writes nothing.
    rule
        How each run's alpha comes from its threshold samples: ``"f1"`` (default: the expected-F1
        cut, capped at the paper rule's), ``"paper"`` (SPEC section 5, the ``percentile``) or
        ``"replication"`` (flag when more than 1% of the threshold AUMs are strictly greater).
        Ignored with ``alpha`` or ``fraction``.
    percentile
        Rule ``"paper"``: alpha = this percentile of each run's threshold-sample AUMs; default 99
        (the paper). Rule ``"f1"``: the same alpha caps the mixture's cut.
    epochs
        Epoch selection applied to every run (see :mod:`aum_replay.epochs`), or ``"auto"``: per
        run, the epochs up to the threshold samples' memorisation point
        (:func:`aum_replay.auto_epochs.choose_epochs`; needs threshold samples). Default:
        ``"auto"`` with the default rule, all epochs with ``"paper"``, ``"replication"``,
        ``alpha`` or ``fraction``.
    alpha
        A fixed cut-off for every run instead of the threshold samples' (the recorded threshold
        samples are still never flagged). Needed, or ``fraction``, for runs without threshold
        samples.
    fraction
        In ``[0, 1]``: in each run, flag the lowest-AUM ``fraction`` of the scored samples.
        Exclusive with ``alpha``.
    duplicates, device, threads, workers, client
        Passed to :func:`aum_replay.compute` (``client``: a ``dask.distributed.Client``).
    progress
        Called as ``progress(rows_done, rows_total)`` over all runs.

    Returns
    -------
    FlagResult

    Raises
    ------
    MissingThresholdError
        A run has no threshold samples and neither ``alpha`` nor ``fraction`` is given.
    AumReplayError
        A bad run directory, option or threshold description. No output file is changed.
    """
    started = time.perf_counter()
    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike, URL)) else list(run_dirs)
    if not dirs:
        raise InputError("no run directory given")
    if alpha is not None and fraction is not None:
        raise InputError("give alpha or fraction, not both")
    if alpha is not None and np.isnan(alpha):
        raise InputError("alpha must be a number, not NaN")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction must be in [0, 1], not {fraction}")
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile must be in [0, 100], not {percentile}")
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    auto = isinstance(epochs, str) and epochs.strip() == "auto"
    if isinstance(epochs, EpochSelection):
        selection = epochs
    else:
        selection = parse_epochs(None if auto else epochs)
    outputs = None
    if out_dir is not None:  # what is in the way fails now, before any replay
        outputs = OutputSet(out_dir, (MISLABELED_NAME, DETAILS_NAME, SUMMARY_NAME)).check()

    runs = [open_run(d, selection) for d in dirs]
    for i, run in enumerate(runs):
        for other in runs[:i]:
            if location.same(run.run_dir, other.run_dir):
                raise InputError(
                    f"{run.run_dir} is given twice (as {other.run_dir}): each run counts once"
                )
    bare = [str(r.run_dir) for r in runs if not r.threshold]
    if bare and alpha is None and fraction is None:
        raise MissingThresholdError(
            f"no threshold samples recorded in {', '.join(bare)}; give --alpha VALUE or "
            "--fraction F to choose the cut-off (or record with ThresholdSampleDataset)"
        )
    if bare and auto:
        raise InputError(
            f"--epochs auto reads the threshold samples' margins, and {', '.join(bare)} has none; "
            "give an epoch selection instead"
        )
    if epochs is None and rule == DEFAULT_RULE and alpha is None and fraction is None:
        auto = DEFAULT_EPOCHS == "auto"
    decisions: list[AutoEpochs | None] = [None] * len(runs)
    if auto:
        for i, run in enumerate(runs):
            decision = _auto_epochs(run, duplicates, device, threads, workers, client)
            decisions[i] = decision
            runs[i] = open_run(run.run_dir, parse_epochs(",".join(map(str, decision.epochs))))
    kinds = {r.id_kind for r in runs}
    if len(kinds) > 1:
        raise InputError(
            "the runs mix integer and string sample ids: "
            + ", ".join(f"{r.run_dir} ({r.id_kind})" for r in runs)
        )
    id_kind = kinds.pop()
    total_rows = sum(r.num_rows for r in runs)
    done_before = 0

    results: list[ComputeResult] = []
    for run in runs:
        report = None
        if progress is not None:
            offset = done_before

            def report(done: int, _total: int, offset: int = offset) -> None:
                progress(offset + done, total_rows)

        results.append(
            compute(
                run,  # validated above: not read again
                None,
                full=False,
                duplicates=duplicates,
                device=device,
                threads=threads,
                workers=workers,
                progress=report,
                client=client,
            )
        )
        done_before += run.num_rows

    universe = np.unique(np.concatenate([_ids(r.aum, id_kind) for r in results]))
    n, num_runs = len(universe), len(results)
    aum = np.full((num_runs, n), np.nan)
    present = np.zeros((num_runs, n), dtype=bool)
    is_thr = np.zeros((num_runs, n), dtype=bool)
    labels = np.full((num_runs, n), -1, dtype=np.int64)
    run_flags: list[RunFlags] = []
    flags = np.zeros((num_runs, n), dtype=bool)
    for r, result in enumerate(results):
        index = np.searchsorted(universe, _ids(result.aum, id_kind))
        aum[r, index] = result.aum["aum"].to_numpy()
        present[r, index] = True
        labels[r, index] = result.aum["target"].to_numpy()
        if result.threshold:
            is_thr[r] = _threshold_mask(universe, result.threshold, id_kind, result.run_dir)
            is_thr[r] &= present[r]
    combined: CombinedCut | None = None
    if alpha is None and fraction is None and rule == "f1":
        for r, result in enumerate(results):  # the fit's own errors, named by run
            for what, mask in (("scored", present[r] & ~is_thr[r]), ("threshold", is_thr[r])):
                if not np.isfinite(aum[r, mask]).any():
                    raise InputError(f"{result.run_dir}: no {what} sample has a finite AUM")
        # one fit for all runs (shared weights), one cut of the combined ranking (README: why)
        combined = combined_mixture_flags(aum, present & ~is_thr, is_thr, percentile=percentile)
    for r, result in enumerate(results):
        meta = result.threshold
        scored = present[r] & ~is_thr[r]
        source: AlphaSource
        used: str | None = None
        noise = expected = None
        capped: bool | None = None
        if alpha is not None:
            cut, source = float(alpha), "alpha"
        elif fraction is not None:
            cut, source = fraction_alpha(aum[r], fraction, eligible=scored), "fraction"
        else:
            used, source = rule, "threshold"
            try:
                if rule == "paper":
                    cut = threshold_alpha(aum[r, is_thr[r]], percentile)
                elif rule == "replication":
                    cut = replication_alpha(aum[r, is_thr[r]])
                else:
                    # capped at the paper rule's cut on the same epochs (README: why)
                    assert combined is not None
                    noise, capped = combined.runs[r].noise, combined.capped[r]
                    expected = combined.expected_f1
            except InputError as exc:
                raise InputError(f"{result.run_dir}: {exc}") from None
        if combined is not None:
            # the combined cut's flags in this run; alpha: the highest AUM among them
            flags[r] = combined.flagged & scored
            cut = float(aum[r, flags[r]].max()) if flags[r].any() else float("-inf")
        else:
            flags[r] = flag_run(aum[r], is_thr[r], cut) & present[r]
        run_flags.append(
            RunFlags(
                run_dir=result.run_dir,
                alpha=cut,
                alpha_source=source,
                epochs=result.epochs,
                num_samples=result.num_samples,
                num_threshold=int(is_thr[r].sum()),
                num_scored=int(scored.sum()),
                num_flagged=int(flags[r].sum()),
                threshold=meta,
                result=result,
                rule=used,
                noise_estimate=noise,
                expected_f1=expected,
                capped=capped,
                auto=decisions[r],
            )
        )

    scored_all = present & ~is_thr
    flagged = combine_flags(flags, scored_all)
    scored_aum = np.where(scored_all, aum, np.nan)
    counts = scored_all.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # NaN where no run scored the sample, or where a scoring run's AUM is NaN
        mean_aum = np.where(scored_all, aum, 0.0).sum(axis=0) / counts
    label = _given_label(labels, scored_all)

    names = [f"run{r + 1}" for r in range(num_runs)]
    details = pl.DataFrame(
        {
            "sample_id": universe,
            "label": pl.Series(label, dtype=pl.Int64).set(pl.Series(label < 0), None),
            **{f"aum_{nm}": aum[r] for r, nm in enumerate(names)},
            **{f"threshold_{nm}": is_thr[r] for r, nm in enumerate(names)},
            **{f"alpha_{nm}": np.full(n, run_flags[r].alpha) for r, nm in enumerate(names)},
            "aum_mean": mean_aum,
            "flagged": flagged,
        }
    )
    picked = np.flatnonzero(flagged)
    order = picked[np.lexsort((np.arange(len(picked)), mean_aum[picked]))]
    mislabeled = pl.DataFrame(
        {
            "sample_id": universe[order],
            **{f"aum_{nm}": scored_aum[r, order] for r, nm in enumerate(names)},
            "aum_mean": mean_aum[order],
            "label": details["label"].gather(order),
        }
    )
    per_class: dict[int, int] = {}
    for value in mislabeled["label"].drop_nulls().to_list():
        per_class[int(value)] = per_class.get(int(value), 0) + 1
    used_rule = "alpha" if alpha is not None else "fraction" if fraction is not None else rule
    epochs_asked = "auto" if auto else selection.spec
    num_scored = int(scored_all.any(axis=0).sum())
    warnings = _warnings(int(flagged.sum()), num_scored, run_flags, used_rule)
    mean_cut = combined.alpha if combined is not None and np.isfinite(combined.alpha) else None

    out_path = mislabeled_path = details_path = summary_path = None
    if outputs is not None:
        columns = [f"aum_{nm}" for nm in names]
        detail_cols = (
            ["sample_id", "label"]
            + [f"{kind}_{nm}" for nm in names for kind in ("aum", "threshold", "alpha")]
            + ["aum_mean", "flagged"]
        )
        summary = {
            "rule": used_rule,
            "percentile": percentile,
            "epochs": epochs_asked,
            "num_samples": n,
            "num_scored": num_scored,
            "num_flagged": int(flagged.sum()),
            "mean_aum_cut": mean_cut,
            "warnings": warnings,
            "runs": [
                {
                    "name": nm,
                    "run_dir": str(location.absolute(rf.run_dir)),
                    "alpha": rf.alpha if np.isfinite(rf.alpha) else None,
                    "alpha_source": rf.alpha_source,
                    "rule": rf.rule,
                    "epochs": rf.epochs_spec,
                    "memorisation_epoch": rf.auto.turn if rf.auto else None,
                    "noise_estimate": rf.noise_estimate,
                    "expected_f1": rf.expected_f1,
                    "capped_at_paper_cut": rf.capped,
                    "num_threshold": rf.num_threshold,
                    "num_flagged": rf.num_flagged,
                }
                for nm, rf in zip(names, run_flags, strict=True)
            ],
        }
        with outputs, writing(outputs.out_dir, "the flag results"):
            outputs.csv(MISLABELED_NAME, ("sample_id", *columns, "aum_mean", "label")).write(
                mislabeled.to_dict()
            )
            outputs.csv(DETAILS_NAME, tuple(detail_cols)).write(details.to_dict())
            outputs.open(SUMMARY_NAME).write((json.dumps(summary, indent=2) + "\n").encode())
            mislabeled_path, details_path, summary_path = outputs.commit()
        out_path = outputs.out_dir

    return FlagResult(
        runs=run_flags,
        num_samples=n,
        num_scored=int(scored_all.any(axis=0).sum()),
        num_flagged=int(flagged.sum()),
        flagged_per_class=dict(sorted(per_class.items())),
        percentile=float(percentile),
        out_dir=out_path,
        mislabeled_path=mislabeled_path,
        details_path=details_path,
        summary_path=summary_path,
        seconds=time.perf_counter() - started,
        mislabeled=mislabeled,
        details=details,
        rule=used_rule,
        epochs=epochs_asked,
        warnings=warnings,
        mean_aum_cut=mean_cut,
    )


def _auto_epochs(
    run: Any,
    duplicates: Literal["first", "all"],
    device: str,
    threads: int | None,
    workers: int,
    client: Any,
) -> AutoEpochs:
    """The auto epoch decision of one run, from its threshold samples' per-epoch margins."""
    epochs, ids, margins = epoch_margins(
        run, duplicates=duplicates, device=device, threads=threads, workers=workers, client=client
    )
    mask = _threshold_mask(ids, run.threshold, run.id_kind, run.run_dir)
    return choose_epochs(epochs, margins[:, mask], stop="climb")


def _warnings(num_flagged: int, num_scored: int, runs: list[RunFlags], rule: str) -> list[str]:
    """Plain sentences about results that look wrong."""
    out = []
    if num_scored and num_flagged > num_scored / 2:
        out.append(
            f"{num_flagged:,} of {num_scored:,} samples flagged: more than half the data cannot "
            "be mislabeled with labels a network learns from; the cut-off looks wrong. Usually "
            "the network memorised the threshold samples (their AUMs rose to those of clean "
            "samples: try --epochs auto or fewer epochs), or the threshold samples are too large "
            "a share of the data (few classes: record with a smaller num_threshold)"
            + (
                "; the default rule (--rule f1) estimates the fraction instead"
                if rule in ("paper", "replication")
                else ""
            )
        )
    for i, run in enumerate(runs, start=1):
        if rule not in ("paper", "replication"):
            break  # the default rule was measured to place the cut well at 20% (digits4)
        if run.threshold and run.num_samples and run.num_threshold > run.num_samples / 10:
            out.append(
                f"run{i}: {run.num_threshold:,} threshold samples are "
                f"{100 * run.num_threshold / run.num_samples:.0f}% of its {run.num_samples:,} "
                "samples (few classes): they crowd the real classes and lift this rule's "
                "cut-off; the default rule (--rule f1) is measured to hold there"
            )
    return out


def _ids(table: pl.DataFrame, id_kind: str) -> np.ndarray:
    ids = table["sample_id"].to_numpy()
    return ids.astype(np.str_) if id_kind == "str" else ids.astype(np.int64)


def _threshold_mask(
    universe: np.ndarray, meta: dict[str, Any], id_kind: str, run_dir: Location
) -> np.ndarray:
    """Boolean mask (N,) of the recorded threshold ids in ``universe``."""
    raw = meta.get("sample_ids")
    if not isinstance(raw, list):
        raise InputError(f"{run_dir}: threshold metadata has no list of sample_ids")
    try:
        ids = np.asarray(raw, dtype=np.str_ if id_kind == "str" else np.int64)
    except (TypeError, ValueError):
        raise InputError(
            f"{run_dir}: threshold sample ids {raw[:3]}... are not {id_kind} ids like the run's"
        ) from None
    mask = np.isin(universe, ids)
    if len(ids) and not mask.any():
        raise InputError(
            f"{run_dir}: none of the {len(ids)} recorded threshold sample ids appear in the "
            "selected epochs"
        )
    return mask


def _given_label(labels: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Label (N,) of each sample from the last run that scored it; -1 where none did."""
    out = np.full(labels.shape[1], -1, dtype=np.int64)
    for r in range(labels.shape[0]):
        out = np.where(scored[r], labels[r], out)
    return out
