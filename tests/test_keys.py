"""String ids by hash (aum_replay.keys): lookups are checked against the keys, collisions fall
back to comparing bytes, and a replay of string ids is the same either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aum_replay import LogitLogger, compute, keys
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.format import read_all_id_keys
from aum_replay.keys import Collision, HashIndex, hash_keys, unique_keys
from aum_replay.run import open_run, scan_ids

ids = st.text(  # what a logger stores: UTF-8 encodable (no lone surrogates), no NUL
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20
)


@given(st.lists(ids, min_size=1, max_size=40))
def test_hashes_do_not_depend_on_the_array_width(values: list[str]) -> None:
    narrow = np.array([v.encode() for v in values], dtype=np.bytes_)
    wide = narrow.astype(f"S{narrow.dtype.itemsize + 11}")
    assert np.array_equal(hash_keys(narrow), hash_keys(wide))


@given(st.lists(ids, min_size=1, max_size=60))
def test_unique_keys_and_the_index_agree_with_sorting_the_strings(values: list[str]) -> None:
    raw = np.array([v.encode() for v in values], dtype=np.bytes_)
    picks, inverse = unique_keys(raw)
    distinct = raw[picks]
    assert distinct.tolist() == sorted(set(raw.tolist()))  # sorted as the bytes compare
    assert np.array_equal(distinct[inverse], raw)
    universe = distinct[::-1]  # any order
    index = HashIndex(universe)(raw)
    assert index is not None and np.array_equal(universe[index], raw)
    assert HashIndex(universe)(np.array([b"\x01not there"])) is None


def test_a_collision_is_detected_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "hash_words", lambda w: np.zeros(len(w), dtype=np.uint64))
    picks, _ = unique_keys(np.array([b"a", b"b"]))  # exact: bytes, not hashes
    assert len(picks) == 2
    with pytest.raises(Collision):
        HashIndex(np.array([b"a", b"b"]))


def record(run: Path) -> Path:
    rng = np.random.default_rng(1)
    names = [f"id-{i}-{'é' * (i % 3)}" for i in range(80)]
    with LogitLogger(run, rank=0, world_size=1) as logger:
        for epoch in range(3):
            order = [*rng.permutation(80).tolist(), 0, 1]  # two ids twice: not a clean run
            batch = [names[i] for i in order]
            logits = torch.from_numpy(rng.standard_normal((len(batch), 5)).astype(np.float32))
            logger.log(logits, [i % 5 for i in order], batch, epoch=epoch)
            logger.end_epoch()
    return run


def test_a_replay_is_the_same_when_every_hash_collides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = record(tmp_path / "run")
    opened = open_run(run, None)
    scan = scan_ids(opened.shards, "str")
    assert scan.appearances is None  # the repeated ids were seen
    compute(run, tmp_path / "hashed")
    monkeypatch.setattr(keys, "hash_words", lambda w: np.zeros(len(w), dtype=np.uint64))
    fallback = scan_ids(opened.shards, "str")
    assert fallback.rows is None  # the scan by hash gave up: the bytes were compared instead
    assert np.array_equal(fallback.universe, scan.universe)
    compute(run, tmp_path / "bytes")
    for name in (VALUES_NAME, FULL_NAME):
        assert (tmp_path / "hashed" / name).read_bytes() == (tmp_path / "bytes" / name).read_bytes()


@pytest.mark.parametrize("pad", [0, 2])
def test_the_merge_by_hash_scans_int_ids_as_the_stamp_table_does(tmp_path: Path, pad: int) -> None:
    """scan_epochs (the Dask scan's merge) and scan_pieces (the string scan's, in pieces of
    one row) against scan_ids' own int path, clean or not."""
    from aum_replay import run as run_module
    from aum_replay.run import _piece_keys, scan_epochs, scan_pieces

    rng = np.random.default_rng(pad)
    run = tmp_path / "run"
    with LogitLogger(run) as logger:
        for epoch in range(3):
            order = rng.permutation(np.arange(-20, 120, 3)).tolist()[: 40 - epoch]
            order += order[:pad]  # ids twice in the epoch: not a clean run
            logits = torch.from_numpy(rng.standard_normal((len(order), 4)).astype(np.float32))
            logger.log(logits, [abs(i) % 4 for i in order], order, epoch=epoch)
            logger.end_epoch()
    shards = open_run(run, None).shards
    epochs = [([read_all_id_keys(shard)], shard.num_rows) for shard in shards]  # a shard an epoch
    merged, stamped = scan_epochs(iter(epochs), "int"), scan_ids(shards, "int")
    assert np.array_equal(merged.universe, stamped.universe) and merged.keys is None
    assert (merged.appearances is None) == (stamped.appearances is None) == (pad > 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "PIECE_ROWS", 1)
        pieces = scan_pieces(_piece_keys(shards), "int")
    assert np.array_equal(pieces.universe, stamped.universe)
    assert (pieces.appearances is None) == (pad > 0)
    if stamped.appearances is not None:
        assert np.array_equal(merged.appearances, stamped.appearances)


