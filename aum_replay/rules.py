"""Cut-offs learned from the threshold samples: the rules behind ``aum-replay flag --rule``.

Each function takes one run's AUMs split in two: the threshold samples' (mislabeled by
construction, so a sample of what mislabeled samples look like in this run) and the scored
samples' (a mixture of clean and mislabeled ones). Each returns ``alpha``: a scored sample is
flagged when its AUM ``<= alpha``, as in SPEC section 5. numpy only.

``paper``
    alpha = the 99th percentile of the threshold AUMs (:func:`aum_replay.threshold.threshold_alpha`).
``replication``
    The official replication code's test: flag a sample when more than 1% of the threshold AUMs
    are strictly greater than its AUM (:func:`replication_alpha`).
``f1`` (the default)
    Estimate the mislabeled fraction ``pi`` of the scored samples from the two distributions, then
    place the cut where the expected F1 is largest (:func:`expected_f1_cut`). Why this works and
    how it was chosen: see the README's "How flag chooses the cut-off".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aum_replay.errors import InputError

__all__ = ["estimate_noise_fraction", "expected_f1_cut", "replication_alpha"]


def _finite(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if len(array) == 0:
        raise InputError(f"no {what} has a finite AUM")
    return array


def replication_alpha(threshold_aums: Any, share: float = 0.01) -> float:
    """alpha of the replication code's rule: flag when more than ``share`` of them are greater.

    A sample with AUM ``a`` is flagged when ``mean(threshold > a) > share``. With the threshold
    AUMs sorted descending ``t_1 >= t_2 >= ...`` and ``j = floor(share * m) + 1``, that is
    ``a < t_j``; the returned alpha is the float just below ``t_j``, so that ``aum <= alpha``
    flags exactly those samples.
    """
    values = np.sort(_finite(threshold_aums, "threshold sample"))[::-1]
    j = int(np.floor(share * len(values))) + 1
    if j > len(values):
        return float("-inf")
    return float(np.nextafter(values[j - 1], -np.inf))


def estimate_noise_fraction(scored_aums: Any, threshold_aums: Any) -> float:
    """The mislabeled fraction ``pi`` of the scored samples, anchored by the threshold samples.

    With F_S and F_T the empirical CDFs of the scored and the threshold AUMs, if the mislabeled
    scored samples are distributed like the threshold samples then for every t::

        F_S(t) = pi * F_T(t) + (1 - pi) * F_clean(t) >= pi * F_T(t)

    so ``F_S(t) / F_T(t)`` bounds pi from above, tightly where clean samples are rare. The
    estimate is the smallest bound over t at the threshold samples' own quantiles from the median
    up (below the median F_T rests on too few samples to divide by), clipped to ``[0, 1]``.
    """
    s = np.sort(_finite(scored_aums, "scored sample"))
    t = np.sort(_finite(threshold_aums, "threshold sample"))
    m = len(t)
    ranks = np.arange((m + 1) // 2, m + 1)  # F_T(t_(k)) = k / m for k >= m/2
    points = t[ranks - 1]
    below = np.searchsorted(s, points, side="right") / len(s)
    bounds = below / (ranks / m)
    return float(np.clip(bounds.min(), 0.0, 1.0))


def expected_f1_cut(scored_aums: Any, threshold_aums: Any) -> tuple[float, float, float]:
    """The cut that maximises the expected F1, with the mislabeled fraction estimated.

    For a cut t, the expected true positives are ``n * min(pi * F_T(t), F_S(t))`` (the mislabeled
    scored samples at or below t, if they are distributed like the threshold samples), the
    flagged ``n * F_S(t)`` and the mislabeled ``n * pi``, so the expected F1 is::

        2 * min(pi * F_T(t), F_S(t)) / (F_S(t) + pi)

    maximised over t among the scored AUMs.

    Returns
    -------
    alpha, pi, f1 : float
        The cut (``-inf`` when pi is 0), the estimated mislabeled fraction and the expected F1
        at the cut.
    """
    s = np.sort(_finite(scored_aums, "scored sample"))
    t = np.sort(_finite(threshold_aums, "threshold sample"))
    pi = estimate_noise_fraction(s, t)
    if pi <= 0.0:
        return float("-inf"), 0.0, 0.0
    n = len(s)
    f_s = np.searchsorted(s, s, side="right") / n
    f_t = np.searchsorted(t, s, side="right") / len(t)
    f1 = 2.0 * np.minimum(pi * f_t, f_s) / (f_s + pi)
    best = int(np.argmax(f1))
    return float(s[best]), pi, float(f1[best])
