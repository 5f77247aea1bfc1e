"""``aum-replay info``: what a run directory holds, and one clear line when a file is bad."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from aum_replay import LogitLogger
from aum_replay.cli import app

C = 4


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    """Two epochs, two ranks, float16 logits, string ids.

    Epoch 0 sees ids s0..s9 with s3 twice (once per rank); epoch 1 sees s0..s7 and s10..s11:
    s8 and s9 are missing from it, s10 and s11 are missing from epoch 0.
    """
    run_dir = tmp_path / "run"
    epochs = {
        0: ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 3]),
        1: ([0, 1, 2, 3, 10], [4, 5, 6, 7, 11]),
    }
    g = torch.Generator().manual_seed(0)
    for rank in (0, 1):
        with LogitLogger(
            run_dir, rank=rank, world_size=2, metadata={"lr": 0.5, "note": "smoke"}
        ) as logger:
            for epoch, per_rank in epochs.items():
                ids = [f"s{i}" for i in per_rank[rank]]
                logits = torch.randn(len(ids), C, generator=g).half()
                logger.log(logits, torch.arange(len(ids)) % C, ids, epoch=epoch)
    (run_dir / f"epoch_00002.rank_000.h5.{2**22 + 7}.tmp").write_bytes(b"unfinished")
    return run_dir


def epoch_rows(output: str) -> dict[str, list[str]]:
    rows = (line.split() for line in output.splitlines())
    return {row[0]: row[1:] for row in rows if len(row) == 8 and row[0].isdigit()}


def test_info_describes_the_run(small_run: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(small_run)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert str(small_run) in out
    assert "shards    4 " in out
    assert f"classes   {C}; logits float16 stored as float16; str sample ids; 12 distinct" in out
    assert "metadata  {'lr': 0.5, 'note': 'smoke'}" in out
    rows = epoch_rows(out)
    # ranks, rows, distinct ids, duplicate rows, missing ids, then bytes (number and unit)
    assert rows["0"][:5] == ["2", "11", "10", "1", "2"]
    assert rows["1"][:5] == ["2", "10", "10", "0", "2"]
    for epoch in ("0", "1"):
        size = sum((small_run / f"epoch_0000{epoch}.rank_00{r}.h5").stat().st_size for r in (0, 1))
        number, unit = rows[epoch][5:]
        shown = float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
        assert shown == pytest.approx(size, rel=0.05)
    leftover = f"epoch_00002.rank_000.h5.{2**22 + 7}.tmp"
    assert f"leftover  1 unfinished temporary file(s), ignored: {leftover}" in out


def test_info_reports_threshold_samples(tmp_path: Path) -> None:
    threshold = {"sample_ids": [1, 4], "extra_class": 2, "seed": 9, "set_index": 2}
    with LogitLogger(tmp_path, threshold_samples=threshold) as logger:
        logger.log(torch.randn(5, 3), [0, 1, 2, 0, 2], np.arange(5), epoch=0)
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "threshold 2 threshold samples with extra class 2 (set 2, seed 9)" in result.output
    assert "leftover" not in result.output
    assert "int sample ids; 5 distinct" in result.output


def assert_one_error_line(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aum-replay: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output


def test_corrupt_shard_is_one_line_naming_it(small_run: Path) -> None:
    bad = small_run / "epoch_00000.rank_000.h5"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    result = CliRunner().invoke(app, ["info", str(small_run)])
    assert_one_error_line(result, str(bad), "corrupt")


def test_truncated_shard_is_one_line_naming_it(small_run: Path) -> None:
    bad = small_run / "epoch_00001.rank_001.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(app, ["info", str(small_run)])
    assert_one_error_line(result, str(bad))


def test_foreign_hdf5_file_is_one_line_naming_it(tmp_path: Path) -> None:
    foreign = tmp_path / "epoch_00000.rank_000.h5"
    with h5py.File(foreign, "w") as f:
        f["images"] = np.zeros((3, 8, 8), dtype=np.uint8)
        f.attrs["creator"] = "someone else"
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert_one_error_line(result, str(foreign), "not an aum-replay shard")


def test_missing_or_empty_run_dir_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(tmp_path / "nope")])
    assert_one_error_line(result, str(tmp_path / "nope"), "does not exist")
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert_one_error_line(result, str(tmp_path), "no shards")


def test_info_without_a_run_dir_is_usage_error() -> None:
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 2


def test_installed_entry_point(small_run: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("aum-replay")
    entry = str(exe) if exe.exists() else shutil.which("aum-replay")
    assert entry is not None, "the aum-replay console script is not installed"
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run([entry, "info", str(small_run)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert epoch_rows(ok.stdout)["0"][:5] == ["2", "11", "10", "1", "2"]
    assert "leftover  1 unfinished temporary file(s)" in ok.stdout

    bad = small_run / "epoch_00001.rank_000.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    failed = subprocess.run([entry, "info", str(small_run)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and str(bad) in failed.stderr
    assert failed.stdout == ""
