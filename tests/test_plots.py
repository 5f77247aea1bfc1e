"""plot() and 'aum-replay plot': valid PNG files; margin curves streamed from the shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import InputError, LogitLogger, flag, plot
from aum_replay.cli import app
from aum_replay.plots import margin_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path: Path, *, threshold: bool = True) -> Path:
    """20 samples, 3 classes + extra, 4 epochs; sample i's margin in epoch e is (i - 8) + e / 10."""
    ids = torch.arange(20)
    thr = [17, 18, 19] if threshold else []
    targets = torch.tensor([3 if i in thr else i % 3 for i in range(20)])
    meta = {"sample_ids": thr, "extra_class": 3} if threshold else None
    with LogitLogger(tmp_path / "run", threshold_samples=meta) as logger:
        for epoch in range(4):
            logits = torch.zeros(20, 4)
            logits[ids, targets] = (ids - 8).float() + epoch / 10
            logger.log(logits[:12], targets[:12], ids[:12], epoch=epoch)
            logger.log(logits[12:], targets[12:], ids[12:], epoch=epoch)
    return tmp_path / "run"


def _assert_pngs(paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), path
        assert len(data) > 1000, path


def test_plot_writes_three_valid_pngs(tmp_path: Path) -> None:
    paths = plot(_run(tmp_path), tmp_path / "png", ids=[5, 19], lowest=3)
    assert [p.name for p in paths] == [
        "aum_histogram.png",
        "margins.png",
        "data_map.png",
        "flagged_per_class.png",
    ]
    assert all(p.parent == tmp_path / "png" for p in paths)
    _assert_pngs(paths)


def test_plot_without_threshold_samples_or_flags_skips_the_class_plot(tmp_path: Path) -> None:
    paths = plot(_run(tmp_path, threshold=False), tmp_path / "png")
    assert [p.name for p in paths] == ["aum_histogram.png", "margins.png", "data_map.png"]
    _assert_pngs(paths)


def test_plot_uses_flag_output_dir(tmp_path: Path) -> None:
    run = _run(tmp_path, threshold=False)
    flag(run, tmp_path / "flags", alpha=-5.0)
    paths = plot(run, tmp_path / "png", flags=tmp_path / "flags")
    assert paths[-1].name == "flagged_per_class.png"
    _assert_pngs(paths)


def test_unknown_ids_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\[99\]"):
        plot(_run(tmp_path), tmp_path / "png", ids=[99])
    with pytest.raises(InputError, match="not int ids"):
        plot(_run(tmp_path / "b"), tmp_path / "png", ids=["abc"])


def test_margin_curves_match_the_logged_margins(tmp_path: Path) -> None:
    curves = margin_curves(_run(tmp_path), [15, 2], epochs="1:")
    assert curves.ids == [15, 2] and curves.epochs.tolist() == [1, 2, 3]
    expected = np.array([[7 + e / 10 for e in (1, 2, 3)], [-6 + e / 10 for e in (1, 2, 3)]])
    np.testing.assert_allclose(curves.margins, expected, rtol=1e-6)
    mean = np.mean(np.arange(20) - 8.0)
    np.testing.assert_allclose(curves.mean_margin, [mean + e / 10 for e in (1, 2, 3)], rtol=1e-6)


def test_cli_plot(tmp_path: Path) -> None:
    run = _run(tmp_path)
    result = CliRunner().invoke(
        app, ["plot", str(run), "-o", str(tmp_path / "png"), "--ids", "3,17", "--lowest", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("wrote ") == 4
    _assert_pngs(sorted((tmp_path / "png").glob("*.png")))
    bad = CliRunner().invoke(app, ["plot", str(run), "-o", str(tmp_path / "png"), "--ids", "x"])
    assert bad.exit_code == 1 and bad.stderr.startswith("aum-replay: error: sample ids")
