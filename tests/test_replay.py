"""The replay against the reference: the same batches go to aum's AUMCalculator and the logger.

``compute`` must give the same set of ids with bit-identical AUM values (the reference's tie
order in ``aum_values.csv`` depends on the platform, so values are compared as a mapping and our
order is checked on its own) and the same ``full_aum_records.csv``, byte for byte.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aum import AUMCalculator
from hypothesis import given, settings
from hypothesis import strategies as st

import aum_replay.replay as replay_module
from aum_replay import InputError, LogitLogger, compute, kernels
from aum_replay.csvout import FULL_NAME, VALUES_NAME

Id = int | str


@pytest.fixture(autouse=True, params=["numpy", "loaded-torch"])
def kernel_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: the pure-numpy kernels (the CLI's, which never imports torch) and the
    ones that borrow torch where this process already imported it (a notebook's)."""
    monkeypatch.setattr(kernels, "USE_LOADED_TORCH", request.param == "loaded-torch")
    return str(request.param)


@dataclass(frozen=True)
class Batch:
    epoch: int
    rank: int
    logits: torch.Tensor
    targets: torch.Tensor
    ids: list[Id]


def split_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Random batch sizes >= 2 that add up to n (n >= 2); the first batch has 2 rows."""
    sizes: list[int] = []
    left = n
    while left:
        size = 2 if not sizes else int(rng.integers(2, 12))
        size = left if left - size < 2 else min(size, left)
        sizes.append(size)
        left -= size
    return sizes


def make_stream(
    ids: Sequence[Id],
    *,
    epochs: int = 3,
    num_classes: int = 7,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    integer: bool = False,
    pad: int = 0,
    seed: int = 0,
) -> list[Batch]:
    """Shuffled batches per epoch; with ``world_size`` > 1, a DistributedSampler-like split.

    ``pad`` ids of each epoch's permutation are appended again (DDP padding), so they occur
    twice in the epoch, usually on different ranks.
    """
    rng = np.random.default_rng(seed)
    labels = {i: int(rng.integers(0, num_classes)) for i in ids}
    stream = []
    for epoch in range(epochs):
        perm = [ids[k] for k in rng.permutation(len(ids))]
        perm += perm[:pad]
        for rank in range(world_size):
            mine = perm[rank::world_size]
            start = 0
            for size in split_sizes(rng, len(mine)):
                chunk = mine[start : start + size]
                start += size
                if integer:
                    values = rng.integers(-2, 3, size=(size, num_classes)).astype(np.float64)
                else:
                    values = rng.normal(0, 2, size=(size, num_classes))
                logits = torch.from_numpy(values).to(dtype)
                targets = torch.tensor([labels[i] for i in chunk])
                stream.append(Batch(epoch, rank, logits, targets, chunk))
    return stream


def write_run(run_dir: Path, stream: Sequence[Batch]) -> None:
    world_size = max(b.rank for b in stream) + 1
    loggers = {r: LogitLogger(run_dir, rank=r, world_size=world_size) for r in range(world_size)}
    for epoch in sorted({b.epoch for b in stream}):
        for batch in (b for b in stream if b.epoch == epoch):
            loggers[batch.rank].log(batch.logits, batch.targets, batch.ids, epoch=epoch)
        for logger in loggers.values():
            logger.end_epoch()
    for logger in loggers.values():
        logger.close()


def measurement_order(stream: Sequence[Batch], epochs: Sequence[int] | None) -> list[Batch]:
    """Epochs ascending; inside one epoch, rank 0's rows, then rank 1's (as the replay counts)."""
    chosen = [b for b in stream if epochs is None or b.epoch in epochs]
    return sorted(chosen, key=lambda b: (b.epoch, b.rank))  # stable: logged order kept


def first_occurrences(stream: Sequence[Batch]) -> list[Batch]:
    """Drop rows whose id already appeared earlier in the same epoch."""
    out, seen = [], set()
    current = None
    for batch in stream:
        if batch.epoch != current:
            current, seen = batch.epoch, set()
        keep = []
        for row, sample_id in enumerate(batch.ids):
            if sample_id not in seen:
                seen.add(sample_id)
                keep.append(row)
        if keep:
            out.append(
                replace(
                    batch,
                    logits=batch.logits[keep],
                    targets=batch.targets[keep],
                    ids=[batch.ids[k] for k in keep],
                )
            )
    return out


def coalesce(stream: Sequence[Batch]) -> list[Batch]:
    """Merge one-row batches into their predecessor: the reference crashes on a batch of one.

    The reference adds row by row, so regrouping batches does not change its numbers.
    """
    out: list[Batch] = []
    for batch in stream:
        if out and (len(batch.ids) == 1 or len(out[-1].ids) == 1):
            prev = out.pop()
            batch = replace(
                prev,
                logits=torch.cat([prev.logits, batch.logits]),
                targets=torch.cat([prev.targets, batch.targets]),
                ids=prev.ids + batch.ids,
            )
        out.append(batch)
    assert all(len(b.ids) >= 2 for b in out)
    return out


def run_reference(
    stream: Sequence[Batch],
    out_dir: Path,
    *,
    epochs: Sequence[int] | None = None,
    dedupe: bool = False,
    compressed: bool = False,
) -> Path:
    batches = measurement_order(stream, epochs)
    if dedupe:
        batches = first_occurrences(batches)
    calc = AUMCalculator(str(out_dir), compressed=compressed)
    for batch in coalesce(batches):
        calc.update(batch.logits, batch.targets, list(batch.ids))  # a list: tensor ids break it
    calc.finalize()
    return out_dir


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def check_values_order(rows: list[list[str]], id_kind: str) -> None:
    """aum descending, NaN (an empty field) last, ties by sample_id ascending."""

    def key(row: list[str]) -> tuple[bool, float, Any]:
        aum = float(row[1]) if row[1] else math.nan
        sample_id: Any = int(row[0]) if id_kind == "int" else row[0]
        return (math.isnan(aum), 0.0 if math.isnan(aum) else -aum, sample_id)

    assert rows == sorted(rows, key=key)


def assert_same_as_reference(ours: Path, ref: Path, id_kind: str, *, full: bool = True) -> None:
    our_rows = read_rows(ours / VALUES_NAME)
    ref_rows = read_rows(ref / VALUES_NAME)
    assert our_rows[0] == ref_rows[0] == ["sample_id", "aum"]
    assert len(our_rows) == len(ref_rows)
    assert dict(map(tuple, our_rows[1:])) == dict(map(tuple, ref_rows[1:]))  # type: ignore[arg-type]
    check_values_order(our_rows[1:], id_kind)
    if full:
        assert (ours / FULL_NAME).read_bytes() == (ref / FULL_NAME).read_bytes()
    else:
        assert not (ours / FULL_NAME).exists()


def replay_and_compare(
    tmp_path: Path,
    stream: list[Batch],
    *,
    id_kind: str = "int",
    epochs: str | None = None,
    ref_epochs: Sequence[int] | None = None,
    duplicates: str = "first",
    dedupe: bool = False,
    **options: Any,
) -> replay_module.ComputeResult:
    run_dir = tmp_path / "run"
    if not run_dir.exists():
        write_run(run_dir, stream)
    tag = f"{epochs}-{duplicates}".replace(":", "_").replace(",", "_")
    ref = run_reference(stream, tmp_path / f"ref-{tag}", epochs=ref_epochs, dedupe=dedupe)
    out = tmp_path / f"ours-{tag}"
    result = compute(run_dir, out, epochs=epochs, duplicates=duplicates, **options)  # type: ignore[arg-type]
    assert_same_as_reference(out, ref, id_kind)
    assert sorted(p.name for p in out.iterdir()) == [VALUES_NAME, FULL_NAME]
    return result


def test_float32_normal_logits_int_ids(tmp_path: Path) -> None:
    ids = list(range(0, 300, 7))
    stream = make_stream(ids, epochs=3)
    result = replay_and_compare(tmp_path, stream)
    assert result.num_samples == len(ids)
    assert result.num_measurements == 3 * len(ids)
    assert result.epochs == [0, 1, 2]
    assert result.num_classes == 7 and result.id_kind == "int"
    assert result.duplicates_dropped == 0 and result.nonfinite_margins == 0
    table = result.aum
    assert table.columns == ["sample_id", "aum", "num_measurements", "target"]
    assert table["num_measurements"].to_list() == [3] * len(ids)
    values = read_rows(tmp_path / "ours-None-first" / VALUES_NAME)[1:]
    assert [str(i) for i in table["sample_id"].to_list()] == [r[0] for r in values]
    assert [repr(a) for a in table["aum"].to_list()] == [r[1] for r in values]


def test_integer_logits_with_many_ties(tmp_path: Path) -> None:
    stream = make_stream(list(range(40)), epochs=4, num_classes=5, integer=True, seed=1)
    result = replay_and_compare(tmp_path, stream)
    aum = result.aum["aum"].to_numpy()
    assert len(np.unique(aum)) < len(aum)  # the tie order of aum_values.csv was exercised


def test_negative_and_large_int_ids(tmp_path: Path) -> None:
    ids = [-5, 0, 2**40, -(2**50), 17, 3, 99999999999]
    replay_and_compare(tmp_path, make_stream(ids, epochs=2, integer=True, seed=2))


AWKWARD_IDS = [
    "cat_001.png",
    "a,b",
    'say "hi"',
    '"',
    ",",
    "naïve/é.jpg",
    "中文",
    "emoji😀",
    "line\nbreak",
    "Zebra",
    "apple",
    "10",
    "9",
    " lead",
]


def test_string_ids_with_commas_quotes_and_unicode(tmp_path: Path) -> None:
    stream = make_stream(AWKWARD_IDS, epochs=3, integer=True, seed=3)
    result = replay_and_compare(tmp_path, stream, id_kind="str")
    assert result.id_kind == "str"
    text = (tmp_path / "ours-None-first" / FULL_NAME).read_text(encoding="utf-8")
    assert '"a,b",1,' in text and '"say ""hi""",1,' in text and '"line\nbreak",1,' in text


