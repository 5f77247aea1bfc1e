"""Cut-offs learned from the threshold samples: the rules behind ``aum-replay flag --rule``.

Each function takes one run's AUMs split in two: the threshold samples' (mislabeled by
construction, so a sample of what mislabeled samples look like in this run) and the scored
samples' (a mixture of clean and mislabeled ones). Each returns ``alpha``: a scored sample is
flagged when its AUM ``<= alpha``, as in SPEC section 5. numpy only.

``paper``
    alpha = the 99th percentile of the threshold AUMs
    (:func:`aum_replay.threshold.threshold_alpha`).
``replication``
    The official replication code's test: flag a sample when more than 1% of the threshold AUMs
    are strictly greater than its AUM (:func:`replication_alpha`).
``f1`` (the default)
    Fit a two-component Gaussian mixture, with a uniform background component for the tails, to
    the scored samples' AUMs by EM, the mislabeled component started at the threshold samples'
    median, and place the cut where the expected F1 under the fitted posteriors is largest,
    never above the paper rule's alpha on the same epochs. ``flag`` fits all its runs at once
    (:func:`joint_mixture_cuts`): the runs share the mixture's weights (the same data set, so
    the same mislabeled share), and the mislabeled component's spread is pooled with the
    threshold samples' when it is wider than theirs; it then places one cut on the runs'
    combined ranking (:func:`combined_mixture_flags`: mean AUM, each sample's lowest posterior
    over the runs) instead of one per run. :func:`capped_mixture_cut` is the same rule
    for one run without the pooling (the default before). Why this one and not the
    threshold-anchored estimate (:func:`expected_f1_cut`, kept for comparison): the README's
    "How flag chooses the cut-off".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from aum_replay.errors import InputError
from aum_replay.threshold import threshold_alpha

__all__ = [
    "CappedCut",
    "CombinedCut",
    "capped_mixture_cut",
    "combined_mixture_flags",
    "estimate_noise_fraction",
    "expected_f1_cut",
    "joint_mixture_cuts",
    "mixture_f1_cut",
    "replication_alpha",
]


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


def mixture_f1_cut(
    scored_aums: Any,
    threshold_aums: Any,
    *,
    cap: float | None = None,
    iterations: int = 500,
    background: bool = True,
) -> tuple[float, float, float]:
    """The default cut: a two-component mixture of the scored AUMs, cut at the best expected F1.

    EM fits ``pi * N(mu_1, s_1) + (1 - pi - b) * N(mu_2, s_2) + b * U(min, max)`` to the scored
    samples' AUMs, started with ``mu_1`` at the threshold samples' median (where mislabeled
    samples are), ``mu_2`` at the median of the scored AUMs above it, both spreads at half the
    scored spread, ``pi = 0.3`` and ``b = 0.01``. The uniform background over the AUMs' range
    (``background=False``: none, the rule before) takes what neither Gaussian describes: a few
    extreme AUMs (one at -17 among AUMs of -4 to 4 on the memorising recipe) made the two-Gaussian
    fit spend its lower component on them, and skewed tails (half-learned flips under
    class-dependent noise) stretched the Gaussians. With ``p_i`` the posterior that sample i is
    mislabeled (the lower Gaussian's, plus its share of the background's: the two Gaussians'
    ratio there), flagging the k lowest AUMs has expected F1
    ``2 * sum_{j<=k} p_(j) / (k + sum_i p_i)``; the cut is the AUM of the k that maximises it,
    among the scored AUMs ``<= cap`` when a cap is given. Unlike :func:`expected_f1_cut` this
    does not assume that the mislabeled samples' AUMs are distributed like the threshold
    samples' (they are not under class-dependent noise, where the network half-learns the
    flip).

    ``cap`` is how ``flag``'s default uses it: the paper rule's alpha (the 99th percentile of the
    threshold AUMs) on the same epochs. A sample above it is above 99% of the samples known to
    be mislabeled; the mixture puts its cut there only when the clean AUMs' left tail (hard
    clean samples) is heavier than a Gaussian's and the lower component swallows it.

    Returns
    -------
    alpha, pi, f1 : float
        The cut (``-inf`` when nothing is flagged), the mislabeled fraction (the sum of the
        posteriors over the scored samples) and the expected F1 at the cut.
    """
    alpha, pi, f1, _ = _mixture_cut(scored_aums, threshold_aums, cap, iterations, background)
    return alpha, pi, f1


class CappedCut(NamedTuple):
    """One run's mixture cut (:func:`capped_mixture_cut`, :func:`joint_mixture_cuts`)."""

    alpha: float
    """The cut: scored samples with ``aum <= alpha`` are flagged (``-inf``: none)."""
    noise: float
    """The mixture's mislabeled fraction of the scored samples."""
    expected_f1: float
    """The mixture's expected F1 at ``alpha``."""
    capped: bool
    """Whether the paper rule's alpha was lower than the mixture's cut and so set ``alpha``."""


