"""LogitLogger end to end: what goes in through ``log`` comes back out of the shards and the replay.

Every test writes a small run to ``tmp_path`` on the CPU. The reference for AUM values is the
original ``aum`` library fed the same tensors, one update per epoch (it sums margins per row, so
batching does not change its result).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from aum import AUMCalculator

import aum_replay
from aum_replay import AumReplayError, InputError, LogitLogger
from aum_replay.format import ShardReader, ShardWriter, list_shards, list_temporaries, read_info
from aum_replay.run import describe_run

C = 5
N = 23


def make_epoch(
    epoch: int, *, n: int = N, c: int = C, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One epoch's rows: logits (n, c) in ``dtype``, targets (n,), ids (n,) in a shuffled order."""
    g = torch.Generator().manual_seed(1000 * seed + epoch)
    logits = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    order = torch.randperm(n, generator=g).numpy()
    return logits, targets, order


def id_form(kind: str, ids: np.ndarray) -> Any:
    """``ids`` (int positions) in the form a user would pass for ``kind``."""
    if kind == "tensor":
        return torch.as_tensor(ids, dtype=torch.long)
    if kind == "numpy":
        return ids.astype(np.int32)
    if kind == "list_int":
        return [int(i) for i in ids]
    if kind == "list_str":
        return [STR_IDS[i] for i in ids]
    raise AssertionError(kind)


# Unicode, CSV-hostile characters and a string that looks like a number.
STR_IDS = [
    f"{name}-{i}"
    for i, name in enumerate(
        ["img", "ümlaut", "日本", "a,b", 'q"t', "x\ny", " sp ", "007", "🙂", "tab\t"] * 3
    )
][:N]


def log_epochs(
    logger: LogitLogger,
    epochs: Sequence[tuple[int, torch.Tensor, torch.Tensor, Any]],
    batch: int = 8,
) -> None:
    """Log each ``(epoch, logits, targets, ids)`` in batches of ``batch`` rows."""
    for epoch, logits, targets, ids in epochs:
        for lo in range(0, len(targets), batch):
            hi = lo + batch
            logger.log(logits[lo:hi], targets[lo:hi], ids[lo:hi], epoch=epoch)


def read_shard(path: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray, Any]:
    with ShardReader(path) as reader:
        logits, targets = reader.read_block(0, reader.info.num_rows)
        return logits, targets, reader.read_ids(), reader.info


def reference_aum(
    epochs: Sequence[tuple[torch.Tensor, torch.Tensor, list[Any]]],
) -> dict[Any, tuple[float, int]]:
    """``{id: (aum, count)}`` from the original library, one ``update`` per epoch."""
    calc = AUMCalculator("unused", compressed=True)
    for logits, targets, ids in epochs:
        calc.update(logits, targets, ids)
    return {k: (calc.sums[k] / calc.counts[k], calc.counts[k]) for k in calc.counts}


def replay(run_dir: Path, **kwargs: Any) -> dict[Any, tuple[float, int]]:
    table = aum_replay.compute(run_dir, **kwargs).aum
    return {
        row["sample_id"]: (row["aum"], row["num_measurements"])
        for row in table.iter_rows(named=True)
    }


def bits(t: torch.Tensor) -> np.ndarray:
    """The raw bits of a tensor, so that equality is exact (NaN == NaN, -0.0 != 0.0)."""
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view).numpy()


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["tensor", "numpy", "list_int", "list_str"])
def test_every_id_kind_round_trips_to_shards_and_replay(tmp_path: Path, kind: str) -> None:
    rows = [make_epoch(e) for e in range(2)]
    with LogitLogger(tmp_path) as logger:
        log_epochs(logger, [(e, lg, t, id_form(kind, o)) for e, (lg, t, o) in enumerate(rows)])

    shards = list_shards(tmp_path)
    assert [(e, r) for e, r, _ in shards] == [(0, 0), (1, 0)]
    want_kind = "str" if kind == "list_str" else "int"
    for (_, _, path), (logits, targets, order) in zip(shards, rows, strict=True):
        got_logits, got_targets, got_ids, info = read_shard(path)
        assert info.id_kind == want_kind
        assert info.num_rows == N and info.num_classes == C
        assert info.world_size == 1 and info.rank == 0
        assert info.package_version == aum_replay.__version__
        np.testing.assert_array_equal(bits(got_logits), bits(logits))
        np.testing.assert_array_equal(got_targets, targets.numpy())
        expected_ids = [STR_IDS[i] for i in order] if want_kind == "str" else order.tolist()
        assert got_ids.tolist() == expected_ids

    ref_ids = [[STR_IDS[i] for i in o] if want_kind == "str" else o.tolist() for _, _, o in rows]
    want = reference_aum([(lg, t, ids) for (lg, t, _), ids in zip(rows, ref_ids, strict=True)])
    assert replay(tmp_path) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_every_logits_dtype_is_kept_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    rows = [make_epoch(e, dtype=dtype) for e in range(2)]
    with LogitLogger(tmp_path) as logger:
        log_epochs(logger, [(e, lg, t, o) for e, (lg, t, o) in enumerate(rows)])

    name = str(dtype).removeprefix("torch.")
    for (_, _, path), (logits, _, _) in zip(list_shards(tmp_path), rows, strict=True):
        got, _, _, info = read_shard(path)
        assert info.logits_dtype == name and info.stored_dtype == name
        assert got.dtype == dtype
        np.testing.assert_array_equal(bits(got), bits(logits))
    # The margin is taken in the logged precision, as the reference does with those tensors.
    assert replay(tmp_path) == reference_aum([(lg, t, o.tolist()) for lg, t, o in rows])