def test_rows_resolved_by_the_scan_replay_as_rows_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan hands the replay every row's index (IdScan.rows); past RESOLVED_BYTES the
    replay looks the ids up itself. Both give the same files, and the indices are the lookups'."""
    import pickle

    from aum_replay import run as run_module
    from aum_replay.run import IdIndex

    run = record(tmp_path / "run")
    opened = open_run(run, None)
    scan = scan_ids(opened.shards, "str")
    assert scan.rows is not None and set(scan.rows) == {s.path for s in opened.shards}
    index = IdIndex(scan.index_keys, "str")
    for shard in opened.shards:
        looked_up = index(read_all_id_keys(shard))
        assert np.array_equal(scan.rows[shard.path], looked_up)
    assert np.array_equal(pickle.loads(pickle.dumps(index))(scan.keys[::-1]), np.arange(80)[::-1])
    compute(run, tmp_path / "resolved")
    monkeypatch.setattr(run_module, "RESOLVED_BYTES", 0)
    assert scan_ids(opened.shards, "str").rows is None
    compute(run, tmp_path / "looked-up")
    for name in (VALUES_NAME, FULL_NAME):
        a, b = (tmp_path / "resolved" / name), (tmp_path / "looked-up" / name)
        assert a.read_bytes() == b.read_bytes()


@given(
    st.lists(st.lists(st.text("abcé", min_size=1, max_size=19), max_size=30), max_size=5),
    st.booleans(),
)
def test_the_scan_of_epochs_is_the_plain_one(epochs: list[list[str]], split: bool) -> None:
    """scan_epochs against sets and counts: later epochs may bring new (smaller) ids and
    repeats, and shards of one epoch may store their keys at different widths."""
    from aum_replay.run import scan_epochs

    def shards(values: list[str]) -> list[np.ndarray]:
        raw = [v.encode() for v in values]
        if not split or len(raw) < 2:
            return [np.array(raw, dtype=np.bytes_)]
        half = len(raw) // 2  # the second shard stored 7 bytes wider than it needs
        wide = np.array(raw[half:], dtype=np.bytes_)
        return [np.array(raw[:half], dtype=np.bytes_), wide.astype(f"S{wide.itemsize + 7}")]

    given_epochs = [(shards(values), len(values)) for values in epochs if values]
    resolved = np.full(sum(len(values) for values in epochs), -1, dtype=np.int32)
    scan = scan_epochs(iter(given_epochs), "str", resolved)
    universe = sorted({v.encode() for values in epochs for v in values})
    assert scan.keys is not None and scan.keys.tolist() == universe
    position = {key: i for i, key in enumerate(universe)}
    rows = [position[v.encode()] for values in epochs for v in values]
    assert resolved.tolist() == rows
    clean = all(len(set(values)) == len(values) for values in epochs)
    assert (scan.appearances is not None) == clean
    if scan.appearances is not None:
        per_key = [sum(key.decode() in values for values in epochs) for key in universe]
        assert scan.appearances.tolist() == per_key


def test_the_index_finds_keys_stored_narrower_or_wider_than_its_universe() -> None:
    universe = np.array([b"a", b"bcdefghij", b"klmnopqrstuvwxyz0"])  # S17: three words
    index = HashIndex(universe)
    assert index.find(np.array([b"klmnopqrstuvwxyz0", b"a"])).tolist() == [2, 0]  # S17
    assert index.find(np.array([b"bcdefghij", b"a"])).tolist() == [1, 0]  # S9: two words
    assert index.find(np.array([b"a"])).tolist() == [0]  # S1: one word
    wide = np.array([b"a", b"klmnopqrstuvwxyz0-longer-than-any"])  # S33: five words
    assert index.find(wide).tolist() == [0, -1]
    assert index.find(np.array([b"b"])).tolist() == [-1]


def test_keys_whose_hashes_share_a_slot_tag_are_told_apart_by_their_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot keeps the top 32 bits of its key's hash: with every tag equal (the hashes' low
    bits kept only), lookups go by the words, and a replay is the same."""
    real = keys.hash_words
    low = np.uint64(0xFFFFFFFF)
    run = record(tmp_path / "run")
    compute(run, tmp_path / "tagged")
    monkeypatch.setattr(keys, "hash_words", lambda w: real(w) & low)
    universe = np.array([f"k{i}".encode() for i in range(300)])
    index = HashIndex(universe)
    order = np.random.default_rng(3).permutation(300)
    assert index.find(universe[order]).tolist() == order.tolist()
    assert index.find(np.array([b"k300", b"k-1", b"k1"])).tolist() == [-1, -1, 1]
    compute(run, tmp_path / "one-tag")
    for name in (VALUES_NAME, FULL_NAME):
        assert (tmp_path / "tagged" / name).read_bytes() == (
            tmp_path / "one-tag" / name
        ).read_bytes()