def capped_mixture_cut(
    scored_aums: Any,
    threshold_aums: Any,
    *,
    percentile: float = 99.0,
    iterations: int = 500,
    background: bool = True,
) -> CappedCut:
    """:func:`mixture_f1_cut` capped at the paper's alpha: one run's cut, ``flag``'s default
    before the joint fit and the combined cut (:func:`combined_mixture_flags`).

    The cap is the paper rule's alpha, :func:`aum_replay.threshold.threshold_alpha` of the
    threshold AUMs at ``percentile`` (SPEC section 5), on the same AUMs (the same epochs): a
    sample above it is above 99% of the samples known to be mislabeled. The cap binds when the
    clean AUMs' left tail (hard clean samples) is heavier than a Gaussian's and the mixture's
    lower component swallows part of it, so the share is over-estimated (README "How flag
    chooses the cut-off").
    """
    cap = threshold_alpha(threshold_aums, percentile)
    return _mixture_cut(scored_aums, threshold_aums, cap, iterations, background)


def _mixture_cut(
    scored_aums: Any, threshold_aums: Any, cap: float | None, iterations: int, background: bool
) -> CappedCut:
    s = np.sort(_finite(scored_aums, "scored sample"))
    t = _finite(threshold_aums, "threshold sample")
    if len(s) < 2 or s[0] == s[-1]:
        return CappedCut(float("-inf"), 0.0, 0.0, False)
    start = _median_start(s, float(np.median(t)))
    return _cut(s, _fit(s, *start, iterations, background), cap)


def _expected_f1(ranked: np.ndarray, total: float) -> np.ndarray:
    """The expected F1 of flagging the first k samples, for every k: ``ranked`` their
    mislabeled probabilities in flagging order, ``total`` the sum over every sample."""
    return 2.0 * np.cumsum(ranked) / (np.arange(1, len(ranked) + 1) + total)


def _cut(s: np.ndarray, p: np.ndarray, cap: float | None) -> CappedCut:
    """The best expected-F1 cut of the sorted AUMs ``s`` with posteriors ``p``, at most ``cap``."""
    f1 = _expected_f1(p, p.sum())
    best = int(np.argmax(f1))
    if cap is not None:
        allowed = int(np.searchsorted(s, cap, side="right"))
        if best >= allowed:  # the cap binds
            if allowed == 0:
                return CappedCut(float("-inf"), float(p.mean()), 0.0, True)
            best = int(np.argmax(f1[:allowed]))
            return CappedCut(float(s[best]), float(p.mean()), float(f1[best]), True)
    return CappedCut(float(s[best]), float(p.mean()), float(f1[best]), False)