def test_float16_storage_halves_float32_logits_lossily(tmp_path: Path) -> None:
    rows = [make_epoch(e) for e in range(2)]
    with LogitLogger(tmp_path, storage="float16") as logger:
        log_epochs(logger, [(e, lg, t, o) for e, (lg, t, o) in enumerate(rows)])

    for (_, _, path), (logits, _, _) in zip(list_shards(tmp_path), rows, strict=True):
        got, _, _, info = read_shard(path)
        assert (info.logits_dtype, info.stored_dtype) == ("float32", "float16")
        np.testing.assert_array_equal(bits(got), bits(logits.half()))
    got_aum = replay(tmp_path)
    assert got_aum == reference_aum([(lg.half(), t, o.tolist()) for lg, t, o in rows])
    exact = reference_aum([(lg, t, o.tolist()) for lg, t, o in rows])
    diffs = [abs(got_aum[k][0] - exact[k][0]) for k in exact]
    assert 0 < max(diffs) < 0.05  # lossy, but only just


def test_float32_storage_widens_half_logits(tmp_path: Path) -> None:
    logits, targets, order = make_epoch(0, dtype=torch.float16)
    with LogitLogger(tmp_path, storage="float32") as logger:
        logger.log(logits, targets, order, epoch=0)
    got, _, _, info = read_shard(list_shards(tmp_path)[0][2])
    assert (info.logits_dtype, info.stored_dtype) == ("float16", "float32")
    np.testing.assert_array_equal(bits(got), bits(logits.float()))


def test_logits_with_grad_and_non_contiguous_are_copied(tmp_path: Path) -> None:
    weight = torch.randn(C, 7, requires_grad=True)
    x = torch.randn(N, 7)
    logits = (x @ weight.T).T.contiguous().T  # requires grad, column-major
    assert logits.requires_grad and not logits.is_contiguous()
    targets = torch.arange(N) % C
    with LogitLogger(tmp_path) as logger:
        logger.log(logits, targets, torch.arange(N), epoch=0)
    got, _, _, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(logits.detach()))


@pytest.mark.parametrize("batch", [7, 18, 19, 60])
def test_batches_straddling_chunk_boundaries(tmp_path: Path, batch: int) -> None:
    # chunk_bytes=1024 at C=10 float32 with int ids: 40 + 8 + 8 bytes a row -> 18 rows a chunk.
    n, c = 137, 10
    logits, targets, order = make_epoch(0, n=n, c=c)
    with LogitLogger(tmp_path, chunk_bytes=1024, max_pending=1) as logger:
        log_epochs(logger, [(0, logits, targets, order)], batch=batch)
    path = list_shards(tmp_path)[0][2]
    with h5py.File(path, "r") as f:
        assert f["logits"].chunks == (18, c)
        assert f["targets"].chunks == f["sample_ids"].chunks == (18,)
    got, got_targets, got_ids, info = read_shard(path)
    assert info.num_rows == n
    np.testing.assert_array_equal(bits(got), bits(logits))
    np.testing.assert_array_equal(got_targets, targets.numpy())
    np.testing.assert_array_equal(got_ids, order)