def test_two_ranks_interleaved(tmp_path: Path) -> None:
    stream = make_stream(list(range(50)), epochs=3, world_size=2, seed=4)
    assert {b.rank for b in stream} == {0, 1}
    result = replay_and_compare(tmp_path, stream)
    assert result.num_shards == 6
    assert result.duplicates_dropped == 0


def test_ddp_padding_counted_twice_with_duplicates_all(tmp_path: Path) -> None:
    stream = make_stream(list(range(31)), epochs=3, world_size=2, pad=1, seed=5)
    result = replay_and_compare(tmp_path, stream, duplicates="all")
    assert result.num_measurements == 3 * 32
    assert result.duplicates_dropped == 0


def test_ddp_padding_dropped_with_duplicates_first(tmp_path: Path) -> None:
    stream = make_stream(list(range(29)), epochs=3, world_size=2, pad=3, seed=6)
    result = replay_and_compare(tmp_path, stream, duplicates="first", dedupe=True)
    assert result.duplicates_dropped == 3 * 3
    assert result.num_measurements == 3 * 29
    assert set(result.aum["num_measurements"].to_list()) == {3}


def test_restarted_epoch_duplicates_across_blocks(tmp_path: Path) -> None:
    # A restarted epoch logs ids again, in the same shard, far apart: several read blocks
    # (block_bytes is tiny, a block has 256 rows), and both duplicate modes.
    ids = list(range(400))
    stream = make_stream(ids, epochs=2, num_classes=4, seed=7)
    restart = make_stream(ids[:300], epochs=2, num_classes=4, seed=8)
    stream = sorted(stream + restart, key=lambda b: b.epoch)
    first = replay_and_compare(tmp_path, stream, dedupe=True, block_bytes=1)
    assert first.duplicates_dropped == 2 * 300
    every = replay_and_compare(tmp_path, stream, duplicates="all", block_bytes=1)
    assert every.num_measurements == 2 * 700


