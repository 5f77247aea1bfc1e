"""Test helper shared by test modules: what a run directory holds, shard by shard."""

from __future__ import annotations

from pathlib import Path

import torch

from aum_replay.format import ShardReader, list_shards


def shard_rows(run_dir: Path) -> dict[tuple[int, int], tuple[torch.Tensor, list[int]]]:
    """``(epoch, rank) -> (logits, sample ids)`` of every published shard of ``run_dir``."""
    out = {}
    for epoch, rank, path in list_shards(run_dir):
        with ShardReader(path) as reader:
            logits, _ = reader.read_block(0, reader.info.num_rows)
            out[(epoch, rank)] = (logits, reader.read_ids().tolist())
    return out