@pytest.mark.parametrize(
    ("c", "dtype", "kind"),
    [(2, torch.float16, "list_str"), (2, torch.float32, "tensor"), (100, torch.float32, "numpy")],
)
def test_chunks_of_all_datasets_stay_within_the_byte_budget(
    tmp_path: Path, c: int, dtype: torch.dtype, kind: str
) -> None:
    budget = 64 << 10
    logits, targets, order = make_epoch(0, c=c, dtype=dtype)
    long_logits = torch.cat([logits] * 400)
    long_targets = torch.cat([targets] * 400)
    long_ids = id_form(kind, np.concatenate([order] * 400))
    with LogitLogger(tmp_path, chunk_bytes=budget) as logger:
        logger.log(logits, targets, id_form(kind, order), epoch=0)  # shorter than one chunk
        logger.log(long_logits, long_targets, long_ids, epoch=1)  # many chunks
    short, long = (path for _, _, path in list_shards(tmp_path))
    ids = "sample_ids" if kind != "list_str" else "sample_id_ends"  # v2: one blob of UTF-8
    with h5py.File(short, "r") as f:
        # A short shard's chunk is exactly as long as the shard: no mostly-empty 2 MiB chunk.
        assert f["logits"].chunks[0] == f["targets"].chunks[0] == f[ids].chunks[0] == N
    with h5py.File(long, "r") as f:
        rows = f["logits"].chunks[0]
        assert f["targets"].chunks == f[ids].chunks == (rows,)
        assert rows < len(long_targets)
        row_bytes = sum(f[name].id.get_storage_size() for name in f) / (
            -(-len(long_targets) // rows) * rows
        )
    assert budget // 2 < rows * row_bytes <= budget
    assert short.stat().st_size < budget


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compression_option_round_trips(tmp_path: Path, compression: str) -> None:
    logits, targets, order = make_epoch(0)
    with LogitLogger(tmp_path, compression=compression) as logger:
        logger.log(logits, targets, order, epoch=0)
    path = list_shards(tmp_path)[0][2]
    with h5py.File(path, "r") as f:
        assert f["logits"].compression == compression
    got, _, _, _ = read_shard(path)
    np.testing.assert_array_equal(bits(got), bits(logits))


def test_empty_batches_record_nothing_and_do_not_fix_the_id_kind(tmp_path: Path) -> None:
    empty = torch.zeros(0, C)
    no_targets = torch.zeros(0, dtype=torch.long)
    with LogitLogger(tmp_path) as logger:
        logger.log(empty, no_targets, [], epoch=0)
        logger.log(torch.randn(2, C), [0, 1], ["a", "b"], epoch=0)
        logger.log(empty, no_targets, [], epoch=0)
        logger.log(torch.randn(1, C), [2], ["c"], epoch=0)
    _, _, ids, info = read_shard(list_shards(tmp_path)[0][2])
    assert info.id_kind == "str" and ids.tolist() == ["a", "b", "c"]


@pytest.mark.parametrize(
    "no_targets",
    [
        [],
        (),
        np.zeros(0),
        np.array([], dtype=object),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.bool),
    ],
    ids=["list", "tuple", "float64 array", "object array", "float tensor", "bool tensor"],
)
def test_an_empty_batch_is_nothing_to_log_whatever_its_empty_dtypes(
    tmp_path: Path, no_targets: Any
) -> None:
    # `targets=[]` was refused with "got float64 values"; an empty float id array likewise.
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.zeros(0, C), no_targets, no_targets, epoch=0)
        logger.log(torch.randn(2, C), [0, 1], [7, 8], epoch=0)
        logger.log(torch.zeros(0, C), no_targets, np.zeros(0), epoch=0)
    _, _, ids, info = read_shard(list_shards(tmp_path)[0][2])
    assert ids.tolist() == [7, 8] and info.num_rows == 2


# ---------------------------------------------------------------------- publishing


def test_a_new_epoch_publishes_the_previous_one(tmp_path: Path) -> None:
    logger = LogitLogger(tmp_path)
    logits, targets, order = make_epoch(0)
    logger.log(logits, targets, order, epoch=0)
    assert list_shards(tmp_path) == []  # an open epoch is never under its final name

    logger.log(logits, targets, order, epoch=1)
    assert [(e, r) for e, r, _ in list_shards(tmp_path)] == [(0, 0)]
    assert read_info(list_shards(tmp_path)[0][2]).num_rows == N  # whole once published

    path = logger.end_epoch()
    assert path == tmp_path / "epoch_00001.rank_000.h5"
    assert path.is_file() and read_info(path).num_rows == N
    assert logger.end_epoch() is None  # nothing open
    logger.close()
    logger.close()  # idempotent
    assert list_temporaries(tmp_path) == []
    with pytest.raises(AumReplayError, match="closed"):
        logger.log(logits, targets, order, epoch=2)


