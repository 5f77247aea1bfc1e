"""A real 2-process DistributedDataParallel run on CPU (gloo): one shard per rank per epoch.

``DistributedSampler`` pads each epoch of 101 samples to 102 so that both ranks get 51 rows: one
sample is seen twice per epoch, on different ranks. The replay counts it once by default and
every row with ``duplicates="all"``, as the original library did.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from aum import AUMCalculator
from typer.testing import CliRunner

import aum_replay
from aum_replay.cli import app
from aum_replay.format import ShardReader, list_shards, list_temporaries
from aum_replay.run import describe_run

pytestmark = pytest.mark.slow

N, C, EPOCHS, WORLD, SEED = 101, 3, 3, 2, 7

TRAIN = f"""
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from aum_replay import LogitLogger

torch.set_num_threads(1)
rank, run_dir, init = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size={WORLD})
g = torch.Generator().manual_seed(0)
x = torch.randn({N}, 8, generator=g)
y = torch.randint(0, {C}, ({N},), generator=g)
dataset = TensorDataset(x, y, torch.arange({N}))
sampler = DistributedSampler(dataset, shuffle=True, seed={SEED})
loader = DataLoader(dataset, batch_size=16, sampler=sampler)
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, {C})))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with LogitLogger(run_dir, metadata={{"world": {WORLD}}}) as logger:
    assert (logger.rank, logger.world_size) == (rank, {WORLD}), (logger.rank, logger.world_size)
    for epoch in range({EPOCHS}):
        sampler.set_epoch(epoch)
        for inputs, targets, ids in loader:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            logger.log(logits, targets, ids, epoch=epoch)
        logger.end_epoch()
dist.barrier()
dist.destroy_process_group()
print("rank", rank, "done", flush=True)
"""


def sampler_order(epoch: int) -> list[int]:
    """The 102 indices DistributedSampler deals out in ``epoch`` (shuffled, then padded)."""
    g = torch.Generator()
    g.manual_seed(SEED + epoch)
    indices = torch.randperm(N, generator=g).tolist()
    total = -(-N // WORLD) * WORLD
    return indices + indices[: total - N]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    script = root / "train.py"
    script.write_text(textwrap.dedent(TRAIN))
    run_dir = root / "run"
    init = f"file://{root / 'rendezvous'}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(run_dir), init],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WORLD)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120))
    finally:
        for proc in procs:
            proc.kill()
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{err}"
        assert f"rank {rank} done" in out
    return run_dir


def rows_in_measurement_order(run_dir: Path) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    out = []
    for _, _, path in list_shards(run_dir):  # epochs ascending, then ranks ascending
        with ShardReader(path) as reader:
            logits, targets = reader.read_block(0, reader.info.num_rows)
            out.append((logits, targets, reader.read_ids()))
    return out


def reference(run_dir: Path, *, drop_repeats: bool) -> dict[int, tuple[float, int]]:
    """The original library fed the same rows; optionally without an epoch's repeated ids."""
    calc = AUMCalculator("unused")
    seen_in_epoch: dict[int, set[int]] = {}
    shards = list_shards(run_dir)
    for (epoch, _, _), (logits, targets, ids) in zip(
        shards, rows_in_measurement_order(run_dir), strict=True
    ):
        keep = np.ones(len(ids), dtype=bool)
        if drop_repeats:
            seen = seen_in_epoch.setdefault(epoch, set())
            for i, sample in enumerate(ids.tolist()):
                keep[i] = sample not in seen
                seen.add(sample)
        rows = torch.from_numpy(np.flatnonzero(keep))
        calc.update(logits[rows], torch.from_numpy(targets)[rows], ids[keep].tolist())
    return {k: (calc.sums[k] / calc.counts[k], calc.counts[k]) for k in calc.counts}


def as_dict(result: aum_replay.ComputeResult) -> dict[int, tuple[float, int]]:
    return {
        r["sample_id"]: (r["aum"], r["num_measurements"]) for r in result.aum.iter_rows(named=True)
    }


def test_one_shard_per_rank_per_epoch_in_sampler_order(ddp_run: Path) -> None:
    shards = list_shards(ddp_run)
    assert [(e, r) for e, r, _ in shards] == [(e, r) for e in range(EPOCHS) for r in range(WORLD)]
    assert list_temporaries(ddp_run) == []
    for epoch, rank, path in shards:
        with ShardReader(path) as reader:
            info = reader.info
            assert (info.epoch, info.rank, info.world_size) == (epoch, rank, WORLD)
            assert info.num_rows == 51 and info.num_classes == C
            assert info.metadata == {"world": WORLD}
            # Rows in the order this rank's sampler dealt them out.
            assert reader.read_ids().tolist() == sampler_order(epoch)[rank::WORLD]


def test_info_reports_the_padding_duplicates(ddp_run: Path) -> None:
    summary = describe_run(ddp_run)
    assert summary.num_samples == N
    for e in summary.epochs:
        assert (e.ranks, e.rows, e.distinct_ids) == ((0, 1), 2 * 51, N)
        assert (e.duplicate_rows, e.missing_ids) == (1, 0)

    result = CliRunner().invoke(app, ["info", str(ddp_run)])
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines()]
    epoch_rows = [row for row in table if row and row[0] in {"0", "1", "2"}]
    assert [row[:6] for row in epoch_rows] == [
        [str(e), "2", "102", "101", "1", "0"] for e in range(EPOCHS)
    ]


def test_replay_counts_each_sample_once_per_epoch_by_default(ddp_run: Path) -> None:
    result = aum_replay.compute(ddp_run)
    assert result.duplicates_dropped == EPOCHS
    assert result.num_measurements == EPOCHS * N
    assert set(result.aum["num_measurements"].to_list()) == {EPOCHS}
    assert as_dict(result) == reference(ddp_run, drop_repeats=True)


def test_replay_counts_every_row_with_duplicates_all(ddp_run: Path) -> None:
    result = aum_replay.compute(ddp_run, duplicates="all")
    assert result.duplicates_dropped == 0
    assert result.num_measurements == EPOCHS * 2 * 51
    padded = [sampler_order(e)[N] for e in range(EPOCHS)]
    counts = dict(zip(*result.aum.select("sample_id", "num_measurements"), strict=True))
    for sample, count in counts.items():
        assert count == EPOCHS + padded.count(sample)
    assert as_dict(result) == reference(ddp_run, drop_repeats=False)
