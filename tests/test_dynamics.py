"""Training dynamics against a plain per-sample loop written from the definitions (SPEC 7).

The loop keeps every counted measurement of every sample as Python lists (the first row of a
sample in each epoch, ranks in rank order) and computes each signal the obvious way, as dataset
cartography's ``train_dy_filtering.py`` and the papers define them. ``aum`` must equal
``compute``'s bit for bit; the float signals agree to float64 rounding; counts, correctness,
forgetting events and never_learned exactly.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aum_replay import LogitLogger, compute
from aum_replay.cli import app
from aum_replay.dynamics import DYNAMICS_NAME, METRICS, dynamics
from aum_replay.kernels import STATS, block_stats

runner = CliRunner()

# (epoch, rank, logits (B, C) float32, targets (B,), ids (B,))
Batch = tuple[int, int, np.ndarray, np.ndarray, np.ndarray]


def random_logs(seed: int, *, samples: int = 30, classes: int = 4, epochs: int = 5) -> list[Batch]:
    """Two ranks, DDP-style padding (an id twice in an epoch), integer logits with ties, NaNs."""
    rng = np.random.default_rng(seed)
    batches = []
    for epoch in range(epochs):
        order = rng.permutation(samples)
        order = np.concatenate([order, order[:2]])  # padding: two ids seen twice
        for rank, part in enumerate(np.array_split(order, 2)):
            logits = rng.integers(-2, 3, size=(len(part), classes)).astype(np.float32)
            logits += rng.normal(scale=0.5, size=logits.shape).astype(np.float32) * (
                rng.random(logits.shape) < 0.5
            )
            if epoch == 3 and rank == 1:
                logits[0, 1] = np.nan  # one NaN row
            targets = rng.integers(0, classes, size=len(part))
            batches.append((epoch, rank, logits, targets, part.astype(np.int64)))
    return batches


def write(run_dir: Path, batches: list[Batch]) -> Path:
    for rank in (0, 1):
        with LogitLogger(run_dir, rank=rank, world_size=2) as logger:
            for epoch, r, logits, targets, ids in batches:
                if r == rank:
                    logger.log(torch.from_numpy(logits), targets, ids, epoch=epoch)
    return run_dir


def reference(batches: list[Batch], duplicates: str = "first") -> dict[int, dict[str, object]]:
    """Every signal of every sample by a plain loop over its measurements."""
    rows: dict[int, list[tuple[np.ndarray, int]]] = {}
    seen: set[tuple[int, int]] = set()
    for epoch, _rank, logits, targets, ids in sorted(batches, key=lambda b: (b[0], b[1])):
        for z, y, sid in zip(logits, targets, ids, strict=True):
            key = (epoch, int(sid))
            if duplicates == "first" and key in seen:
                continue
            seen.add(key)
            rows.setdefault(int(sid), []).append((z.astype(np.float64), int(y)))
    out = {}
    for sid, measured in rows.items():
        p_y, correct, el2n, loss, margins = [], [], [], [], []
        for z, y in measured:
            top = max(z)  # NaN handled below
            if any(math.isnan(v) for v in z):
                p_y.append(math.nan)
                correct.append(math.nan)
                el2n.append(math.nan)
                loss.append(math.nan)
            else:
                exp = [math.exp(v - top) for v in z]
                total = sum(exp)
                p = [e / total for e in exp]
                p_y.append(p[y])
                correct.append(1.0 if int(np.argmax(z)) == y else 0.0)
                el2n.append(math.sqrt(sum((pk - (k == y)) ** 2 for k, pk in enumerate(p))))
                loss.append(top + math.log(total) - z[y])
            z32 = z.astype(np.float32)
            others = [v for k, v in enumerate(z32) if k != y]
            margins.append(float(np.float32(z32[y] - max(others))))
        nan = any(math.isnan(c) for c in correct)
        events = sum(1 for a, b in itertools.pairwise(correct) if a == 1 and b == 0)
        out[sid] = {
            "target": measured[-1][1],
            "num_measurements": len(measured),
            "confidence": float(np.mean(p_y)),
            "variability": float(np.std(p_y)),
            "correctness": float(np.mean(correct)),
            "forgetting_events": None if nan else events,
            "never_learned": None if nan else not any(c == 1 for c in correct),
            "el2n": float(np.mean(el2n)),
            "loss": float(np.mean(loss)),
            "aleatoric": float(np.mean([p * (1 - p) for p in p_y])),
        }
    return out


def assert_matches(table: pl.DataFrame, expected: dict[int, dict[str, object]]) -> None:
    assert table["sample_id"].to_list() == sorted(expected)
    for row in table.iter_rows(named=True):
        want = expected[row["sample_id"]]
        for name, value in want.items():
            got = row[name]
            if isinstance(value, float):
                assert (math.isnan(value) and math.isnan(got)) or math.isclose(
                    got, value, rel_tol=1e-12, abs_tol=1e-15
                ), (row["sample_id"], name, got, value)
            else:
                assert got == value, (row["sample_id"], name, got, value)


@pytest.mark.parametrize("duplicates", ["first", "all"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_signal_matches_the_plain_loop(tmp_path: Path, seed: int, duplicates: str) -> None:
    batches = random_logs(seed)
    run = write(tmp_path / "run", batches)
    table = dynamics(run, duplicates=duplicates)  # type: ignore[arg-type]
    assert_matches(table, reference(batches, duplicates))
    assert table.filter(pl.col("forgetting_events").is_null()).height >= 1  # the NaN row's


def test_aum_is_computes_bit_for_bit_and_the_file_is_written(tmp_path: Path) -> None:
    run = write(tmp_path / "run", random_logs(2))
    table = dynamics(run, tmp_path / "dyn", epochs="1:")
    result = compute(run, None, epochs="1:")
    by_id = dict(zip(result.aum["sample_id"].to_list(), result.aum["aum"].to_list(), strict=True))
    for sid, value in zip(table["sample_id"].to_list(), table["aum"].to_list(), strict=True):
        assert (math.isnan(value) and math.isnan(by_id[sid])) or value == by_id[sid]
    text = (tmp_path / "dyn" / DYNAMICS_NAME).read_text().splitlines()
    assert text[0] == "sample_id,target,num_measurements," + ",".join(METRICS)
    assert len(text) == table.height + 1
    back = pl.read_csv(tmp_path / "dyn" / DYNAMICS_NAME)
    assert back["sample_id"].to_list() == table["sample_id"].to_list()
    assert np.array_equal(back["aum"].to_numpy(), table["aum"].to_numpy(), equal_nan=True)


def test_metrics_selects_columns_and_bad_ones_are_refused(tmp_path: Path) -> None:
    run = write(tmp_path / "run", random_logs(3))
    table = dynamics(run, metrics=["confidence", "aum"])
    assert table.columns == ["sample_id", "target", "num_measurements", "confidence", "aum"]
    result = runner.invoke(app, ["dynamics", str(run), "-o", str(tmp_path / "o"),
                                 "--metrics", "confidence,nope"])  # fmt: skip
    assert result.exit_code == 1 and "unknown metric" in result.stderr
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["dynamics", str(run), "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "samples" in result.stdout and f"wrote {tmp_path / 'd' / DYNAMICS_NAME}" in result.stdout


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["float16", "float32", "float64"]))
def test_block_stats_match_each_row_by_the_definitions(seed: int, dtype: str) -> None:
    """The kernel's per-row statistics against a row-by-row loop: ties, NaN, +-inf, any dtype.

    ``correct`` exactly (numpy's argmax, lowest index among equal maxima); the softmax ones to
    float64 rounding; every statistic NaN on a row with a NaN.
    """
    rng = np.random.default_rng(seed)
    logits = rng.integers(-2, 3, size=(40, 5)).astype(dtype)  # small integers: many ties
    noisy = rng.random(logits.shape) < 0.5
    logits[noisy] += rng.normal(scale=0.5, size=int(noisy.sum())).astype(dtype)
    logits[1, 2] = np.nan
    logits[2, :] = -np.inf
    logits[3, 0] = -np.inf
    labels = rng.integers(0, 5, size=40)
    labels[2] = 3
    stats = block_stats(logits.copy(), labels, dtype, STATS)
    for r, (z32, y) in enumerate(zip(logits, labels, strict=True)):
        z = z32.astype(np.float64)
        if np.isnan(z).any():
            for name in ("correct", "p_target", "el2n", "loss", "margin"):
                assert math.isnan(stats[name][r]), (name, r)
            continue
        assert stats["correct"][r] == float(int(np.argmax(z)) == y), r
        if np.isinf(z).any() and not np.isfinite(z.max()):
            continue  # -inf everywhere: no softmax to compare with
        exp = np.exp(z - z.max())
        p = exp / exp.sum()
        want = {
            "p_target": p[y],
            "el2n": math.sqrt(sum((pk - (k == y)) ** 2 for k, pk in enumerate(p))),
            "loss": z.max() + math.log(exp.sum()) - z[y],
        }
        for name, value in want.items():
            assert math.isclose(stats[name][r], value, rel_tol=1e-12, abs_tol=1e-15), (name, r)