def test_epochs_need_not_be_consecutive(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        for epoch in (3, 10, 7):
            logits, targets, order = make_epoch(epoch)
            logger.log(logits, targets, order, epoch=epoch)
    assert [e for e, _, _ in list_shards(tmp_path)] == [3, 7, 10]
    assert {count for _, count in replay(tmp_path).values()} == {3}


def test_context_manager_publishes_on_exit(tmp_path: Path) -> None:
    logits, targets, order = make_epoch(0)
    with LogitLogger(tmp_path / "new" / "run") as logger:
        logger.log(logits, targets, order, epoch=np.int64(0))
    shards = list_shards(tmp_path / "new" / "run")
    assert len(shards) == 1 and read_info(shards[0][2]).num_rows == N
    with pytest.raises(AumReplayError, match="closed"):
        logger.log(logits, targets, order, epoch=1)


def test_exception_inside_with_discards_the_open_epoch_and_keeps_earlier_ones(
    tmp_path: Path,
) -> None:
    rows = [make_epoch(e) for e in range(2)]
    with (
        pytest.warns(UserWarning, match="epoch 1 was interrupted by RuntimeError"),
        pytest.raises(RuntimeError, match="boom"),
        LogitLogger(tmp_path) as logger,
    ):
        log_epochs(logger, [(0, *rows[0])])
        logger.end_epoch()
        log_epochs(logger, [(1, *rows[1])])
        raise RuntimeError("boom")
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]
    assert list_temporaries(tmp_path) == []
    got, _, _, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(rows[0][0]))


def test_exception_after_end_epoch_discards_nothing_and_does_not_warn(tmp_path: Path) -> None:
    logits, targets, order = make_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError), LogitLogger(tmp_path) as logger:
            logger.log(logits, targets, order, epoch=0)
            logger.end_epoch()
            raise KeyError("after the epoch")
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]


def test_abort_discards_the_open_epoch(tmp_path: Path) -> None:
    logger = LogitLogger(tmp_path)
    logits, targets, order = make_epoch(0)
    logger.log(logits, targets, order, epoch=0)
    logger.end_epoch()
    logger.log(logits, targets, order, epoch=1)
    logger.abort()
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]
    assert list_temporaries(tmp_path) == []


# ---------------------------------------------------------------------- resume


def test_resume_replaces_a_published_epoch_atomically(tmp_path: Path) -> None:
    first = [make_epoch(e, seed=1) for e in range(3)]
    with LogitLogger(tmp_path) as logger:
        log_epochs(logger, [(e, lg, t, o) for e, (lg, t, o) in enumerate(first)])

    # Restart from a checkpoint taken after epoch 0: epochs 1 and 2 are trained again.
    again = [make_epoch(e, seed=2) for e in (1, 2)]
    logger = LogitLogger(tmp_path)
    with pytest.warns(UserWarning, match="epoch 1 rank 0 is already published"):
        log_epochs(logger, [(1, *again[0])])
    # Until the new epoch 1 is published, the old one is intact under its final name.
    old, _, _, _ = read_shard(tmp_path / "epoch_00001.rank_000.h5")
    np.testing.assert_array_equal(bits(old), bits(first[1][0]))
    with pytest.warns(UserWarning, match="epoch 2 rank 0 is already published"):
        log_epochs(logger, [(2, *again[1])])
    logger.close()

    assert [e for e, _, _ in list_shards(tmp_path)] == [0, 1, 2]
    assert list_temporaries(tmp_path) == []
    for epoch, (logits, _, _) in zip((1, 2), again, strict=True):
        new, _, _, _ = read_shard(tmp_path / f"epoch_{epoch:05d}.rank_000.h5")
        np.testing.assert_array_equal(bits(new), bits(logits))
    got = replay(tmp_path)
    assert {count for _, count in got.values()} == {3}  # no epoch counted twice
    used = [first[0], *again]
    assert got == reference_aum([(lg, t, o.tolist()) for lg, t, o in used])


