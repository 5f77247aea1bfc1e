"""Summary storage: per-row statistics instead of logits, replayed to the same files as full logits.

Differential: the same logits logged with ``storage="auto"`` and ``storage="summary"`` give
byte-identical ``aum_values.csv`` and ``full_aum_records.csv``, and the dynamics signals that
:mod:`aum_replay.summary` documents as exact are exactly equal; the others agree to float64
rounding.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aum_replay
from aum_replay import InputError, LogitLogger
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.dynamics import dynamics
from aum_replay.format import list_shards, read_info
from aum_replay.kernels import STATS, block_stats
from aum_replay.summary import SummaryBlock, summarize, summary_stats

EXACT = ("aum", "correctness", "forgetting_events", "never_learned", "el2n", "loss")
ROUNDED = ("confidence", "variability", "aleatoric")


def log_run(run: Path, storage: str, dtype: torch.dtype, kind: str = "int", c: int = 7) -> Path:
    g = torch.Generator().manual_seed(3)
    with LogitLogger(run, storage=storage, chunk_bytes=4096) as logger:
        for epoch in range(3):
            order = torch.randperm(150, generator=g)
            order = torch.cat([order, order[:2]])  # padded duplicates
            logits = (torch.randn(len(order), c, generator=g) * 3).to(dtype)
            logits[4] = float("nan")
            logits[5, :3] = 2.0  # ties: the lowest index wins
            logits[6, 1] = float("inf")
            for start in range(0, len(order), 29):
                part = order[start : start + 29]
                ids = part if kind == "int" else [f"id/{i}" for i in part.tolist()]
                logger.log(logits[start : start + 29], part % c, ids, epoch=epoch)
    return run


@pytest.mark.parametrize(
    ("dtype", "kind"),
    [
        (torch.float32, "int"),
        (torch.float32, "str"),
        (torch.bfloat16, "int"),
        (torch.float16, "int"),
    ],
)
def test_summary_replays_to_the_files_and_signals_of_the_full_logits(
    tmp_path: Path, dtype: torch.dtype, kind: str
) -> None:
    full = log_run(tmp_path / "full", "auto", dtype, kind)
    summary = log_run(tmp_path / "summary", "summary", dtype, kind)
    assert {read_info(p).storage for _, _, p in list_shards(summary)} == {"summary"}
    for duplicates in ("first", "all"):
        for run in (full, summary):
            aum_replay.compute(run, tmp_path / f"{run.name}-{duplicates}", duplicates=duplicates)
        for name in (VALUES_NAME, FULL_NAME):
            a, b = (tmp_path / f"{r}-{duplicates}" / name for r in ("full", "summary"))
            assert filecmp.cmp(a, b, shallow=False), (duplicates, name)
    one, two = dynamics(full), dynamics(summary)
    assert one.select("sample_id", "target", "num_measurements").equals(
        two.select("sample_id", "target", "num_measurements")
    )
    for name in EXACT:
        assert one[name].equals(two[name], null_equal=True), name
    for name in ROUNDED:
        np.testing.assert_allclose(
            two[name].to_numpy(), one[name].to_numpy(), rtol=1e-12, atol=1e-15
        )


def test_a_summary_block_gives_what_the_kernel_gives_from_the_logits() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 9)).astype(np.float32)
    x[0, 2] = np.nan
    x[1, :4] = 1.5  # a tie for the maximum
    labels = rng.integers(0, 9, 64)
    labels[1] = 2
    block = SummaryBlock(summarize(x, labels, "float32"))
    want = block_stats(x.copy(), labels, "float32", STATS)
    got = summary_stats(block, labels, "float32", STATS)
    assert set(got) == set(want)
    for name in sorted(set(STATS) - {"p_target"}):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_allclose(got["p_target"], want["p_target"], rtol=1e-14)
    assert block["argmax"][0] == -1 and np.isnan(got["margin"][0])
    np.testing.assert_array_equal(block["argmax"][1:], x[1:].argmax(axis=1))  # ties: the first
    assert got["correct"][1] == 0.0  # argmax is 0, the first of the tied maxima


def test_a_summary_row_takes_over_100x_less_disk_than_float32_logits_at_1000_classes(
    tmp_path: Path,
) -> None:
    # Bytes per row: what a shard of 2 * N rows takes beyond one of N rows (the HDF5 file and
    # the manifest of a shard are a fixed few KiB, which a real epoch of 10^5 rows does not see).
    logits = torch.randn(4096, 1000)
    per_row = {}
    for storage in ("auto", "summary"):
        sizes = []
        for rows in (2048, 4096):
            run = tmp_path / f"{storage}{rows}"
            with LogitLogger(run, storage=storage) as logger:
                for start in range(0, rows, 256):
                    ids = torch.arange(start, start + 256)
                    logger.log(logits[start : start + 256], ids % 1000, ids, epoch=0)
            sizes.append(list_shards(run)[0][2].stat().st_size)
        per_row[storage] = (sizes[1] - sizes[0]) / 2048
    assert per_row["auto"] >= 4000 and per_row["auto"] / per_row["summary"] >= 100, per_row


def test_a_run_keeps_its_storage_kind_and_summary_needs_v2(tmp_path: Path) -> None:
    run = log_run(tmp_path / "run", "summary", torch.float32)
    with pytest.raises(InputError, match="stores logits, but the run it resumes stores summary"):
        LogitLogger(run)
    with pytest.raises(InputError, match="needs format_version=2"):
        LogitLogger(tmp_path / "v1", storage="summary", format_version=1)
    result = CliRunner().invoke(app, ["info", str(run), "--verify"])
    assert result.exit_code == 0, result.output
    assert "storage summary" in result.output


def test_flipped_bytes_of_a_summary_shard_end_in_one_clear_line_or_identical_files(
    tmp_path: Path,
) -> None:
    run = log_run(tmp_path / "run", "summary", torch.float32)
    runner = CliRunner()
    assert (
        runner.invoke(app, ["compute", str(run), "-o", str(tmp_path / "clean"), "-q"]).exit_code
        == 0
    )
    name = list_shards(run)[0][2].name
    size = (run / name).stat().st_size
    rng = np.random.default_rng(5)
    codes = []
    for k, offset in enumerate(sorted(set(rng.integers(0, size, 12).tolist()))):
        damaged = tmp_path / f"run{k}"
        shutil.copytree(run, damaged)
        data = bytearray((damaged / name).read_bytes())
        data[offset] ^= 0x41
        (damaged / name).write_bytes(bytes(data))
        out = tmp_path / f"out{k}"
        result = runner.invoke(app, ["compute", str(damaged), "-o", str(out), "-q"])
        codes.append(result.exit_code)
        if result.exit_code == 0:
            for f in (VALUES_NAME, FULL_NAME):
                assert filecmp.cmp(out / f, tmp_path / "clean" / f, shallow=False), offset
        else:
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
            assert name in result.stderr
    assert 1 in codes


def test_a_replay_reads_only_the_summary_columns_its_signals_need(tmp_path: Path) -> None:
    """AUM values need target_val and other_val alone: a flipped byte in the lse column leaves
    them identical, while every signal that reads lse (loss) finds the flip."""
    from aum_replay import FormatError, compute
    from aum_replay.format import LSE, OTHER_VAL, SUMMARY_COLUMNS, TARGET_VAL
    from aum_replay.summary import summary_columns

    assert summary_columns({"margin"}) == (TARGET_VAL, OTHER_VAL)
    assert summary_columns({"loss"}) == (TARGET_VAL, LSE)
    assert summary_columns(STATS) == SUMMARY_COLUMNS  # every signal: every column
    run = log_run(tmp_path / "run", "summary", torch.float32)
    compute(run, tmp_path / "clean", full=False)
    shard = list_shards(run)[1][2]
    offset = read_info(shard).raw[LSE].offsets[0] + 3
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x20]))
    compute(run, tmp_path / "flipped", full=False)
    assert filecmp.cmp(tmp_path / "clean" / VALUES_NAME, tmp_path / "flipped" / VALUES_NAME, False)
    with pytest.raises(FormatError, match=r"checksum mismatch in lse"):
        dynamics(run, tmp_path / "dyn", metrics=["loss"])
