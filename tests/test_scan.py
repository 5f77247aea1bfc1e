"""One pass over a run's sample ids (``scan_ids``) and the id -> dense index map (``IdIndex``).

Both are checked against brute force on random runs: ids dense or sparse, ints or strings,
several ranks per epoch, ids repeated inside an epoch (DDP padding) or not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aum_replay import LogitLogger, compute
from aum_replay import run as run_module
from aum_replay.format import ShardReader
from aum_replay.run import IdIndex, index_of, open_run, scan_ids

Epochs = list[list[list[int]]]  # epoch -> rank -> ids


@st.composite
def runs(draw: st.DrawFn) -> tuple[Epochs, str]:
    kind = draw(st.sampled_from(["dense", "sparse", "str"]))
    size = draw(st.integers(1, 30))
    low = draw(st.integers(-50, 50))
    if kind == "sparse":
        pool = draw(
            st.lists(st.integers(-(2**40), 2**40), min_size=size, max_size=size, unique=True)
        )
    else:
        pool = list(range(low, low + size))
    epochs: Epochs = []
    for _ in range(draw(st.integers(1, 4))):
        ranks = []
        for _ in range(draw(st.integers(1, 3))):
            ranks.append(draw(st.lists(st.sampled_from(pool), min_size=0, max_size=12)))
        epochs.append(ranks)
    return epochs, kind


def write(run_dir: Path, epochs: Epochs, kind: str, storage: str = "auto") -> None:
    world = max(len(ranks) for ranks in epochs)
    loggers = [
        LogitLogger(run_dir, rank=r, world_size=world, storage=storage) for r in range(world)
    ]
    for epoch, ranks in enumerate(epochs):
        for rank, ids in enumerate(ranks):
            if ids:
                values = [str(i) for i in ids] if kind == "str" else ids
                loggers[rank].log(torch.zeros(len(ids), 2), [0] * len(ids), values, epoch=epoch)
        for logger in loggers:
            logger.end_epoch()
    for logger in loggers:
        logger.close()


@settings(max_examples=40, deadline=None)
@given(runs(), st.sampled_from(["auto", "summary"]))
def test_scan_ids_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[Epochs, str], storage: str
) -> None:
    """The universe and appearances; and where the scan keeps every row's index (string ids,
    and int ids of summary shards), that each is its id's place in the universe."""
    epochs, kind = case
    if not any(ids for ranks in epochs for ids in ranks):
        return  # nothing logged: no shard
    run_dir = tmp_path_factory.mktemp("run")
    write(run_dir, epochs, kind, storage)
    run = open_run(run_dir)
    scan = scan_ids(run.shards, run.id_kind)
    if kind == "str" or storage == "summary":
        assert scan.rows is not None
        position = {key: k for k, key in enumerate(scan.universe.tolist())}
        for shard in run.shards:
            with ShardReader(shard.path, info=shard) as reader:
                ids = [position[i] for i in reader.read_ids().tolist()]
            assert scan.rows[shard.path].tolist() == ids
    else:  # int ids of logits: the replay maps them as it reads them
        assert scan.rows is None
    # only epochs with rows have shards
    logged = [[ids for ids in ranks if ids] for ranks in epochs]
    rows = [[i for ids in ranks for i in ids] for ranks in logged if ranks]
    every = sorted({i for epoch in rows for i in epoch})
    if kind == "str":
        assert scan.universe.tolist() == sorted(str(i) for i in every)
    else:
        assert scan.universe.tolist() == every
    clean = all(len(set(epoch)) == len(epoch) for epoch in rows)
    if scan.appearances is not None:
        assert clean
        appearances = Counter(i for epoch in rows for i in set(epoch))
        if kind == "str":  # the universe's order: the strings', not the ints' ("10" < "2")
            every = sorted(every, key=str)
        assert scan.appearances.tolist() == [appearances[i] for i in every]
    else:
        assert not clean or kind != "dense"  # dense ids always get the cheap check


def test_the_id_table_widens_for_later_shards_with_lower_and_higher_ids(tmp_path: Path) -> None:
    # The first shard spans 40..49 only; later epochs reach below and above it.
    write(tmp_path, [[list(range(40, 50))], [list(range(0, 45))], [list(range(45, 120))]], "dense")
    run = open_run(tmp_path)
    scan = scan_ids(run.shards, run.id_kind)
    assert scan.universe.tolist() == list(range(120))
    assert scan.appearances is not None
    expected = [1] * 40 + [2] * 10 + [1] * 70
    assert scan.appearances.tolist() == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40, unique=True),
    st.sampled_from(["consecutive", "compact", "sparse"]),
    st.data(),
)
def test_id_index_matches_a_binary_search(ids: list[int], shape: str, data: st.DataObject) -> None:
    if shape == "consecutive":
        ids = list(range(ids[0], ids[0] + len(ids)))
    elif shape == "compact":
        ids = sorted({ids[0] + abs(i) % (3 * len(ids)) for i in ids})
    universe = np.array(sorted(ids), dtype=np.int64)
    queries = np.array(data.draw(st.lists(st.sampled_from(ids), max_size=30)), dtype=np.int64)
    index = IdIndex(universe, "int")(queries.copy())
    assert index.dtype == np.int64
    assert index.tolist() == index_of(universe, queries, "int").tolist()
    assert universe[index].tolist() == queries.tolist()