def test_resume_keeps_classes_and_id_kind_of_the_run(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(3, C), [0, 1, 2], ["a", "b", "c"], epoch=0)
    logger = LogitLogger(tmp_path)
    with pytest.raises(InputError, match=f"logits have {C + 1} classes but this run has {C}"):
        logger.log(torch.randn(3, C + 1), [0, 1, 2], ["a", "b", "c"], epoch=1)
    with pytest.raises(InputError, match="sample ids are ints but this run's ids are strs"):
        logger.log(torch.randn(3, C), [0, 1, 2], [1, 2, 3], epoch=1)
    logger.log(torch.randn(3, C), [0, 1, 2], ["a", "b", "c"], epoch=1)
    logger.close()
    assert [e for e, _, _ in list_shards(tmp_path)] == [0, 1]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_logger_removes_its_rank_temporaries_of_dead_processes(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logits, targets, order = make_epoch(0)
        logger.log(logits, targets, order, epoch=0)
    dead = dead_pid()
    mine_dead = tmp_path / f"epoch_00001.rank_000.h5.{dead}.tmp"
    mine_alive = tmp_path / f"epoch_00001.rank_000.h5.{os.getppid()}.tmp"
    other_rank = tmp_path / f"epoch_00001.rank_001.h5.{dead}.tmp"
    for path in (mine_dead, mine_alive, other_rank):
        path.write_bytes(b"half a shard")

    # Readers ignore temporaries and report them.
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]
    result = aum_replay.compute(tmp_path)
    assert sorted(result.temporaries) == sorted([mine_dead, mine_alive, other_rank])
    assert result.epochs == [0] and result.num_measurements == N
    assert len(describe_run(tmp_path).run.temporaries) == 3

    LogitLogger(tmp_path, rank=0, world_size=2).close()
    # Its own rank's leftover of a dead pid goes; a live writer's and another rank's stay.
    assert list_temporaries(tmp_path) == sorted([mine_alive, other_rank])


# ---------------------------------------------------------------------- bad input


def good_batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    return torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), [10, 11, 12, 13]


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("1-d logits", {"logits": torch.randn(4)}, r"shape \(B, C\), got shape \(4,\)"),
    ("3-d logits", {"logits": torch.randn(4, 3, 1)}, r"got shape \(4, 3, 1\)"),
    ("numpy logits", {"logits": np.zeros((4, 3), np.float32)}, "torch.Tensor.*got ndarray"),
    ("list logits", {"logits": [[0.0, 1.0]] * 4}, "got list"),
    ("int logits", {"logits": torch.ones(4, 3, dtype=torch.long)}, "floating-point.*int64"),
    ("bool logits", {"logits": torch.ones(4, 3, dtype=torch.bool)}, "floating-point.*bool"),
    ("one class", {"logits": torch.randn(4, 1), "targets": [0] * 4}, r"at least 2.*\(4, 1\)"),
    ("target too big", {"targets": torch.tensor([0, 1, 3, 0])}, r"target 3 \(row 2\).*\[0, 3\)"),
    ("negative target", {"targets": [0, -1, 0, 0]}, r"target -1 \(row 1\)"),
    ("targets (B, 1)", {"targets": torch.zeros(4, 1, dtype=torch.long)}, r"\(4,\).*\(4, 1\)"),
    ("short targets", {"targets": [0, 1, 2]}, r"shape \(4,\).*got \(3,\)"),
    ("float targets", {"targets": torch.zeros(4)}, "integer labels.*float32"),
    ("too few ids", {"ids": [1, 2, 3]}, "got 3 sample ids for 4 rows"),
    ("too many ids", {"ids": torch.arange(5)}, "got 5 sample ids for 4 rows"),
    ("float ids", {"ids": torch.zeros(4)}, "integers or strings.*float32"),
    ("2-d ids", {"ids": np.zeros((2, 2), np.int64)}, r"1-D.*\(2, 2\)"),
    ("mixed ids", {"ids": [1, "b", 3, 4]}, "mix ints and strings"),
    ("None id", {"ids": [1, None, 3, 4]}, "sample id None"),
    ("dict ids", {"ids": {1: 2}}, "got dict"),
    ("negative epoch", {"epoch": -1}, r"epoch must be an int with 0 <= epoch < 2\*\*31, got -1"),
    ("epoch 2**31", {"epoch": 2**31}, "got 2147483648"),
    ("epoch 2**63", {"epoch": 2**63}, "got 9223372036854775808"),
    ("epoch 10**30", {"epoch": 10**30}, f"got {10**30}"),
    ("uint64 epoch 2**64-1", {"epoch": np.uint64(2**64 - 1)}, "got np.uint64"),
    (
        "uint64 id 2**64-1",
        {"ids": np.array([1, 2, 3, 2**64 - 1], np.uint64)},
        "18446744073709551615",
    ),
    (
        "uint64 id 2**63",
        {"ids": torch.tensor([1, 2, 3, 2**63], dtype=torch.uint64)},
        "9223372036854775808 is outside the int64",
    ),
    ("int id 2**64-1", {"ids": [1, 2, 3, 2**64 - 1]}, "sample id 18446744073709551615 is outside"),
    (
        "int id -2**63-1",
        {"ids": [1, -(2**63) - 1, 3, 4]},
        "sample id -9223372036854775809 is outside",
    ),
    ("numpy uint64 id", {"ids": [1, 2, np.uint64(2**63), 4]}, "sample id 9223372036854775808"),
    ("float epoch", {"epoch": 1.0}, "got 1.0"),
    ("str epoch", {"epoch": "1"}, "got '1'"),
    ("bool epoch", {"epoch": True}, "got True"),
    ("None epoch", {"epoch": None}, "got None"),
]


