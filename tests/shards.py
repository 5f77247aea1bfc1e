"""Test helpers shared by test modules: runs written like DDP writes them, what a run
directory holds shard by shard, outputs compared byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from aum_replay import LogitLogger
from aum_replay.format import ShardReader, list_shards


def shard_rows(run_dir: Path) -> dict[tuple[int, int], tuple[torch.Tensor, list[int]]]:
    """``(epoch, rank) -> (logits, sample ids)`` of every published shard of ``run_dir``."""
    out = {}
    for epoch, rank, path in list_shards(run_dir):
        with ShardReader(path) as reader:
            logits, _ = reader.read_block(0, reader.info.num_rows)
            out[(epoch, rank)] = (logits, reader.read_ids().tolist())
    return out


def ddp_run(
    run_dir: Path,
    *,
    ids: list[Any],
    epochs: int = 4,
    world_size: int = 2,
    pad: int = 3,
    classes: int = 7,
    storage: Any = "auto",
    seed: int = 0,
) -> Path:
    """A run like DDP writes it: each epoch a permutation padded with ``pad`` repeated ids,
    split over ``world_size`` ranks; integer-valued logits (ties) with noise."""
    rng = np.random.default_rng(seed)
    labels = {i: int(rng.integers(0, classes)) for i in ids}
    plans = []
    for _ in range(epochs):
        order = list(rng.permutation(len(ids)))
        order += order[:pad]
        plans.append([[ids[k] for k in order[r::world_size]] for r in range(world_size)])
    for rank in range(world_size):
        with LogitLogger(run_dir, rank=rank, world_size=world_size, storage=storage) as logger:
            for epoch, parts in enumerate(plans):
                part = parts[rank]
                for lo in range(0, len(part), 64):
                    batch = part[lo : lo + 64]
                    logits = rng.integers(-2, 3, size=(len(batch), classes)).astype(np.float32)
                    logits += rng.normal(scale=0.3, size=logits.shape).astype(np.float32) * (
                        rng.random(logits.shape) < 0.5
                    )
                    targets = [labels[i] for i in batch]
                    logger.log(torch.from_numpy(logits), targets, batch, epoch=epoch)
                logger.end_epoch()
    return run_dir


def same_files(a: Path, b: Path, names: tuple[str, ...]) -> None:
    """Assert that the files ``names`` of ``a`` and ``b`` hold the same bytes."""
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