@pytest.mark.parametrize(
    ("spec", "selected"),
    [("1:3", [1, 2]), ("skip:1", [1, 2, 3]), ("last:2", [2, 3]), ("0,2", [0, 2]), ("3", [3])],
)
def test_epoch_subsets(tmp_path: Path, spec: str, selected: list[int]) -> None:
    stream = make_stream(list(range(25)), epochs=4, world_size=2, seed=9)
    result = replay_and_compare(tmp_path, stream, epochs=spec, ref_epochs=selected)
    assert result.epochs == selected
    assert result.num_measurements == 25 * len(selected)


def test_samples_missing_from_selected_epochs_are_left_out(tmp_path: Path) -> None:
    early = make_stream(list(range(10)), epochs=2, seed=10)
    late = [replace(b, epoch=b.epoch + 2) for b in make_stream(list(range(5, 15)), seed=11)]
    stream = early + late
    result = replay_and_compare(tmp_path, stream, epochs="skip:2", ref_epochs=[2, 3, 4])
    assert sorted(result.aum["sample_id"].to_list()) == list(range(5, 15))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_replay_in_their_own_precision(tmp_path: Path, dtype: torch.dtype) -> None:
    stream = make_stream(list(range(30)), epochs=2, dtype=dtype, seed=12)
    replay_and_compare(tmp_path, stream)