@pytest.mark.parametrize(
    ("change", "message"),
    [(c, m) for _, c, m in BAD_INPUTS],
    ids=[name for name, _, _ in BAD_INPUTS],
)
def test_bad_input_raises_naming_the_value_and_changes_nothing(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    logits, targets, ids = good_batch()
    with LogitLogger(tmp_path) as logger:
        logger.log(logits, targets, ids, epoch=0)
        args: dict[str, Any] = {"logits": logits, "targets": targets, "ids": ids, "epoch": 0}
        args.update(change)
        # Raised synchronously by log() itself, i.e. on the caller's thread.
        with pytest.raises(InputError, match=message):
            logger.log(args["logits"], args["targets"], args["ids"], epoch=args["epoch"])
        logger.log(logits, targets, ids, epoch=0)  # the logger is still usable
    _, _, got_ids, shard = read_shard(list_shards(tmp_path)[0][2])
    assert shard.num_rows == 8 and got_ids.tolist() == ids * 2


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a", "b\x00c"], r"sample id 'b\\x00c' contains a NUL character"),
        (["a", "\ud800"], r"sample id '\\ud800' cannot be encoded as UTF-8"),
        (np.array([b"a", b"\xff"]), "sample ids given as bytes must be UTF-8"),
    ],
    ids=["NUL", "lone surrogate", "bytes not UTF-8"],
)
def test_string_ids_hdf5_cannot_store_are_refused_by_log(
    tmp_path: Path, ids: Any, message: str
) -> None:
    # Accepted by log(), they used to fail in the writer thread and lose the whole epoch.
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(2, 3), [0, 1], ["x", "y"], epoch=0)
        with pytest.raises(InputError, match=message):
            logger.log(torch.randn(2, 3), [0, 1], ids, epoch=0)
        logger.log(torch.randn(2, 3), [0, 1], np.array([b"caf\xc3\xa9", b"z"]), epoch=0)
    _, _, got, _ = read_shard(list_shards(tmp_path)[0][2])
    assert got.tolist() == ["x", "y", "café", "z"]


def test_number_of_classes_must_not_change_within_a_run(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(2, 3), [0, 1], [0, 1], epoch=0)
        with pytest.raises(InputError, match="logits have 4 classes but this run has 3"):
            logger.log(torch.randn(2, 4), [0, 1], [0, 1], epoch=0)
        with pytest.raises(InputError, match="logits have 2 classes but this run has 3"):
            logger.log(torch.randn(2, 2), [0, 1], [0, 1], epoch=1)  # not in a new epoch either


def test_int_and_str_ids_must_not_mix_within_a_run(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(2, 3), [0, 1], torch.tensor([0, 1]), epoch=0)
        with pytest.raises(InputError, match="sample ids are strs but this run's ids are ints"):
            logger.log(torch.randn(2, 3), [0, 1], ["0", "1"], epoch=0)
        with pytest.raises(InputError, match="sample ids are strs but this run's ids are ints"):
            logger.log(torch.randn(2, 3), [0, 1], np.array(["0", "1"]), epoch=1)
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]


def test_logits_dtype_must_not_change_within_an_epoch(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(2, 3), [0, 1], [0, 1], epoch=0)
        with pytest.raises(InputError, match="dtype changed within epoch 0"):
            logger.log(torch.randn(2, 3, dtype=torch.float64), [0, 1], [2, 3], epoch=0)
        logger.log(torch.randn(2, 3, dtype=torch.float64), [0, 1], [2, 3], epoch=1)
    assert [read_info(p).stored_dtype for _, _, p in list_shards(tmp_path)] == [
        "float32",
        "float64",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"storage": "int8"}, "storage must be one of .* not 'int8'"),
        ({"compression": "zstd"}, "compression must be one of .* not 'zstd'"),
        ({"chunk_bytes": 100}, "chunk_bytes must be at least 1024, not 100"),
        ({"max_pending": 0}, "max_pending must be at least 1, not 0"),
        ({"on_error": "ignore"}, "on_error must be one of .* not 'ignore'"),
        ({"rank": 2, "world_size": 2}, "rank 2 is outside world size 2"),
        ({"rank": -1, "world_size": 2}, "rank -1 is outside world size 2"),
        ({"metadata": {"f": object()}}, "metadata must be JSON-serialisable"),
        ({"threshold_samples": {"sample_ids": [1]}}, "threshold_samples must be"),
        ({"threshold_samples": [1, 2]}, "threshold_samples must be"),
        (
            {"threshold_samples": {"sample_ids": {1}, "extra_class": 3}},
            "threshold metadata must be JSON-serialisable",
        ),
    ],
)
def test_bad_options_raise_in_init(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        LogitLogger(tmp_path / "run", **options)


def test_unusable_run_dir_is_an_aum_replay_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AumReplayError, match="cannot create run directory"):
        LogitLogger(blocker / "run")