def _median_start(s: np.ndarray, start: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mixture_f1_cut's start: the lower component at ``start``, spreads half the data's."""
    upper = s[s > start]
    mu = np.array([start, float(np.median(upper)) if len(upper) else float(s[-1])])
    return mu, np.full(2, float(s.std()) / 2.0), np.array([0.3, 0.7])


BACKGROUND_START = 0.01
"""The background component's starting weight (EM estimates it; the fits on the benchmark's
tuning runs are the same from 0.001 to 0.05)."""


def _fit(
    s: np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    weight: np.ndarray,
    iterations: int,
    background: bool = True,
) -> np.ndarray:
    """EM for a two-Gaussian mixture of the sorted AUMs ``s``; the mislabeled posteriors.

    With ``background`` a third component, uniform over the range of ``s``, takes the samples
    that neither Gaussian describes (Banfield & Raftery's noise component): the few extreme
    AUMs and the skewed tails, which otherwise stretch a Gaussian over them. Each sample's
    background posterior is then shared between the two groups as the Gaussians' posteriors
    are, so that a sample far below the lower bump still counts as mislabeled.
    """
    floor = 1e-6 * float(s.std())
    span = float(s[-1] - s[0])
    if background:
        weight = np.append(weight * (1.0 - BACKGROUND_START), BACKGROUND_START)
    previous = -np.inf
    log = np.empty((len(s), len(weight)))
    with np.errstate(divide="ignore"):  # a weight that reaches 0 drops its component
        for _ in range(iterations):
            post, total = _e_step(log, s, weight, mu, sd, span)
            mass = post.sum(axis=0)
            if (mass[:2] <= 0).any():
                break
            weight = mass / len(s)
            mu, sd = _m_step(s, post, mass, floor)
            likelihood = float(total.sum())
            if likelihood - previous < 1e-9 * abs(likelihood):
                break
            previous = likelihood
    return _mislabeled(log, post, mu)


def _e_step(
    log: np.ndarray,
    s: np.ndarray,
    weight: np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    span: float,
) -> tuple[np.ndarray, np.ndarray]:
    """EM's E-step: ``log`` (n, 2 or 3) filled with each component's log weight and density
    (the third, when there, the uniform background over ``span``); returns the posteriors
    (n, k) and each sample's log likelihood (n,)."""
    log[:, :2] = (
        np.log(weight[:2]) - np.log(sd) - 0.5 * ((s[:, None] - mu) / sd) ** 2
        - 0.5 * np.log(2.0 * np.pi)
    )  # fmt: skip
    if log.shape[1] > 2:
        log[:, 2] = np.log(weight[2]) - np.log(span)
    top = log.max(axis=1, keepdims=True)
    total = top[:, 0] + np.log(np.exp(log - top).sum(axis=1))
    return np.exp(log - total[:, None]), total


def _m_step(
    s: np.ndarray,
    post: np.ndarray,
    mass: np.ndarray,
    floor: float,
    prior: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """EM's M-step for the two Gaussians: their means and spreads (plus ``floor``). ``prior``
    ``(m, v_T)``: the lower Gaussian's variance, when above ``v_T``, pooled with ``m``
    pseudo-samples at ``v_T`` (:func:`joint_mixture_cuts`)."""
    mu = (post[:, :2] * s[:, None]).sum(axis=0) / mass[:2]
    squares = (post[:, :2] * (s[:, None] - mu) ** 2).sum(axis=0)
    var = squares / mass[:2]
    if prior is not None:
        low = int(np.argmin(mu))
        m, v_t = prior
        if var[low] > v_t:  # wider than the threshold samples: pooled with theirs
            var[low] = (squares[low] + m * v_t) / (mass[low] + m)
    return mu, np.sqrt(var) + floor


def _mislabeled(log: np.ndarray, post: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The fitted posteriors that a sample is mislabeled: the lower Gaussian's, plus (with a
    background) its share of the background's."""
    low = int(np.argmin(mu))
    p = post[:, low]
    if post.shape[1] > 2:
        # the lower Gaussian's share of each sample's background posterior: a logistic of the
        # two Gaussians' log densities (no underflow far out in either tail)
        share = 1.0 / (1.0 + np.exp(np.clip(log[:, 1 - low] - log[:, low], -700.0, 700.0)))
        p = p + post[:, 2] * share
    return np.asarray(p)


def joint_mixture_cuts(
    scored_aums: Sequence[Any],
    threshold_aums: Sequence[Any],
    *,
    percentile: float = 99.0,
    iterations: int = 500,
    pool_spread: bool = True,
) -> list[CappedCut]:
    """A cut per run of several runs of one data set, fitted together (the joint fit that
    :func:`combined_mixture_flags`, ``flag``'s default, cuts once instead).

    One EM for all runs: each run r has its own two Gaussians ``N(mu_r1, s_r1)``,
    ``N(mu_r2, s_r2)`` and uniform background over its AUMs' range, and the runs share the three
    weights. The runs score the same samples, less a different threshold set each, so their
    mislabeled shares are the same up to sampling: one share estimated from all their AUMs
    varies less from run to run than one per run (on the memorising recipe's overlapping bumps
    the per-run estimates ranged from 19% to 56% for a true 30%).

    ``pool_spread``: the mislabeled (lower) Gaussian's variance is, when wider than the
    threshold samples' variance ``v_T``, their pooled variance
    ``(sum_i p_i (a_i - mu)^2 + m v_T) / (sum_i p_i + m)``, the ``m`` threshold AUMs each
    about their own mean (the maximum a posteriori estimate under a conjugate scaled
    inverse-chi-squared prior of ``m`` pseudo-samples at ``v_T``). The threshold samples are
    mislabeled by construction: their location is their own (the extra class's bias), but their
    spread is evidence of how wide a mislabeled bump is. It is applied one way only because the
    failure it prevents is one way: with a small share the lower Gaussian widens to swallow the
    clean AUMs' left tail (uniform 5% noise: a fitted spread of 1.7-2.3 against 0.9 for the
    threshold samples and 1.4 for the flipped ones) and over-estimates the share; a mislabeled
    bump narrower than the threshold samples' (class-dependent noise) is left as fitted.

    Each run's cut is then :func:`capped_mixture_cut`'s: the best expected F1 under that run's
    posteriors, never above the paper rule's alpha (``percentile``) of its threshold AUMs. A run
    whose scored AUMs are fewer than 2 or all equal gets ``-inf`` and takes no part in the fit.
    With one run and ``pool_spread=False`` this is :func:`capped_mixture_cut` exactly.
    """
    cuts: list[CappedCut] = [CappedCut(float("-inf"), 0.0, 0.0, False)] * len(scored_aums)
    for r, s, p, cap in _joint_posteriors(
        scored_aums, threshold_aums, percentile, iterations, pool_spread
    ):
        cuts[r] = _cut(s, p, cap)
    return cuts


def _joint_posteriors(
    scored_aums: Sequence[Any],
    threshold_aums: Sequence[Any],
    percentile: float,
    iterations: int,
    pool_spread: bool,
) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """The joint fit: (run, its sorted finite scored AUMs, their posteriors, its paper alpha).

    Runs whose scored AUMs are fewer than 2 or all equal are left out (and out of the fit).
    """
    if len(scored_aums) != len(threshold_aums):
        raise InputError("one set of threshold AUMs per run is needed")
    data: list[tuple[int, np.ndarray, np.ndarray, float]] = []
    for r, (scored, threshold) in enumerate(zip(scored_aums, threshold_aums, strict=True)):
        s = np.sort(_finite(scored, "scored sample"))
        t = _finite(threshold, "threshold sample")
        cap = threshold_alpha(t, percentile)
        if len(s) >= 2 and s[0] != s[-1]:
            data.append((r, s, t, cap))
    if not data:
        return []
    posteriors = _fit_joint(
        [s for _, s, _, _ in data], [t for _, _, t, _ in data], iterations, pool_spread
    )
    return [(r, s, p, cap) for (r, s, _, cap), p in zip(data, posteriors, strict=True)]


class CombinedCut(NamedTuple):
    """The default rule's flags over all runs (:func:`combined_mixture_flags`)."""

    flagged: np.ndarray
    """Boolean mask (N,): the flagged samples."""
    alpha: float
    """The cut on the mean AUM over the runs that scored a sample (``-inf``: none flagged)."""
    noise: float
    """The combined mislabeled fraction: the mean of the samples' lowest posteriors."""
    expected_f1: float
    """The expected F1 of the flagged set under the lowest posteriors."""
    runs: list[CappedCut]
    """Each run's own cut on the same joint fit (:func:`joint_mixture_cuts`), for reference."""
    capped: list[bool]
    """Per run: whether the cut without the ceiling would flag a sample above its paper alpha."""


def combined_mixture_flags(
    aums: Any,
    scored: Any,
    threshold: Any,
    *,
    percentile: float = 99.0,
    iterations: int = 500,
    pool_spread: bool = True,
) -> CombinedCut:
    """The default rule (``flag --rule f1``): one expected-F1 cut of the combined ranking.

    ``aums``, ``scored`` and ``threshold`` are arrays of shape (R, N): run r's AUM of sample n,
    whether run r scored it (present, not one of its threshold samples) and whether it is one
    of run r's threshold samples. The runs are fitted together (:func:`joint_mixture_cuts`'s
    EM: shared weights, pooled spread); then, instead of a cut per run and "flagged in every
    run" (which intersects two cuts each chosen for its own run, so that the combined set is
    stricter than either: 91% of the true count on the memorising recipe's pair 30% noise),
    one cut is placed on the set that is reported:

    - a sample's mislabeled probability ``q_n`` is the *lowest* posterior of the runs that
      scored it (the soft form of "flagged in every run": it counts as mislabeled only as far
      as the least convinced run says; with one run it is that run's posterior);
    - the samples are ranked by their mean AUM over those runs (the ranking ``mislabeled.csv``
      and the oracle use), among those at or below the paper rule's alpha (``percentile``)
      in every run that scored them (the ceiling, as before: the flags stay a subset of the
      paper rule's);
    - the first k are flagged, k maximising the expected F1 ``2 sum_{j<=k} q_(j) / (k + sum_n
      q_n)``.

    With one run this is :func:`joint_mixture_cuts`'s cut exactly. A run left out of the fit
    (fewer than 2 scored AUMs, or all equal) gives its samples posterior 0.
    """
    aum = np.atleast_2d(np.asarray(aums, dtype=np.float64))
    scored_mask = np.atleast_2d(np.asarray(scored, dtype=bool))
    thr = np.atleast_2d(np.asarray(threshold, dtype=bool))
    if aum.shape != scored_mask.shape or aum.shape != thr.shape:
        raise InputError(f"AUMs {aum.shape}, scored {scored_mask.shape} and threshold "
                         f"{thr.shape} differ")  # fmt: skip
    num_runs, n = aum.shape
    fits = _joint_posteriors(
        [aum[r, scored_mask[r]] for r in range(num_runs)],
        [aum[r, thr[r]] for r in range(num_runs)],
        percentile,
        iterations,
        pool_spread,
    )
    post = np.zeros((num_runs, n))
    caps = np.full(num_runs, -np.inf)
    runs: list[CappedCut] = [CappedCut(float("-inf"), 0.0, 0.0, False)] * num_runs
    for r, s, p, cap in fits:
        runs[r] = _cut(s, p, cap)
        caps[r] = cap
        finite = scored_mask[r] & np.isfinite(aum[r])
        index = np.flatnonzero(finite)
        post[r, index[np.argsort(aum[r, index], kind="stable")]] = p
    any_scored = scored_mask.any(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(scored_mask, aum, 0.0).sum(axis=0) / scored_mask.sum(axis=0)
    q = np.where(scored_mask, post, np.inf).min(axis=0)
    q = np.where(any_scored & np.isfinite(mean), q, 0.0)
    under = (aum <= caps[:, None]) | ~scored_mask
    eligible = any_scored & np.isfinite(mean) & under.all(axis=0)
    order = np.flatnonzero(eligible)
    order = order[np.argsort(mean[order], kind="stable")]
    none = np.zeros(n, dtype=bool)
    capped = [False] * num_runs
    if len(order) == 0 or q.sum() <= 0.0:
        return CombinedCut(none, float("-inf"), float(q[any_scored].mean()) if any_scored.any()
                           else 0.0, 0.0, runs, capped)  # fmt: skip
    f1 = _expected_f1(q[order], q.sum())
    best = int(np.argmax(f1))
    alpha = float(mean[order[best]])
    flagged = eligible & (mean <= alpha)
    # capped: the same cut without the ceiling would have flagged a sample above this run's
    ranked = np.flatnonzero(any_scored & np.isfinite(mean))
    ranked = ranked[np.argsort(mean[ranked], kind="stable")]
    free = _expected_f1(q[ranked], q.sum())
    wanted = ranked[: int(np.argmax(free)) + 1]
    capped = [bool((scored_mask[r, wanted] & ~under[r, wanted]).any()) for r in range(num_runs)]
    return CombinedCut(flagged, alpha, float(q[any_scored].mean()), float(f1[best]), runs, capped)


def _fit_joint(
    runs: list[np.ndarray], thresholds: list[np.ndarray], iterations: int, pool_spread: bool
) -> list[np.ndarray]:
    """:func:`_fit` with a background, over several runs that share the weights."""
    starts = [_median_start(s, float(np.median(t))) for s, t in zip(runs, thresholds, strict=True)]
    mus = [mu for mu, _, _ in starts]
    sds = [sd for _, sd, _ in starts]
    weight = np.append(starts[0][2] * (1.0 - BACKGROUND_START), BACKGROUND_START)
    floors = [1e-6 * float(s.std()) for s in runs]
    spans = [float(s[-1] - s[0]) for s in runs]
    prior = [(float(len(t)), float(t.var())) for t in thresholds]
    total_n = sum(len(s) for s in runs)
    logs = [np.empty((len(s), 3)) for s in runs]
    posts = [np.empty((len(s), 3)) for s in runs]
    previous = -np.inf
    with np.errstate(divide="ignore"):  # a weight that reaches 0 drops its component
        for _ in range(iterations):
            likelihood = 0.0
            masses = []
            for r, s in enumerate(runs):
                posts[r], total = _e_step(logs[r], s, weight, mus[r], sds[r], spans[r])
                masses.append(posts[r].sum(axis=0))
                likelihood += float(total.sum())
            if any((mass[:2] <= 0).any() for mass in masses):
                break
            weight = np.sum(masses, axis=0) / total_n
            for r, s in enumerate(runs):
                pooled = prior[r] if pool_spread else None
                mus[r], sds[r] = _m_step(s, posts[r], masses[r], floors[r], pooled)
            if likelihood - previous < 1e-9 * abs(likelihood):
                break
            previous = likelihood
    return [_mislabeled(logs[r], posts[r], mus[r]) for r in range(len(runs))]
