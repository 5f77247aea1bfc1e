"""The cut-off rules of aum_replay.rules: properties on synthetic AUM distributions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aum_replay import InputError
from aum_replay.rules import (
    capped_mixture_cut,
    estimate_noise_fraction,
    expected_f1_cut,
    mixture_f1_cut,
    replication_alpha,
)


def mixture(seed: int, pi: float = 0.2, n: int = 2000, low: float = -3.0, high: float = 3.0):
    rng = np.random.default_rng(seed)
    k = round(pi * n)
    truth = np.zeros(n, dtype=bool)
    truth[:k] = True
    aums = np.where(truth, rng.normal(low, 1.0, n), rng.normal(high, 1.0, n))
    return aums, truth


def f1(flagged: np.ndarray, truth: np.ndarray) -> float:
    tp = (flagged & truth).sum()
    return 2 * tp / (flagged.sum() + truth.sum())


def test_replication_alpha_flags_when_more_than_one_percent_are_greater() -> None:
    rng = np.random.default_rng(0)
    for m in (1, 50, 99, 100, 101, 163, 250):
        t = np.round(rng.normal(size=m), 1)  # ties included
        a = np.round(rng.normal(size=500) * 2, 1)
        alpha = replication_alpha(t)
        expected = np.array([(t > x).mean() > 0.01 for x in a])
        assert ((a <= alpha) == expected).all(), m


def test_replication_alpha_ignores_nan_and_needs_a_finite_value() -> None:
    assert replication_alpha([np.nan, 1.0, 2.0]) == replication_alpha([1.0, 2.0])
    with pytest.raises(InputError, match="finite"):
        replication_alpha([np.nan])


@pytest.mark.parametrize("pi", [0.05, 0.2, 0.4])
def test_mixture_cut_finds_the_fraction_and_a_near_optimal_cut(pi: float) -> None:
    aums, truth = mixture(1, pi)
    threshold = np.random.default_rng(2).normal(-3.0, 1.0, 300)
    alpha, estimate, expected = mixture_f1_cut(aums, threshold)
    assert estimate == pytest.approx(pi, abs=0.02)
    assert f1(aums <= alpha, truth) > 0.98
    assert expected == pytest.approx(f1(aums <= alpha, truth), abs=0.02)


def test_mixture_cut_does_not_need_threshold_samples_shaped_like_the_mislabeled() -> None:
    # class-dependent noise: the network half-learns the flip, mislabeled AUMs sit well above
    # the threshold samples'. The threshold-anchored estimate misses most of them; the mixture
    # does not.
    aums, truth = mixture(3, 0.2, low=-0.5, high=3.0)
    threshold = np.random.default_rng(4).normal(-3.0, 0.7, 300)
    alpha, _, _ = mixture_f1_cut(aums, threshold)
    assert f1(aums <= alpha, truth) > 0.85
    anchored, _, _ = expected_f1_cut(aums, threshold)
    assert f1(aums <= anchored, truth) < 0.5


def test_mixture_cut_moves_with_the_aums() -> None:
    aums, _ = mixture(5)
    threshold = np.random.default_rng(6).normal(-3.0, 1.0, 200)
    alpha, pi, _ = mixture_f1_cut(aums, threshold)
    shifted = mixture_f1_cut(aums + 7.0, threshold + 7.0)
    assert shifted[0] == pytest.approx(alpha + 7.0, abs=1e-6)
    scaled = mixture_f1_cut(aums * 3.0, threshold * 3.0)
    assert scaled[0] == pytest.approx(alpha * 3.0, rel=1e-6)
    assert scaled[1] == pytest.approx(pi, abs=1e-6)


def test_mixture_cut_is_a_scored_aum_and_handles_degenerate_input() -> None:
    aums, _ = mixture(7)
    alpha, _, _ = mixture_f1_cut(aums, [-3.0, -2.0])
    assert alpha in set(aums.tolist())
    assert mixture_f1_cut(np.ones(10), [0.0]) == (float("-inf"), 0.0, 0.0)
    with pytest.raises(InputError, match="scored sample"):
        mixture_f1_cut([np.nan], [0.0])


@pytest.mark.parametrize("seed", [0, 3])
def test_background_component_keeps_one_extreme_aum_from_taking_the_lower_component(
    seed: int,
) -> None:
    # overlapping bumps (the memorising recipe's first epochs) plus one extreme AUM on each
    # side: without the background the lower Gaussian spends itself on the -17 and flags only it
    rng = np.random.default_rng(seed)
    n, k = 1600, 480
    truth = np.arange(n) < k
    aums = np.where(truth, rng.normal(-1.0, 0.8, n), rng.normal(0.9, 0.9, n))
    aums[0], aums[-1] = -17.0, 9.0
    threshold = rng.normal(-1.7, 0.9, 160)
    order = np.sort(aums)
    best = max(f1(aums <= order[j], truth) for j in range(100, 900))  # the best cut possible
    two, pi_two, _ = mixture_f1_cut(aums, threshold, background=False)
    assert pi_two < 0.01 and f1(aums <= two, truth) < 0.05
    alpha, pi, expected = mixture_f1_cut(aums, threshold)
    assert pi == pytest.approx(0.3, abs=0.11)
    assert f1(aums <= alpha, truth) > best - 0.06
    assert aums[0] <= alpha  # the extreme low AUM is still flagged: its background share goes low
    assert 0.0 < expected <= 1.0
    assert capped_mixture_cut(aums, threshold).alpha <= max(alpha, np.percentile(threshold, 99))


def test_background_takes_no_weight_from_two_gaussian_bumps() -> None:
    aums, truth = mixture(21, 0.2)
    threshold = np.random.default_rng(22).normal(-3.0, 1.0, 300)
    with_bg = mixture_f1_cut(aums, threshold)
    without = mixture_f1_cut(aums, threshold, background=False)
    assert with_bg[1] == pytest.approx(without[1], abs=0.005)
    assert f1(aums <= with_bg[0], truth) == pytest.approx(f1(aums <= without[0], truth), abs=0.005)


def heavy_tailed(seed: int, n: int = 2000, pi: float = 0.2):
    """Clean AUMs with a long left tail (hard clean samples), mislabeled ones a tight bump."""
    rng = np.random.default_rng(seed)
    k = round(pi * n)
    truth = np.zeros(n, dtype=bool)
    truth[:k] = True
    clean = 3.0 - rng.gamma(1.0, 1.5, n)  # mode at 3, tail reaching below 0
    aums = np.where(truth, rng.normal(-3.0, 0.5, n), clean)
    threshold = rng.normal(-3.0, 0.5, 300)
    return aums, truth, threshold


def test_cap_stops_a_heavy_clean_tail_from_being_flagged() -> None:
    aums, truth, threshold = heavy_tailed(11)
    cap = float(np.percentile(threshold, 99))
    free, _, _ = mixture_f1_cut(aums, threshold)
    capped, _, expected = mixture_f1_cut(aums, threshold, cap=cap)
    assert free > cap  # the Gaussian's lower component swallows part of the tail
    assert capped <= cap and capped in set(aums.tolist())
    assert f1(aums <= capped, truth) > f1(aums <= free, truth) + 0.05
    assert f1(aums <= capped, truth) > 0.9
    assert 0.0 < expected <= 1.0
    default = capped_mixture_cut(aums, threshold)  # flag's default: the cap is the paper's alpha
    assert default.capped and default.alpha == capped
    bumps, _ = mixture(14)  # two clear bumps, the threshold samples' top beyond the valley
    assert not capped_mixture_cut(bumps, np.random.default_rng(15).normal(-3.0, 1.5, 300)).capped


def test_cap_above_the_cut_changes_nothing_and_is_monotone() -> None:
    aums, _ = mixture(12)
    threshold = np.random.default_rng(13).normal(-3.0, 1.0, 300)
    free = mixture_f1_cut(aums, threshold)
    assert mixture_f1_cut(aums, threshold, cap=free[0]) == free
    assert mixture_f1_cut(aums, threshold, cap=np.inf) == free
    cuts = [mixture_f1_cut(aums, threshold, cap=c)[0] for c in np.linspace(-6.0, 6.0, 25)]
    assert all(a <= b for a, b in itertools.pairwise(cuts))  # a higher cap never flags fewer
    # a cap below every scored AUM flags nothing
    assert mixture_f1_cut(aums, threshold, cap=float(aums.min()) - 1.0)[0] == float("-inf")


def test_noise_fraction_estimate_is_an_upper_bound_when_shapes_match() -> None:
    aums, _ = mixture(8, 0.2)
    threshold = np.random.default_rng(9).normal(-3.0, 1.0, 400)
    estimate = estimate_noise_fraction(aums, threshold)
    assert 0.18 <= estimate <= 0.24
    assert estimate_noise_fraction(aums, [100.0]) == pytest.approx(1.0)
    assert estimate_noise_fraction(aums + 100.0, threshold) == 0.0