# ---------------------------------------------------------------------- writer failures


def test_writer_failure_is_raised_on_end_epoch_and_published_shards_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [make_epoch(e) for e in range(2)]
    logger = LogitLogger(tmp_path, chunk_bytes=1024)
    log_epochs(logger, [(0, *rows[0])])
    logger.end_epoch()

    def disk_full(self: ShardWriter, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "append", disk_full)
    log_epochs(logger, [(1, *rows[1])])
    with pytest.raises(AumReplayError, match=r"writer failed writing .*No space left on device"):
        logger.end_epoch()
    logger.close()  # the error was reported once; closing does not raise it again

    assert [e for e, _, _ in list_shards(tmp_path)] == [0]
    assert list_temporaries(tmp_path) == []
    got, _, _, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(rows[0][0]))


def test_on_error_stop_warns_once_and_then_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [make_epoch(e) for e in range(3)]
    logger = LogitLogger(tmp_path, chunk_bytes=1024, on_error="stop")
    log_epochs(logger, [(0, *rows[0])])
    logger.end_epoch()

    def disk_full(self: ShardWriter, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "append", disk_full)
    log_epochs(logger, [(1, *rows[1])])
    with pytest.warns(RuntimeWarning, match="recording stopped, training goes on") as caught:
        assert logger.end_epoch() is None
        monkeypatch.undo()
        log_epochs(logger, [(2, *rows[2])])  # does nothing, warns no more
        assert logger.end_epoch() is None
        logger.close()
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert [e for e, _, _ in list_shards(tmp_path)] == [0]
    assert list_temporaries(tmp_path) == []


def test_writer_failure_is_raised_on_the_next_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: ShardWriter, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "append", disk_full)
    logits, targets, order = make_epoch(0, n=60, c=10)
    logger = LogitLogger(tmp_path, chunk_bytes=1024)  # 25 rows per buffer
    logger.log(logits, targets, order, epoch=0)  # hands two full buffers to the writer
    with pytest.raises(AumReplayError, match="No space left on device"):
        for _ in range(500):  # the failure surfaces once the writer has met it
            logger.log(logits[:1], targets[:1], order[:1], epoch=0)
            time.sleep(0.01)
    # The epoch lost rows: closing says so again instead of reporting it as published.
    with pytest.raises(AumReplayError, match="epoch 0 rank 0 was not published"):
        logger.close()
    logger.close()  # closed now: idempotent
    assert list_shards(tmp_path) == [] and list_temporaries(tmp_path) == []


@pytest.mark.parametrize("finish", ["end_epoch", "close"])
def test_failed_publish_is_raised_and_keeps_the_old_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    def cannot_publish(self: ShardWriter) -> Path:
        raise PermissionError(13, "Permission denied", str(self.final_path))

    logits, targets, order = make_epoch(0)
    with LogitLogger(tmp_path) as logger:
        logger.log(logits, targets, order, epoch=0)
    monkeypatch.setattr(ShardWriter, "publish", cannot_publish)
    logger = LogitLogger(tmp_path)
    with pytest.warns(UserWarning, match="already published"):
        logger.log(2 * logits, targets, order, epoch=0)
    with pytest.raises(AumReplayError, match="Permission denied"):
        getattr(logger, finish)()
    logger.close()
    # The published epoch 0 is untouched: a failed replacement never damages it.
    got, _, _, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(logits))
    assert list_temporaries(tmp_path) == []


def test_writer_failure_when_opening_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_file(self: ShardWriter, *args: Any, **kwargs: Any) -> None:
        raise OSError(30, "Read-only file system")

    logits, targets, order = make_epoch(0)
    logger = LogitLogger(tmp_path)
    logger.log(logits, targets, order, epoch=0)
    logger.end_epoch()
    monkeypatch.setattr(ShardWriter, "__init__", no_file)
    logger.log(logits, targets, order, epoch=1)
    with pytest.raises(AumReplayError, match="Read-only file system"):
        logger.end_epoch()
    monkeypatch.undo()
    logger.log(logits, targets, order, epoch=2)  # the next epoch is written again
    logger.close()
    assert [e for e, _, _ in list_shards(tmp_path)] == [0, 2]


