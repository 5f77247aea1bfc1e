"""flag()'s rules and --epochs auto on a recorded run whose threshold samples get memorised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import InputError, LogitLogger, flag
from aum_replay.auto_epochs import choose_epochs
from aum_replay.cli import app
from aum_replay.rules import (
    CappedCut,
    capped_mixture_cut,
    combined_mixture_flags,
    joint_mixture_cuts,
)
from aum_replay.threshold import combine_flags

runner = CliRunner()
N, C, EPOCHS, TURN = 240, 3, 12, 4
THRESHOLD = list(range(200, 240))  # 40 threshold samples
MISLABELED = list(range(30))  # 30 of the 200 scored samples


def margins_at(epoch: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.normal(1.0, 0.5, N)  # clean
    m[MISLABELED] = rng.normal(-2.0, 0.5, len(MISLABELED))
    # threshold samples: low until epoch TURN, then memorised (up to +8 by the last epoch)
    level = -2.0 if epoch <= TURN else -2.0 + 10.0 * (epoch - TURN) / (EPOCHS - 1 - TURN)
    m[THRESHOLD] = rng.normal(level, 0.5, len(THRESHOLD))
    return m


@pytest.fixture
def memorised(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = torch.tensor([C if i in THRESHOLD else i % C for i in range(N)])
    ids = torch.arange(N)
    run_dir = tmp_path / "run"
    meta = {"sample_ids": THRESHOLD, "extra_class": C}
    with LogitLogger(run_dir, threshold_samples=meta) as logger:
        for epoch in range(EPOCHS):
            logits = torch.zeros(N, C + 1)
            logits[ids, labels] = torch.tensor(margins_at(epoch, rng), dtype=torch.float32)
            logger.log(logits, labels, ids, epoch=epoch)
    return run_dir


def test_default_is_rule_f1_with_auto_epochs(memorised: Path, tmp_path: Path) -> None:
    result = flag(memorised, tmp_path / "out")
    assert result.rule == "f1" and result.epochs == "auto"
    run = result.runs[0]
    assert (
        run.rule == "f1" and run.auto is not None and 1 <= (run.auto.turn or 0) <= TURN
    )  # the plateau
    # counted up to where the climb from the minimum is measurable: at the memorisation point
    # (the last flat epoch) or one past it, as the 3-epoch smoothing lags a sharp climb
    assert run.epochs == list(range(run.epochs[-1] + 1)) and run.epochs_spec.startswith("0:")
    assert run.auto.turn <= run.epochs[-1] <= TURN + 1
    assert run.noise_estimate == pytest.approx(30 / 200, abs=0.02)
    assert 0.9 < (run.expected_f1 or 0) <= 1.0
    assert sorted(result.flagged_ids) == MISLABELED
    assert result.warnings == []
    summary = json.loads((tmp_path / "out" / "flag_summary.json").read_text())
    assert summary["rule"] == "f1" and summary["epochs"] == "auto"
    assert summary["runs"][0]["epochs"] == run.epochs_spec
    assert summary["runs"][0]["memorisation_epoch"] == run.auto.turn
    assert summary["runs"][0]["noise_estimate"] == pytest.approx(run.noise_estimate)
    assert summary["runs"][0]["capped_at_paper_cut"] is False


def test_default_never_flags_above_the_paper_cut_on_its_epochs(memorised: Path) -> None:
    default = flag(memorised)
    run = default.runs[0]
    paper = flag(memorised, rule="paper", epochs=run.epochs_spec)
    assert run.alpha <= paper.runs[0].alpha
    assert set(default.flagged_ids) <= set(paper.flagged_ids)
    assert run.capped is False  # two clear bumps: the mixture's own cut
    tight = flag(memorised, percentile=50.0)  # a cap inside the threshold samples binds
    assert tight.runs[0].capped is True
    assert set(tight.flagged_ids) < set(default.flagged_ids)


def test_paper_rule_counts_all_epochs_and_warns_when_over_half(memorised: Path) -> None:
    result = flag(memorised, rule="paper")
    assert result.rule == "paper" and result.runs[0].epochs == list(range(EPOCHS))
    thr_aum = result.details.filter(result.details["threshold_run1"])["aum_run1"].to_numpy()
    assert result.runs[0].alpha == float(np.percentile(thr_aum, 99))
    assert result.fraction_flagged > 0.5
    assert len(result.warnings) == 2 and "more than half" in result.warnings[0]
    assert "17% of its 240 samples" in result.warnings[1]
    assert "--epochs auto" in result.warnings[0]
    # the paper rule on the auto epochs flags the mislabeled ones
    assert sorted(flag(memorised, rule="paper", epochs="auto").flagged_ids) == MISLABELED


def test_replication_rule_and_given_cutoffs(memorised: Path) -> None:
    result = flag(memorised, rule="replication", epochs="0:5")
    assert result.rule == "replication" and result.runs[0].epochs == [0, 1, 2, 3, 4]
    assert sorted(result.flagged_ids) == MISLABELED
    given = flag(memorised, alpha=0.0)
    assert given.rule == "alpha" and given.runs[0].rule is None
    assert given.runs[0].epochs == list(range(EPOCHS))  # no auto with a given cut-off
    with pytest.raises(InputError, match="rule must be one of"):
        flag(memorised, rule="nope")  # type: ignore[arg-type]


def test_auto_needs_threshold_samples(tmp_path: Path) -> None:
    with LogitLogger(tmp_path / "bare") as logger:
        logger.log(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4), epoch=0)
    with pytest.raises(InputError, match="auto reads the threshold"):
        flag(tmp_path / "bare", alpha=0.0, epochs="auto")
    assert flag(tmp_path / "bare", alpha=0.0).epochs == "all"


def test_cli_default_names_rule_and_epochs(memorised: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["flag", str(memorised), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("rule f1 (")
    assert "; epochs auto" in result.stdout
    assert "(auto: threshold margins lowest at epoch" in result.stdout
    assert ", climbing by epoch " in result.stdout
    assert "mixture: 15.0% mislabeled" in result.stdout
    assert "flagged 30 of 200 samples (15.0%)" in result.stdout
    assert result.stderr.strip() == ""


def test_cli_paper_rule_warns_on_stderr(memorised: Path, tmp_path: Path) -> None:
    args = ["flag", str(memorised), "-o", str(tmp_path / "o"), "--rule", "paper"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rule paper (" in result.stdout and "epochs all" in result.stdout
    assert f"epochs 0..{EPOCHS - 1};" in result.stdout
    assert "aum-replay: warning: " in result.stderr and "more than half" in result.stderr
    assert "17% of its 240 samples" in result.stderr  # the share of threshold samples
    replication = runner.invoke(app, [*args[:-1], "replication", "--epochs", "auto", "-q"])
    assert replication.exit_code == 0 and replication.stdout == ""


def test_cli_rejects_a_bad_rule_and_epochs(memorised: Path, tmp_path: Path) -> None:
    bad = runner.invoke(app, ["flag", str(memorised), "-o", str(tmp_path), "--rule", "x"])
    assert bad.exit_code == 2
    bad = runner.invoke(app, ["flag", str(memorised), "-o", str(tmp_path), "--epochs", "autox"])
    assert bad.exit_code == 2


def test_the_summary_says_when_the_cut_was_capped(memorised: Path, tmp_path: Path) -> None:
    free = runner.invoke(app, ["flag", str(memorised), "-o", str(tmp_path / "a")])
    assert free.exit_code == 0, free.output
    assert "never above a run's paper cut" in free.stdout and "capped" not in free.stdout
    # one cut of the combined ranking: each run's line says how many it flags and the highest
    assert "scored samples flagged, the highest at AUM " in free.stdout
    assert "mean AUM over the runs that scored them <= " in free.stdout
    tight = runner.invoke(
        app, ["flag", str(memorised), "-o", str(tmp_path / "b"), "--percentile", "50"]
    )
    assert tight.exit_code == 0, tight.output
    assert "cut capped at the paper rule's (50th percentile)" in tight.stdout


# --- the default rule's parts, on synthetic AUMs with a known answer (rules.joint_mixture_cuts,
# auto_epochs.choose_epochs(stop="climb")): README "How flag chooses the cut-off"


def f1_of(flagged: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (flagged & truth).sum() / (flagged.sum() + truth.sum()))


def bumps(seed: int, n: int = 1600, k: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.arange(n) < k
    aums = np.where(truth, rng.normal(-2.0, 0.6, n), rng.normal(1.5, 0.8, n))
    return aums, truth, rng.normal(-2.5, 1.2, 160)


def small_share(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5% mislabeled (a broad bump), clean AUMs with a left tail, threshold AUMs narrower."""
    rng = np.random.default_rng(seed)
    n, k = 1700, 85
    truth = np.arange(n) < k
    clean = np.where(rng.random(n) < 0.9, rng.normal(2.2, 0.8, n), 2.2 - rng.gamma(1.5, 1.0, n))
    aums = np.where(truth, rng.normal(-3.7, 1.4, n), clean)
    return aums, truth, rng.normal(-1.9, 0.9, 160)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_fit_of_one_run_without_pooling_is_the_rule_before(seed: int) -> None:
    aums, _, threshold = bumps(seed)
    assert joint_mixture_cuts([aums], [threshold], pool_spread=False) == [
        capped_mixture_cut(aums, threshold)
    ]
    heavy, _, thr = small_share(seed)
    assert joint_mixture_cuts([heavy], [thr], pool_spread=False) == [capped_mixture_cut(heavy, thr)]


