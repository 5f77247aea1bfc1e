"""flag(): alpha per run, flags combined over runs, the two CSV files; the 'flag' command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import FormatError, InputError, LogitLogger, flag
from aum_replay.cli import app
from aum_replay.flag import MissingThresholdError

runner = CliRunner()


def write_run(
    run_dir: Path,
    margins: dict[int, float],
    labels: dict[int, int],
    *,
    threshold: list[int] | None = None,
    extra_class: int = 3,
    epochs: int = 2,
) -> Path:
    """A run whose every row of sample i has margin ``margins[i]``: logits 0 except z[y] = m."""
    ids = sorted(margins)
    meta = None if threshold is None else {"sample_ids": threshold, "extra_class": extra_class}
    targets = torch.tensor([extra_class if i in (threshold or []) else labels[i] for i in ids])
    logits = torch.zeros(len(ids), extra_class + 1)
    logits[torch.arange(len(ids)), targets] = torch.tensor([margins[i] for i in ids])
    with LogitLogger(run_dir, threshold_samples=meta) as logger:
        for epoch in range(epochs):
            logger.log(logits, targets, torch.tensor(ids), epoch=epoch)
    return run_dir


LABELS = {i: i % 3 for i in range(12)}
# run 1: threshold samples 10, 11 (AUM 0 and 1): alpha = 0.99
RUN1 = {0: -2.0, 1: -1.0, 2: 0.5, 3: 0.9, 4: 1.5, 5: 2.0, 6: 3.0, 7: 4.0, 8: 5.0, 9: 6.0}
RUN1 |= {10: 0.0, 11: 1.0}
# run 2: threshold samples 0, 1 (AUM 2 and 3): alpha = 2.99
RUN2 = {0: 2.0, 1: 3.0, 2: -1.0, 3: 4.0, 4: 2.5, 5: 5.0, 6: 2.9, 7: 7.0, 8: 8.0, 9: 9.0}
RUN2 |= {10: -5.0, 11: 3.5}


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "set1", RUN1, LABELS, threshold=[10, 11]),
        write_run(tmp_path / "set2", RUN2, LABELS, threshold=[0, 1]),
    ]


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_alpha_per_run_and_flags_combined_over_runs(two_runs: list[Path], tmp_path: Path) -> None:
    result = flag(two_runs, tmp_path / "out", rule="paper")
    assert [r.alpha for r in result.runs] == pytest.approx([0.99, 2.99])
    assert [r.num_threshold for r in result.runs] == [2, 2]
    assert [r.num_flagged for r in result.runs] == [4, 4]  # {0,1,2,3} and {2,4,6,10}
    # 0, 1: only run 1 scores them; 10: only run 2; 2: both flag it; 3: run 2 does not; 4 and 6:
    # run 1 does not
    assert sorted(result.flagged_ids) == [0, 1, 2, 10]
    assert result.num_scored == 12 and result.num_flagged == 4
    assert result.flagged_per_class == {0: 1, 1: 2, 2: 1}


def test_mislabeled_csv_most_suspicious_first(two_runs: list[Path], tmp_path: Path) -> None:
    result = flag(two_runs, tmp_path / "out", rule="paper")
    assert result.mislabeled_path == tmp_path / "out" / "mislabeled.csv"
    rows = read(result.mislabeled_path)
    assert list(rows[0]) == ["sample_id", "aum_run1", "aum_run2", "aum_mean", "label"]
    assert [r["sample_id"] for r in rows] == ["10", "0", "1", "2"]
    # a run in which the sample is a threshold sample does not score it: empty field
    assert rows[0] == {
        "sample_id": "10", "aum_run1": "", "aum_run2": "-5.0", "aum_mean": "-5.0", "label": "1"
    }  # fmt: skip
    assert rows[3]["aum_mean"] == "-0.25" and rows[3]["label"] == "2"


def test_details_csv_has_every_sample(two_runs: list[Path], tmp_path: Path) -> None:
    result = flag(two_runs, tmp_path / "out", rule="paper")
    rows = read(result.details_path)
    assert list(rows[0]) == [
        "sample_id", "label",
        "aum_run1", "threshold_run1", "alpha_run1",
        "aum_run2", "threshold_run2", "alpha_run2",
        "aum_mean", "flagged",
    ]  # fmt: skip
    assert [int(r["sample_id"]) for r in rows] == list(range(12))
    row11 = rows[11]
    assert row11["threshold_run1"] == "true" and row11["threshold_run2"] == "false"
    assert float(row11["aum_run1"]) == 1.0  # its AUM against the extra class, as recorded
    assert math.isclose(float(row11["alpha_run2"]), 2.99)
    assert [r["flagged"] == "true" for r in rows] == [i in (0, 1, 2, 10) for i in range(12)]
    assert (tmp_path / "out" / "flag_summary.json").is_file()


def test_percentile_and_epochs_are_applied(two_runs: list[Path]) -> None:
    result = flag(two_runs, rule="paper", percentile=50.0, epochs="1")
    assert [r.alpha for r in result.runs] == pytest.approx([0.5, 2.5])
    assert [r.epochs for r in result.runs] == [[1], [1]]


def test_without_threshold_samples_alpha_or_fraction_decide(tmp_path: Path) -> None:
    bare = write_run(tmp_path / "bare", RUN1, LABELS)
    with pytest.raises(MissingThresholdError, match="--alpha VALUE or --fraction F"):
        flag(bare, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    by_alpha = flag(bare, alpha=0.0)
    assert sorted(by_alpha.flagged_ids) == [0, 1, 10]
    assert by_alpha.runs[0].alpha_source == "alpha"
    by_fraction = flag(bare, fraction=0.25)  # round(0.25 * 12) = 3 lowest
    assert by_fraction.flagged_ids == [0, 1, 10]
    assert by_fraction.runs[0].alpha == 0.0
    with pytest.raises(InputError, match="not both"):
        flag(bare, alpha=0.0, fraction=0.1)


def test_explicit_alpha_still_never_flags_threshold_samples(two_runs: list[Path]) -> None:
    result = flag(two_runs[:1], alpha=100.0)
    assert sorted(result.flagged_ids) == list(range(10))


def test_bad_run_dir_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="does not exist"):
        flag([tmp_path / "nope"])


def test_output_is_not_touched_on_error(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    flag(two_runs, out)
    before = (out / "mislabeled.csv").read_bytes()
    with pytest.raises(FormatError):
        flag([*two_runs, tmp_path / "missing"], out)
    assert (out / "mislabeled.csv").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "aum_details.csv", "flag_summary.json", "mislabeled.csv"
    ]  # fmt: skip


# ---------------------------------------------------------------------------- the command
def test_cli_flag_prints_alpha_counts_and_classes(two_runs: list[Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["flag", *map(str, two_runs), "-o", str(tmp_path / "o"), "--rule", "paper"]
    )
    assert result.exit_code == 0, result.output
    assert "alpha 0.99 (99th percentile of 2 threshold samples)" in result.stdout
    assert "alpha 2.99" in result.stdout
    assert "flagged 4 of 12 samples (33.3%)" in result.stdout
    assert "mislabeled.csv" in result.stdout
    assert (tmp_path / "o" / "aum_details.csv").is_file()


def test_cli_flag_without_threshold_samples_exits_2(tmp_path: Path) -> None:
    bare = write_run(tmp_path / "bare", RUN1, LABELS)
    result = runner.invoke(app, ["flag", str(bare), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no threshold samples recorded" in result.stderr
    assert "--alpha" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "expected"),
    [(["--alpha", "0"], "flagged 3 of 12"), (["--fraction", "0.25"], "flagged 3 of 12")],
)
def test_cli_flag_alpha_and_fraction(tmp_path: Path, option: list[str], expected: str) -> None:
    bare = write_run(tmp_path / "bare", RUN1, LABELS)
    result = runner.invoke(app, ["flag", str(bare), "-o", str(tmp_path / "o"), *option])
    assert result.exit_code == 0, result.output
    assert expected in result.stdout
    ids = [r["sample_id"] for r in read(tmp_path / "o" / "mislabeled.csv")]
    assert ids == ["0", "1", "10"]


def test_cli_flag_usage_errors_exit_2(two_runs: list[Path], tmp_path: Path) -> None:
    both = ["flag", str(two_runs[0]), "-o", str(tmp_path), "--alpha", "0", "--fraction", "0.1"]
    assert runner.invoke(app, both).exit_code == 2
    bad_fraction = ["flag", str(two_runs[0]), "-o", str(tmp_path), "--fraction", "1.5"]
    assert runner.invoke(app, bad_fraction).exit_code == 2
    bad_epochs = ["flag", str(two_runs[0]), "-o", str(tmp_path), "--epochs", "x:y"]
    assert runner.invoke(app, bad_epochs).exit_code == 2


def test_cli_flag_library_error_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["flag", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"aum-replay: error: {tmp_path / 'nope'}: run directory does not exist"
    ]


def test_flag_accepts_string_ids(tmp_path: Path) -> None:
    names = [f"s{i}" for i in range(6)]
    targets = torch.tensor([0, 1, 0, 1, 2, 2])
    logits = torch.zeros(6, 3)
    logits[torch.arange(6), targets] = torch.tensor([-1.0, 2.0, 3.0, -2.0, 0.0, 1.0])
    with LogitLogger(
        tmp_path / "r", threshold_samples={"sample_ids": ["s4", "s5"], "extra_class": 2}
    ) as lg:
        lg.log(logits, targets, names, epoch=0)
    result = flag(tmp_path / "r", rule="paper", percentile=100.0)
    assert result.flagged_ids == ["s3", "s0"]
    assert np.isclose(result.runs[0].alpha, 1.0)
