"""Corrupted and truncated shards: the CLI ends cleanly or with one line naming the file.

Either outcome is acceptable for a flipped byte (it may land in unused space, or in logits, which
HDF5 stores without a checksum), but never a traceback, never a partial file under a final name
and never leftover scratch files.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aum_replay import LogitLogger
from aum_replay.cli import app
from aum_replay.csvout import FULL_COLUMNS, FULL_NAME, VALUES_NAME

runner = CliRunner()
SENTINEL = b"sample_id,aum\n42,1.0\n"
SHARDS = ["epoch_00000.rank_000.h5", "epoch_00001.rank_000.h5"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of small chunks (1 KiB), so that a shard holds several chunks and B-tree nodes."""
    run = tmp_path_factory.mktemp("corrupt") / "run"
    rng = np.random.default_rng(0)
    with LogitLogger(run, chunk_bytes=1024) as logger:
        for epoch in range(2):
            ids = rng.permutation(150)
            for start in range(0, 150, 32):
                chunk = ids[start : start + 32]
                logits = torch.from_numpy(rng.normal(size=(len(chunk), 4)).astype(np.float32))
                logger.log(logits, chunk % 4, chunk, epoch=epoch)
            logger.end_epoch()
    return run


def check_outcome(run: Path, out: Path, damaged: str) -> int:
    """Run the CLI on ``run``; assert it ended in one of the two acceptable ways."""
    out.mkdir()
    (out / VALUES_NAME).write_bytes(SENTINEL)
    result = runner.invoke(app, ["compute", str(run), "-o", str(out), "--quiet"])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r} for {damaged}\n{text}")
    assert "Traceback" not in text
    assert result.exit_code in (0, 1), text
    if result.exit_code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("aum-replay: error: "), text
        assert damaged in lines[0], text
        assert [p.name for p in out.iterdir()] == [VALUES_NAME]
        assert (out / VALUES_NAME).read_bytes() == SENTINEL
    else:
        assert sorted(p.name for p in out.iterdir()) == [VALUES_NAME, FULL_NAME]
        values = pd.read_csv(out / VALUES_NAME)
        full = pd.read_csv(out / FULL_NAME)
        assert list(values.columns) == ["sample_id", "aum"]
        assert list(full.columns) == list(FULL_COLUMNS)
        assert values["sample_id"].is_unique
        assert full.groupby("sample_id").size().sum() == len(full)
        assert len(values) == full["sample_id"].nunique()
    return result.exit_code


def damaged_copy(clean: Path, dest: Path, name: str, mutate: object) -> Path:
    shutil.copytree(clean, dest)
    path = dest / name
    data = bytearray(path.read_bytes())
    data = mutate(data)  # type: ignore[operator]
    path.write_bytes(bytes(data))
    return dest


def flip(offsets: list[int], masks: list[int]) -> object:
    def mutate(data: bytearray) -> bytearray:
        for offset, mask in zip(offsets, masks, strict=True):
            data[offset % len(data)] ^= mask
        return data

    return mutate


def test_clean_run_replays(clean_run: Path, tmp_path: Path) -> None:
    assert check_outcome(clean_run, tmp_path / "out", "-") == 0


def test_flipped_bytes(clean_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    size = (clean_run / SHARDS[0]).stat().st_size
    codes = []
    for variant in range(30):
        name = SHARDS[variant % 2]
        # Half the variants hit the first 4 KiB, where the superblock and object headers live.
        limit = 4096 if variant % 4 < 2 else size
        count = int(rng.integers(1, 5))
        offsets = rng.integers(0, limit, size=count).tolist()
        masks = rng.integers(1, 256, size=count).tolist()
        run = damaged_copy(clean_run, tmp_path / f"run{variant}", name, flip(offsets, masks))
        codes.append(check_outcome(run, tmp_path / f"out{variant}", name))
    assert 1 in codes  # the loop did damage something that had to be reported


def test_truncated_shards(clean_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    size = (clean_run / SHARDS[1]).stat().st_size
    lengths = [0, 1, 8, 96, 512, 2048, size // 2, size - 1, size - 4096]
    lengths += rng.integers(0, size, size=21).tolist()
    for variant, length in enumerate(lengths):
        name = SHARDS[variant % 2]
        run = damaged_copy(clean_run, tmp_path / f"run{variant}", name, lambda d, n=length: d[:n])
        assert check_outcome(run, tmp_path / f"out{variant}", name) == 1, length


@settings(max_examples=15)
@given(
    st.sampled_from(SHARDS),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_flipped_bytes_property(
    clean_run: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    flips: list[tuple[int, int]],
) -> None:
    tmp = tmp_path_factory.mktemp("flip")
    offsets = [o for o, _ in flips]
    masks = [m for _, m in flips]
    run = damaged_copy(clean_run, tmp / "run", name, flip(offsets, masks))
    check_outcome(run, tmp / "out", name)


def test_csv_reads_back_as_written(clean_run: Path, tmp_path: Path) -> None:
    # The well-formedness check above is meaningful: a clean run's files parse with pandas.
    check_outcome(clean_run, tmp_path / "out", "-")
    text = (tmp_path / "out" / FULL_NAME).read_text()
    assert pd.read_csv(io.StringIO(text)).shape == (300, len(FULL_COLUMNS))


HANGS = Path(__file__).parent / "data" / "known_hangs"


@pytest.mark.parametrize("shard", sorted(HANGS.glob("*.h5")), ids=lambda p: p.name)
@pytest.mark.parametrize("command", ["compute", "info"])
def test_a_shard_hdf5_hangs_on_ends_the_cli_with_one_line(
    tmp_path: Path, shard: Path, command: str
) -> None:
    # HDF5 loops forever (holding the GIL) reading a damaged string attribute of these fuzzed
    # shards; the CLI's watchdog ends the process after AUM_REPLAY_SHARD_TIMEOUT seconds.
    run = tmp_path / "run"
    run.mkdir()
    target = run / "epoch_00000.rank_000.h5"
    shutil.copyfile(shard, target)
    out = tmp_path / "out"
    args = [command, str(run)] + (["-o", str(out)] if command == "compute" else [])
    env = {**os.environ, "AUM_REPLAY_SHARD_TIMEOUT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "aum_replay.cli", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"aum-replay: error: {target}: HDF5 did not finish reading this shard in 1 s; it is "
        "probably corrupt"
    ]
    assert not out.exists()
