"""The digits demo end to end, on a short training that still finds most flips."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from aum_replay.cli import app
from aum_replay.demo import DemoConfig, corrupt_labels, detection_scores, run_demo


def test_corrupt_labels_flips_exactly_the_fraction() -> None:
    y = np.arange(100) % 10
    noisy, flipped = corrupt_labels(y, 0.2, seed=1)
    assert flipped.sum() == 20 and (noisy[flipped] != y[flipped]).all()
    assert (noisy[~flipped] == y[~flipped]).all()
    again, _ = corrupt_labels(y, 0.2, seed=1)
    assert (again == noisy).all()
    shifted, mask = corrupt_labels(y, 0.3, mode="classflip", seed=0)
    assert ((y[mask] + 1) % 10 == shifted[mask]).all()


def test_detection_scores_by_hand() -> None:
    flagged = np.array([True, True, False, False, True])
    truth = np.array([True, False, True, False, True])
    assert detection_scores(flagged, truth) == (2 / 3, 2 / 3, 2 / 3)
    assert detection_scores(np.zeros(5, bool), truth) == (0.0, 0.0, 0.0)


def test_run_demo_end_to_end(tmp_path: Path) -> None:
    progress: list[str] = []
    result = run_demo(
        tmp_path, config=DemoConfig(epochs=5), progress=lambda s, d, t: progress.append(s)
    )
    # The default 30 epochs reach F1 ~0.96; 5 epochs already separate most flips.
    assert result.f1 > 0.7
    assert result.num_flipped == 359 and result.num_samples == 1797
    assert {"train set 1", "train set 2", "compute", "flag", "plot"} <= set(progress)
    assert sorted(p.name for p in result.run_dirs) == ["set1", "set2"]
    assert len(list(result.run_dirs[0].glob("epoch_*.rank_000.h5"))) == 5
    for aum_dir in result.aum_dirs:
        assert (aum_dir / "aum_values.csv").is_file()
    assert all(p.is_file() for p in result.plot_paths)
    with open(result.labels_path, newline="") as fh:
        labels = list(csv.DictReader(fh))
    flipped = {int(r["sample_id"]) for r in labels if r["flipped"] == "true"}
    with open(result.flag_dir / "mislabeled.csv", newline="") as fh:
        flagged = {int(r["sample_id"]) for r in csv.DictReader(fh)}
    assert len(flagged & flipped) == result.true_positives
    assert result.precision == result.true_positives / len(flagged)


def test_cli_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--epochs", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "precision" in result.stdout and "F1" in result.stdout
    assert (tmp_path / "d" / "flags" / "mislabeled.csv").is_file()