def test_nan_logits_give_nan_aum(tmp_path: Path) -> None:
    stream = make_stream(list(range(12)), epochs=3, seed=13)
    poisoned = []
    nan_rows = 0
    for b in stream:
        logits = b.logits.clone()
        for row, sample_id in enumerate(b.ids):
            if sample_id == 3 and b.epoch == 1:
                logits[row, int(b.targets[row])] = math.nan  # the target
                nan_rows += 1
            if sample_id == 7:
                logits[row, :] = math.nan  # every logit, every epoch
                nan_rows += 1
        poisoned.append(replace(b, logits=logits))
    result = replay_and_compare(tmp_path, poisoned)
    assert result.nonfinite_margins == nan_rows == 4
    assert result.nonfinite_samples == 2
    rows = read_rows(tmp_path / "ours-None-first" / VALUES_NAME)
    assert rows[-2:] == [["3", ""], ["7", ""]]
    assert math.isnan(result.aum.filter(result.aum["sample_id"] == 7)["aum"][0])


def test_values_only_writes_one_file(tmp_path: Path) -> None:
    stream = make_stream(list(range(20)), epochs=2, seed=14)
    write_run(tmp_path / "run", stream)
    ref = run_reference(stream, tmp_path / "ref", compressed=True)
    result = compute(tmp_path / "run", tmp_path / "ours", full=False)
    assert [p.name for p in (tmp_path / "ours").iterdir()] == [VALUES_NAME]
    assert result.full_path is None and result.values_path == tmp_path / "ours" / VALUES_NAME
    assert_same_as_reference(tmp_path / "ours", ref, "int", full=False)


def test_no_out_dir_writes_nothing(tmp_path: Path) -> None:
    stream = make_stream(list(range(20)), epochs=2, seed=15)
    write_run(tmp_path / "run", stream)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = compute(tmp_path / "run", None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert result.values_path is None and result.full_path is None and result.out_dir is None
    ref = read_rows(run_reference(stream, tmp_path / "ref") / VALUES_NAME)[1:]
    assert {str(i): repr(a) for i, a in result.aum.select("sample_id", "aum").iter_rows()} == dict(
        map(tuple, ref)  # type: ignore[arg-type]
    )


def test_full_records_spilled_to_many_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buckets: list[int] = []
    original = replay_module._Spill.__init__

    def spy(self: Any, scratch: Path | None, n: int, count: int) -> None:
        buckets.append(count)
        original(self, scratch, n, count)

    monkeypatch.setattr(replay_module._Spill, "__init__", spy)
    stream = make_stream([f"img{i:04d}" for i in range(0, 1200, 3)], epochs=3, seed=16)
    replay_and_compare(tmp_path, stream, id_kind="str", spill_bytes=4096, block_bytes=1)
    assert buckets and buckets[0] > 4


def test_rerun_replaces_outputs(tmp_path: Path) -> None:
    stream = make_stream(list(range(15)), epochs=3, seed=17)
    write_run(tmp_path / "run", stream)
    out = tmp_path / "ours"
    compute(tmp_path / "run", out)
    compute(tmp_path / "run", out, epochs="last:1")
    ref = run_reference(stream, tmp_path / "ref", epochs=[2])
    assert_same_as_reference(out, ref, "int")


@st.composite
def random_streams(draw: st.DrawFn) -> tuple[list[Batch], str]:
    """Small random runs: ids of one kind, missing or repeated ids, integer-valued logits."""
    kind = draw(st.sampled_from(["int", "str"]))
    if kind == "int":
        pool: list[Id] = draw(
            st.lists(st.integers(-1000, 1000), min_size=2, max_size=12, unique=True)
        )
    else:
        pool = draw(
            st.lists(
                st.text(st.sampled_from('ab,"é\n1 '), min_size=1, max_size=4),
                min_size=2,
                max_size=12,
                unique=True,
            )
        )
    num_classes = draw(st.integers(2, 5))
    stream = []
    for epoch in range(draw(st.integers(1, 3))):
        # At least two distinct ids per epoch, so that the deduplicated stream the reference is
        # fed never shrinks to a single row (which the reference cannot take).
        distinct = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=12, unique=True))
        repeats = draw(st.lists(st.sampled_from(pool), max_size=10))
        rows = draw(st.permutations(distinct + repeats))
        sizes = split_sizes(np.random.default_rng(len(rows) + epoch), len(rows))
        start = 0
        for size in sizes:
            chunk = rows[start : start + size]
            start += size
            values = draw(
                st.lists(
                    st.integers(-2, 2), min_size=size * num_classes, max_size=size * num_classes
                )
            )
            logits = torch.tensor(values, dtype=torch.float32).reshape(size, num_classes)
            targets = draw(st.lists(st.integers(0, num_classes - 1), min_size=size, max_size=size))
            stream.append(Batch(epoch, 0, logits, torch.tensor(targets), chunk))
    return stream, kind


