"""flag()'s rules and --epochs auto on a recorded run whose threshold samples get memorised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import InputError, LogitLogger, flag
from aum_replay.cli import app

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
    assert run.epochs == list(range(run.auto.turn + 1)) and run.epochs_spec.startswith("0:")
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
    assert "(auto: threshold margins turn up after epoch" in result.stdout
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
    assert "never above the paper rule's" in free.stdout and "capped" not in free.stdout
    tight = runner.invoke(
        app, ["flag", str(memorised), "-o", str(tmp_path / "b"), "--percentile", "50"]
    )
    assert tight.exit_code == 0, tight.output
    assert "cut capped at the paper rule's (50th percentile)" in tight.stdout