@settings(max_examples=30, deadline=None)
@given(runs(), st.sampled_from([1, 5]))
def test_the_string_scan_in_small_pieces_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[Epochs, str], piece: int
) -> None:
    """Pieces of a few rows (run.PIECE_ROWS; chunks of 4 rows of 64 logits): ids new in later
    epochs and in any piece, repeats inside an epoch and across its ranks' shards, empty ranks;
    every row's resolved index is its id's place in the sorted universe."""
    epochs, _ = case
    if not any(ids for ranks in epochs for ids in ranks):
        return
    run_dir = tmp_path_factory.mktemp("run")
    world = max(len(ranks) for ranks in epochs)
    loggers = [
        LogitLogger(run_dir, rank=r, world_size=world, chunk_bytes=1024) for r in range(world)
    ]
    for epoch, ranks in enumerate(epochs):
        for rank, ids in enumerate(ranks):
            if ids:
                values = [f"id-{i}" for i in ids]
                logits = torch.zeros(len(ids), 64)
                loggers[rank].log(logits, [0] * len(ids), values, epoch=epoch)
        for logger in loggers:
            logger.end_epoch()
    for logger in loggers:
        logger.close()
    run = open_run(run_dir)
    assert max(s.group_rows for s in run.shards) <= 4  # several pieces a shard
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "PIECE_ROWS", piece)
        scan = scan_ids(run.shards, run.id_kind)
    universe = sorted({f"id-{i}" for ranks in epochs for ids in ranks for i in ids})
    assert scan.universe.tolist() == universe
    position = {key: k for k, key in enumerate(universe)}
    assert scan.rows is not None
    for shard in run.shards:
        with ShardReader(shard.path, info=shard) as reader:
            ids = [position[i] for i in reader.read_ids().tolist()]
        assert scan.rows[shard.path].tolist() == ids
    rows = [[i for ids in ranks for i in ids] for ranks in epochs if any(ranks)]
    clean = all(len(set(epoch)) == len(epoch) for epoch in rows)
    assert (scan.appearances is not None) == clean
    if scan.appearances is not None:
        appearances = Counter(f"id-{i}" for epoch in rows for i in set(epoch))
        assert scan.appearances.tolist() == [appearances[key] for key in universe]


def test_appearances_follow_the_string_order_of_the_universe(tmp_path: Path) -> None:
    """The example hypothesis found: "10" sorts before "2", and "2" is in both epochs."""
    write(tmp_path / "run", [[[2]], [[2, 10]]], "str")
    run = open_run(tmp_path / "run")
    scan = scan_ids(run.shards, run.id_kind)
    assert scan.universe.tolist() == ["10", "2"]
    assert scan.appearances is not None and scan.appearances.tolist() == [1, 2]


def test_labels_come_from_the_last_epoch_only_when_every_sample_is_in_every_epoch(
    tmp_path: Path,
) -> None:
    """IdScan.labels_epoch: the last epoch where each sample has a row in every epoch (its
    last row is there); None when one is missing from an epoch or an epoch holds an id twice;
    and a replay's targets are each sample's last label either way (labels change here)."""

    def logged(name: str, epochs: list[tuple[list[int], list[int]]]) -> Path:
        with LogitLogger(tmp_path / name) as logger:
            for epoch, (ids, targets) in enumerate(epochs):
                logger.log(torch.zeros(len(ids), 3), targets, ids, epoch=epoch)
                logger.end_epoch()
        return tmp_path / name

    def targets(run_dir: Path) -> dict[int, int]:
        table = compute(run_dir, None).aum
        return dict(zip(table["sample_id"].to_list(), table["target"].to_list(), strict=True))

    every = logged(
        "every", [([0, 1, 2], [0, 0, 0]), ([2, 0, 1], [1, 1, 1]), ([1, 2, 0], [2, 0, 1])]
    )
    run = open_run(every)
    assert scan_ids(run.shards, run.id_kind).labels_epoch(run.shards) == 2
    assert targets(every) == {0: 1, 1: 2, 2: 0}
    missing = logged("missing", [([0, 1, 2], [2, 2, 2]), ([0, 1], [1, 1])])
    run = open_run(missing)
    assert scan_ids(run.shards, run.id_kind).labels_epoch(run.shards) is None
    assert targets(missing) == {0: 1, 1: 1, 2: 2}  # sample 2's last row is in epoch 0
    twice = logged("twice", [([0, 1, 1], [0, 0, 0]), ([0, 1], [0, 0])])
    run = open_run(twice)
    assert scan_ids(run.shards, run.id_kind).labels_epoch(run.shards) is None
