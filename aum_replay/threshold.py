"""Threshold samples (SPEC section 5): the flagging rule.

The cut-off between a hard sample and a mislabeled one is learned from samples that are mislabeled
on purpose. :class:`~aum_replay.threshold_data.ThresholdSampleDataset` (the training-time wrapper,
in its own module because it needs torch) picks ``m = N // (c + 1)`` samples uniformly at random
(a seeded permutation), gives them the extra label ``c`` and records which ones they are; the model
then has ``c + 1`` outputs. After training, with ``a`` the AUM of each sample::

    alpha   = percentile(a[threshold samples], 99)      (numpy's linear interpolation)
    flagged = a <= alpha, for samples that are not threshold samples

Threshold samples are never flagged, so a second run with a disjoint threshold set (set 2: the next
slice of the same permutation) scores them; over several runs a sample is flagged when it is flagged
in every run where it was scored (present and not a threshold sample). The rule is the pure
functions below; :mod:`aum_replay.flag` applies them to recorded runs.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from aum_replay.errors import InputError

__all__ = [
    "THRESHOLD_SHARE_LIMIT",
    "ThresholdShareWarning",
    "combine_flags",
    "flag_run",
    "fraction_alpha",
    "threshold_alpha",
    "warn_threshold_share",
]


class ThresholdShareWarning(UserWarning):
    """The threshold samples are a large share of the data (few classes)."""


#: above this share of the data, recording warns (c < 9 classes with the default N // (c + 1))
THRESHOLD_SHARE_LIMIT = 0.1


def warn_threshold_share(num_threshold: int, num_samples: int, num_classes: int) -> None:
    """Warn when the threshold samples are more than a tenth of the data.

    With ``m = N // (c + 1)`` that is every run with fewer than 9 classes (20% at c = 4): the extra
    class is then as large as a real one, takes a fifth of each real class's samples away and
    lowers every margin. The default rule of ``aum-replay flag`` still places the cut well there
    (README, detection benchmark, ``digits4``); the paper's 99th percentile flags too much.
    Called by :class:`~aum_replay.threshold_data.ThresholdSampleDataset` when it is built.
    """
    if num_samples and num_threshold > THRESHOLD_SHARE_LIMIT * num_samples:
        warnings.warn(
            f"{num_threshold} threshold samples are {100 * num_threshold / num_samples:.0f}% of "
            f"the {num_samples} samples ({num_classes} classes): a threshold class this large "
            "crowds the real ones and lowers every margin. Flag with the default rule (not "
            "--rule paper), or pass a smaller num_threshold (e.g. N // 10); see the README, "
            "'Few classes'",
            ThresholdShareWarning,
            stacklevel=3,
        )


def threshold_alpha(threshold_aums: Any, percentile: float = 99.0) -> float:
    """alpha: the ``percentile``-th percentile of the threshold samples' AUMs.

    Parameters
    ----------
    threshold_aums
        AUMs of the threshold samples, array-like of shape (m,). Non-finite values are ignored.
    percentile
        In ``[0, 100]``, default 99 (the paper). Numpy's default linear interpolation.

    Raises
    ------
    InputError
        If the percentile is out of range or no threshold AUM is finite.
    """
    if not 0.0 <= percentile <= 100.0 or math.isnan(percentile):
        raise InputError(f"percentile must be in [0, 100], not {percentile}")
    values = np.asarray(threshold_aums, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise InputError("no threshold sample has a finite AUM; alpha is undefined")
    return float(np.percentile(values, percentile))


def fraction_alpha(aums: Any, fraction: float, *, eligible: Any = None) -> float:
    """The alpha that flags the lowest ``fraction`` of the eligible samples.

    With ``k = round(fraction * n)`` (n eligible samples with a finite AUM), alpha is the k-th
    smallest AUM, so ``aum <= alpha`` flags those k (more only on exact ties); ``-inf`` when k = 0.

    Parameters
    ----------
    aums
        AUMs, shape (N,).
    fraction
        In ``[0, 1]``.
    eligible
        Boolean mask (N,) of the samples that may be flagged; default all.
    """
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise InputError(f"fraction must be in [0, 1], not {fraction}")
    values = np.asarray(aums, dtype=np.float64)
    if eligible is not None:
        values = values[np.asarray(eligible, dtype=bool)]
    values = np.sort(values[np.isfinite(values)])
    k = round(fraction * len(values))
    return float(values[k - 1]) if k > 0 else float("-inf")


def flag_run(aums: Any, is_threshold: Any, alpha: float) -> np.ndarray:
    """Flags of one run: ``aum <= alpha`` and not a threshold sample.

    Parameters
    ----------
    aums
        AUMs, shape (N,); NaN is never flagged.
    is_threshold
        Boolean mask (N,) of this run's threshold samples.
    alpha
        The cut-off.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape (N,).
    """
    aums = np.asarray(aums, dtype=np.float64)
    is_threshold = np.asarray(is_threshold, dtype=bool)
    if aums.shape != is_threshold.shape:
        raise InputError(f"aums {aums.shape} and is_threshold {is_threshold.shape} differ")
    return (aums <= alpha) & ~is_threshold


def combine_flags(flags: Any, scored: Any) -> np.ndarray:
    """Combine the flags of R runs: flagged in every run that scored the sample, and scored once.

    Parameters
    ----------
    flags
        Boolean array of shape (R, N): flagged in run r.
    scored
        Boolean array of shape (R, N): sample present in run r and not one of its threshold
        samples.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape (N,).
    """
    flags = np.atleast_2d(np.asarray(flags, dtype=bool))
    scored = np.atleast_2d(np.asarray(scored, dtype=bool))
    if flags.shape != scored.shape:
        raise InputError(f"flags {flags.shape} and scored {scored.shape} differ")
    return scored.any(axis=0) & (flags | ~scored).all(axis=0)


def __getattr__(name: str) -> Any:
    # The dataset wrapper used to live here; it moved so that the rule never imports torch.
    if name == "ThresholdSampleDataset":
        from aum_replay.threshold_data import ThresholdSampleDataset

        return ThresholdSampleDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