@settings(max_examples=12)
@given(random_streams(), st.sampled_from(["first", "all"]))
def test_random_streams_match_reference(case: tuple[list[Batch], str], duplicates: str) -> None:
    stream, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        replay_and_compare(
            Path(tmp), stream, id_kind=kind, duplicates=duplicates, dedupe=duplicates == "first"
        )


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("pad", [0, 2])
def test_workers_and_block_sizes_change_nothing(tmp_path: Path, workers: int, pad: int) -> None:
    # pad=2: DDP padding, so the ledger drops rows; pad=0: a clean run, counted from the id scan.
    stream = make_stream(list(range(61)), epochs=3, world_size=2, pad=pad, seed=18)
    for block_bytes in (1, 200, 2 << 20):
        result = replay_and_compare(
            tmp_path / f"b{block_bytes}",
            stream,
            dedupe=True,
            workers=workers,
            block_bytes=block_bytes,
        )
        assert result.duplicates_dropped == 3 * pad


def test_a_run_that_changes_its_stored_dtype_replays_each_epoch_in_its_own(tmp_path: Path) -> None:
    ids = list(range(40))
    stream = []
    for epoch, dtype in enumerate([torch.float32, torch.float64, torch.float16, torch.bfloat16]):
        part = make_stream(ids, epochs=1, dtype=dtype, seed=19 + epoch)
        stream += [replace(b, epoch=epoch) for b in part]
    write_run(tmp_path / "run", stream)
    for full in (True, False):
        out = tmp_path / f"ours-{full}"
        compute(tmp_path / "run", out, full=full, block_bytes=100)
        ref = run_reference(stream, tmp_path / f"ref-{full}", compressed=not full)
        assert_same_as_reference(out, ref, "int", full=full)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(("pad", "duplicates"), [(0, "first"), (3, "first"), (3, "all")])
def test_values_only_matches_the_compressed_reference(
    tmp_path: Path, dtype: torch.dtype, pad: int, duplicates: str
) -> None:
    # Values only takes its own paths: a leaner kernel, and counts from the id scan (clean runs)
    # or from the ledger (padding).
    stream = make_stream(list(range(37)), epochs=3, world_size=2, pad=pad, dtype=dtype, seed=23)
    write_run(tmp_path / "run", stream)
    ref = run_reference(stream, tmp_path / "ref", dedupe=duplicates == "first", compressed=True)
    result = compute(tmp_path / "run", tmp_path / "ours", full=False, duplicates=duplicates)  # type: ignore[arg-type]
    assert_same_as_reference(tmp_path / "ours", ref, "int", full=False)
    expected = 3 * 37 + (3 * pad if duplicates == "all" else 0)
    assert result.num_measurements == expected == int(result.aum["num_measurements"].sum())


@settings(max_examples=12)
@given(random_streams(), st.sampled_from(["first", "all"]), st.sampled_from([0, 1, 2]))
def test_random_streams_values_only_match_reference(
    case: tuple[list[Batch], str], duplicates: str, workers: int
) -> None:
    stream, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        write_run(run_dir, stream)
        dedupe = duplicates == "first"
        ref = run_reference(stream, Path(tmp) / "ref", dedupe=dedupe, compressed=True)
        out = Path(tmp) / "ours"
        compute(run_dir, out, full=False, duplicates=duplicates, workers=workers, block_bytes=1)  # type: ignore[arg-type]
        assert_same_as_reference(out, ref, kind, full=False)


def test_a_negative_number_of_workers_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "run", make_stream(list(range(6)), epochs=1))
    with pytest.raises(InputError, match="workers must be 0 or more, not -1"):
        compute(tmp_path / "run", tmp_path / "out", workers=-1)
    assert not (tmp_path / "out").exists()