def test_joint_fit_shares_the_weights_and_nothing_else() -> None:
    aums, _, threshold = bumps(3)
    other, _, thr2 = bumps(4)
    single = joint_mixture_cuts([aums], [threshold])[0]
    # two copies of one run: the shared weights are that run's own
    assert joint_mixture_cuts([aums, aums], [threshold, threshold]) == [single, single]
    both = joint_mixture_cuts([aums, other], [threshold, thr2])
    assert joint_mixture_cuts([other, aums], [thr2, threshold]) == both[::-1]  # run order
    assert joint_mixture_cuts([aums, np.ones(10)], [threshold, [0.0]]) == [
        single,
        CappedCut(float("-inf"), 0.0, 0.0, False),
    ]  # a run with nothing to fit takes no part
    with pytest.raises(InputError, match="one set of threshold AUMs per run"):
        joint_mixture_cuts([aums], [threshold, thr2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_pooled_spread_keeps_a_small_share_from_swallowing_the_clean_tail(seed: int) -> None:
    aums, truth, threshold = small_share(seed)
    free = joint_mixture_cuts([aums], [threshold], pool_spread=False)[0]
    pooled = joint_mixture_cuts([aums], [threshold])[0]
    assert free.noise > 0.06  # the lower Gaussian took part of the clean tail
    assert abs(pooled.noise - 0.05) < abs(free.noise - 0.05)
    assert pooled.alpha < free.alpha
    assert f1_of(aums <= pooled.alpha, truth) > f1_of(aums <= free.alpha, truth)


def test_pooled_spread_leaves_a_narrower_mislabeled_bump_as_fitted() -> None:
    # class-dependent noise: the mislabeled bump (sd 0.6) is narrower than the threshold
    # samples' (sd 1.2); the pooling only narrows a wider one
    aums, truth, threshold = bumps(5)
    pooled = joint_mixture_cuts([aums], [threshold])
    assert pooled == joint_mixture_cuts([aums], [threshold], pool_spread=False)
    assert pooled[0].noise == pytest.approx(0.2, abs=0.02)
    assert f1_of(aums <= pooled[0].alpha, truth) > 0.97


def test_joint_cut_moves_with_the_aums() -> None:
    aums, _, threshold = small_share(6)
    other, _, thr2 = small_share(7)
    base = joint_mixture_cuts([aums, other], [threshold, thr2])
    shifted = joint_mixture_cuts([aums + 7.0, other + 7.0], [threshold + 7.0, thr2 + 7.0])
    scaled = joint_mixture_cuts([aums * 3.0, other * 3.0], [threshold * 3.0, thr2 * 3.0])
    for b, s, c in zip(base, shifted, scaled, strict=True):
        assert s.alpha == pytest.approx(b.alpha + 7.0, abs=1e-6)
        assert c.alpha == pytest.approx(b.alpha * 3.0, rel=1e-6)
        assert c.noise == pytest.approx(b.noise, abs=1e-6) and c.capped == b.capped


def overlapping_runs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two runs of one data set, 30% mislabeled, bumps that overlap; each run's own noise.

    Returns AUMs, scored and threshold masks (2, N) and the truth (N,); each run's 150
    threshold samples are clean samples given the extra class.
    """
    rng = np.random.default_rng(seed)
    n, k, m = 1500, 450, 150
    truth = np.arange(n) < k
    latent = np.where(truth, rng.normal(-1.4, 0.8, n), rng.normal(1.4, 0.8, n))
    thr = np.zeros((2, n), dtype=bool)
    thr[0, rng.choice(np.arange(k, n), m, replace=False)] = True
    thr[1, rng.choice(np.flatnonzero(~thr[0] & ~truth), m, replace=False)] = True
    aum = latent + rng.normal(0.0, 0.6, (2, n))
    aum[thr] = rng.normal(-1.5, 0.8, int(thr.sum()))
    return aum, ~thr, thr, truth


def _every_run(aum: np.ndarray, scored: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """The rule before: each run's own cut on the joint fit, flagged in every run."""
    cuts = joint_mixture_cuts(
        [a[s] for a, s in zip(aum, scored, strict=True)],
        [a[t] for a, t in zip(aum, thr, strict=True)],
    )
    flags = np.array([(a <= c.alpha) & s for a, c, s in zip(aum, cuts, scored, strict=True)])
    return combine_flags(flags, scored)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combined_cut_of_one_run_is_that_runs_cut(seed: int) -> None:
    for aums, _, threshold in (bumps(seed), small_share(seed)):
        scored = np.ones((1, len(aums)), dtype=bool)
        every = np.concatenate([aums, threshold])[None, :]
        scored = np.concatenate([scored, np.zeros((1, len(threshold)), dtype=bool)], axis=1)
        combined = combined_mixture_flags(every, scored, ~scored)
        (cut,) = joint_mixture_cuts([aums], [threshold])
        assert combined.flagged.tolist() == ((every[0] <= cut.alpha) & scored[0]).tolist()
        assert combined.alpha == cut.alpha and combined.capped == [cut.capped]
        assert combined.noise == pytest.approx(cut.noise) and combined.runs == [cut]
        assert combined.expected_f1 == pytest.approx(cut.expected_f1)
        # two copies of the run: the same flags
        twice = combined_mixture_flags(np.repeat(every, 2, 0), np.repeat(scored, 2, 0),
                                       np.repeat(~scored, 2, 0))  # fmt: skip
        assert twice.flagged.tolist() == combined.flagged.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_combined_cut_finds_more_of_overlapping_bumps_than_every_runs_cut(seed: int) -> None:
    # two strict per-run cuts intersected are stricter than either; one cut of the combined
    # ranking, on the runs' lowest posteriors, is not
    aum, scored, thr, truth = overlapping_runs(seed)
    before = _every_run(aum, scored, thr)
    combined = combined_mixture_flags(aum, scored, thr)
    assert before.sum() <= combined.flagged.sum() < truth.sum()
    assert f1_of(combined.flagged, truth) > f1_of(before, truth)
    mean = aum.mean(axis=0, where=scored)
    assert not (combined.flagged & (mean > combined.alpha)).any()  # a cut on the mean AUM


def test_combined_flags_stay_under_every_runs_paper_cut() -> None:
    aum, scored, thr, _ = overlapping_runs(7)
    for percentile in (99.0, 60.0):
        combined = combined_mixture_flags(aum, scored, thr, percentile=percentile)
        caps = [np.percentile(a[t], percentile) for a, t in zip(aum, thr, strict=True)]
        paper = combine_flags(
            np.array([(a <= c) & s for a, c, s in zip(aum, caps, scored, strict=True)]), scored
        )
        assert not (combined.flagged & ~paper).any()
    assert any(combined.capped)  # the 60th percentile binds
    with pytest.raises(InputError, match="differ"):
        combined_mixture_flags(aum, scored[:1], thr)


def noisy_trajectory(seed: int, climb_from: int = 7, epochs: int = 60) -> np.ndarray:
    """The memorising recipe's threshold margins: down to -1.9 at epoch 1, a flat noisy bottom
    to epoch ``climb_from``, then a steady climb to +2.5 at the last epoch."""
    rng = np.random.default_rng(100 + seed)
    flat = -1.9 + rng.normal(0.0, 0.08, climb_from - 1)
    medians = [-1.2, *flat, *np.linspace(-1.9, 2.5, epochs - climb_from)]
    return np.array(medians)[:, None] + rng.normal(0.0, 1.0, (epochs, 160))


@pytest.mark.parametrize("seed", range(6))
def test_climb_stop_counts_up_to_where_the_climb_is_measurable(seed: int) -> None:
    margins = noisy_trajectory(seed)
    at_turn = choose_epochs(list(range(60)), margins)
    climb = choose_epochs(list(range(60)), margins, stop="climb")
    assert climb.turn == at_turn.turn is not None and 1 <= at_turn.turn <= 7  # in the flat bottom
    assert at_turn.epochs == list(range(at_turn.turn + 1))  # stop="turn": the rule before
    # the climb starts at epoch 7 and is back half way to zero by epoch ~18
    assert climb.epochs == list(range(climb.epochs[-1] + 1)) and 7 <= climb.epochs[-1] <= 14
    assert climb.median == at_turn.median


def test_climb_stop_changes_nothing_without_memorisation() -> None:
    rng = np.random.default_rng(9)
    drift = [-0.6, -1.2, -2.0, -1.9, -2.2, *np.linspace(-2.2, -1.7, 25)]  # the standard recipe
    margins = np.array(drift)[:, None] + rng.normal(0.0, 0.3, (30, 50))
    choice = choose_epochs(list(range(30)), margins, stop="climb")
    assert choice.turn is None and choice.epochs == list(range(30))
    with pytest.raises(InputError, match="stop must be"):
        choose_epochs(list(range(30)), margins, stop="minimum")  # type: ignore[arg-type]