# ---------------------------------------------------------------------- metadata


def test_metadata_and_threshold_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {"lr": 0.1, "model": "resnet18", "git": "abc123", "nested": {"a": [1, 2]}}
    threshold = {"sample_ids": [3, 7, 11], "extra_class": C, "seed": 42, "set_index": 1}
    logits, targets, order = make_epoch(0, c=C + 1)
    with LogitLogger(tmp_path, metadata=metadata, threshold_samples=threshold) as logger:
        logger.log(logits, targets, order, epoch=0)
        logger.log(logits, targets, order, epoch=1)
    for _, _, path in list_shards(tmp_path):
        info = read_info(path)
        assert info.metadata == metadata
        assert info.threshold == threshold
    assert aum_replay.compute(tmp_path).threshold == threshold
    assert describe_run(tmp_path).run.metadata == metadata


def test_threshold_samples_accepts_an_object_with_threshold_metadata(tmp_path: Path) -> None:
    class Wrapped:
        def threshold_metadata(self) -> dict[str, Any]:
            return {"sample_ids": ["a", "b"], "extra_class": 2, "seed": 0, "set_index": 2}

    with LogitLogger(tmp_path, threshold_samples=Wrapped()) as logger:
        logger.log(torch.randn(2, 3), [0, 2], ["a", "b"], epoch=0)
    assert read_info(list_shards(tmp_path)[0][2]).threshold == Wrapped().threshold_metadata()


def test_without_metadata_the_shards_say_so(tmp_path: Path) -> None:
    with LogitLogger(tmp_path) as logger:
        logger.log(torch.randn(2, 3), [0, 2], [0, 1], epoch=0)
    info = read_info(list_shards(tmp_path)[0][2])
    assert info.metadata == {} and info.threshold is None


def test_rank_and_world_size_can_be_given(tmp_path: Path) -> None:
    with LogitLogger(tmp_path, rank=2, world_size=4) as logger:
        logger.log(torch.randn(2, 3), [0, 2], [0, 1], epoch=5)
    (epoch, rank, path), *_ = list_shards(tmp_path)
    assert (epoch, rank, path.name) == (5, 2, "epoch_00005.rank_002.h5")
    info = read_info(path)
    assert (info.epoch, info.rank, info.world_size) == (5, 2, 4)


def test_a_slow_writer_blocks_log_instead_of_growing_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_append = ShardWriter.append

    def slow_append(self: ShardWriter, *args: Any) -> None:
        entered.set()
        release.wait(timeout=60)
        real_append(self, *args)

    monkeypatch.setattr(ShardWriter, "append", slow_append)
    # 18 rows a chunk (see above); max_pending=1 allows two buffers: one being written, one queued.
    logits, targets, order = make_epoch(0, n=18 * 6, c=10)
    logger = LogitLogger(tmp_path, chunk_bytes=1024, max_pending=1)
    logged: list[int] = []

    def train() -> None:
        for lo in range(0, len(targets), 18):
            logger.log(logits[lo : lo + 18], targets[lo : lo + 18], order[lo : lo + 18], epoch=0)
            logged.append(lo)

    trainer = threading.Thread(target=train)
    trainer.start()
    assert entered.wait(timeout=60)
    trainer.join(timeout=0.5)  # gives an unbounded logger ample time to run ahead
    assert trainer.is_alive() and len(logged) == 2
    release.set()
    trainer.join(timeout=60)
    assert not trainer.is_alive() and len(logged) == 6
    logger.close()
    got, _, ids, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(logits))
    np.testing.assert_array_equal(ids, order)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logits_with_grad(tmp_path: Path) -> None:
    logits, targets, order = make_epoch(0)
    on_gpu = logits.cuda().requires_grad_()
    with LogitLogger(tmp_path) as logger:
        logger.log(on_gpu * 1, targets.cuda(), torch.as_tensor(order).cuda(), epoch=0)
    got, got_targets, ids, _ = read_shard(list_shards(tmp_path)[0][2])
    np.testing.assert_array_equal(bits(got), bits(logits))
    np.testing.assert_array_equal(got_targets, targets.numpy())
    np.testing.assert_array_equal(ids, order)


def test_a_second_logger_of_one_rank_in_the_same_process_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = LogitLogger(tmp_path)
    with pytest.raises(aum_replay.RunLockedError, match=r"this very process .* close\(\) it"):
        LogitLogger(tmp_path)
    LogitLogger(tmp_path, rank=1, world_size=2).close()  # another rank is free
    first.close()
    LogitLogger(tmp_path).close()  # free again
