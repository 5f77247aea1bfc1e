"""The seed-compatible API against the original ``aum`` 1.0.2 (the reference)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import aum
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import aum_replay
from aum_replay import AUMCalculator, AUMRecord, DatasetWithIndex, InputError


def _stream(seed: int, n: int, c: int, epochs: int, *, ints: bool = False, dtype=torch.float32):
    """Batches of (logits, targets, ids) with shuffled ids per epoch and uneven batch sizes."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        start = 0
        while start < n:
            size = int(torch.randint(2, 9, (1,), generator=gen))
            if n - start - size == 1:  # the seed crashes on a batch of one row
                size += 1
            ids = perm[start : start + size]
            start += size
            if ints:
                logits = torch.randint(-2, 3, (len(ids), c), generator=gen).to(dtype)
            else:
                logits = torch.randn(len(ids), c, generator=gen).to(dtype)
            targets = torch.randint(0, c, (len(ids),), generator=gen)
            yield logits, targets, ids


def _as_dict(record: object) -> dict:
    out = dataclasses.asdict(record)  # type: ignore[call-overload]
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _run_both(tmp_path: Path, batches, *, key=lambda ids: ids.tolist()):
    ref = aum.AUMCalculator(str(tmp_path / "ref"), compressed=False)
    ours = AUMCalculator(tmp_path / "ours", compressed=False)
    for logits, targets, ids in batches:
        expected = ref.update(logits, targets, key(ids))
        got = ours.update(logits, targets, ids)
        assert list(got) == list(expected)
        assert [_as_dict(r) for r in got.values()] == [_as_dict(r) for r in expected.values()]
    ref.finalize()
    ours.finalize()
    return tmp_path / "ref", tmp_path / "ours"


def test_record_fields_match_the_seed() -> None:
    names = [f.name for f in dataclasses.fields(AUMRecord)]
    assert names == [f.name for f in dataclasses.fields(aum.AUMRecord)]
    assert AUMRecord("a", 1, 0, 1.0, 1, 0.5, 0.5, 0.5) == AUMRecord(
        "a", 1, 0, 1.0, 1, 0.5, 0.5, 0.5
    )


@pytest.mark.parametrize(
    ("ints", "dtype"),
    [(False, torch.float32), (True, torch.float32), (False, torch.float16), (False, torch.float64)],
)
def test_random_streams_equal_the_reference(tmp_path: Path, ints: bool, dtype) -> None:
    ref_dir, our_dir = _run_both(tmp_path, _stream(1, 40, 5, 4, ints=ints, dtype=dtype))
    full_ref = (ref_dir / "full_aum_records.csv").read_text()
    assert (our_dir / "full_aum_records.csv").read_text() == full_ref
    ref_values = pd.read_csv(ref_dir / "aum_values.csv")
    ours_values = pd.read_csv(our_dir / "aum_values.csv")
    assert dict(zip(ref_values.sample_id, ref_values.aum, strict=True)) == dict(
        zip(ours_values.sample_id, ours_values.aum, strict=True)
    )
    if not ints:  # no ties in aum: even the seed's row order is determined
        assert (our_dir / "aum_values.csv").read_text() == (ref_dir / "aum_values.csv").read_text()


@given(st.integers(0, 10_000), st.integers(2, 6), st.booleans())
def test_property_records_and_files_equal_the_reference(seed: int, c: int, ints: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, our_dir = _run_both(Path(tmp), _stream(seed, 12, c, 3, ints=ints))
        assert (our_dir / "full_aum_records.csv").read_text() == (
            ref_dir / "full_aum_records.csv"
        ).read_text()


def test_string_ids_with_commas_and_quotes(tmp_path: Path) -> None:
    names = np.array(["a,b", 'q"t', "plain", "émoji ✓", "z"])

    def batches():
        for logits, targets, ids in _stream(3, 5, 4, 3):
            yield logits, targets, names[ids.numpy()].tolist()

    ref_dir, our_dir = _run_both(tmp_path, batches(), key=lambda ids: ids)
    assert (our_dir / "full_aum_records.csv").read_text() == (
        ref_dir / "full_aum_records.csv"
    ).read_text()
    assert '"a,b"' in (our_dir / "aum_values.csv").read_text()
    assert '"q""t"' in (our_dir / "aum_values.csv").read_text()


def test_an_id_twice_in_one_batch_matches_the_reference(tmp_path: Path) -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.0, 1.0], [0.1, 0.2, 0.3]])
    targets = torch.tensor([0, 0, 2])
    batches = [(logits, targets, torch.tensor([7, 7, 8]))] * 2
    ref_dir, our_dir = _run_both(tmp_path, batches)
    assert (our_dir / "full_aum_records.csv").read_text() == (
        ref_dir / "full_aum_records.csv"
    ).read_text()


def test_readme_example(tmp_path: Path) -> None:
    """The seed README's example table, fed through both libraries with string ids."""
    c = 11
    rows = [  # sample, target, target_val, other, other_val
        ("sample_1", 0, 3.74, 10, 2.48),
        ("sample_1", 0, 4.59, 10, 3.44),
        ("sample_2", 1, -0.09, 0, 3.11),
        ("sample_2", 1, -1.12, 0, 3.25),
        ("sample_3", 6, 3.39, 10, 1.62),
        ("sample_3", 6, 2.63, 2, 2.11),
    ]
    ref = aum.AUMCalculator(str(tmp_path / "ref"), compressed=False)
    ours = AUMCalculator(str(tmp_path / "ours"), compressed=False)
    for epoch in range(2):
        epoch_rows = rows[epoch::2]
        logits = torch.full((len(epoch_rows), c), -5.0)
        for i, (_, t, tv, o, ov) in enumerate(epoch_rows):
            logits[i, t], logits[i, o] = tv, ov
        targets = torch.tensor([r[1] for r in epoch_rows])
        ids = [r[0] for r in epoch_rows]
        assert ours.update(logits, targets, ids) == {
            k: AUMRecord(**dataclasses.asdict(v))
            for k, v in ref.update(logits, targets, ids).items()
        }
    ref.finalize()
    ours.finalize()
    for name in ("aum_values.csv", "full_aum_records.csv"):
        assert (tmp_path / "ours" / name).read_text() == (tmp_path / "ref" / name).read_text()
    values = pd.read_csv(tmp_path / "ours" / "aum_values.csv")
    assert values.sample_id.tolist() == ["sample_1", "sample_3", "sample_2"]
    # The README's rounded figures (its sample_2 first-row aum, -3.02, is a typo for -3.20).
    assert values.aum.round(3).tolist() == [1.205, 1.145, -3.785]


# ---------------------------------------------------------------- the seed's defects, fixed


def test_batch_of_one_row(tmp_path: Path) -> None:
    calc = AUMCalculator(tmp_path)
    records = calc.update(torch.tensor([[0.3, 0.1]]), torch.tensor([0]), [5])
    assert records[5].margin == pytest.approx(0.2)
    assert records[5].margin == 0.20000001788139343  # float32 subtraction, widened


@pytest.mark.parametrize(
    "make_ids",
    [lambda: torch.tensor([1, 2]), lambda: np.array([1, 2]), lambda: [1, 2]],
    ids=["tensor", "numpy", "list"],
)
def test_ids_accumulate_per_value(tmp_path: Path, make_ids) -> None:
    calc = AUMCalculator(tmp_path)
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    for _ in range(3):
        records = calc.update(logits, torch.tensor([0, 0]), make_ids())
    assert set(records) == {1, 2}
    assert all(type(k) is int for k in records)
    assert records[1].num_measurements == 3
    assert records[2].aum == -2.0
    calc.finalize()
    assert (tmp_path / "aum_values.csv").read_text() == "sample_id,aum\n1,1.0\n2,-2.0\n"


def test_dataset_with_index_through_a_dataloader(tmp_path: Path) -> None:
    base = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    data = DatasetWithIndex(base)
    assert len(data) == 10
    x, _, index = data[4]
    assert index == 4 and torch.equal(x, base[4][0])
    calc = AUMCalculator(tmp_path)
    torch.manual_seed(0)
    weight = torch.randn(3, 2)
    for _ in range(2):
        for xb, yb, ids in DataLoader(data, batch_size=4, shuffle=True):
            assert isinstance(ids, torch.Tensor)
            calc.update(xb @ weight, yb, ids)
    calc.finalize()
    values = pd.read_csv(tmp_path / "aum_values.csv")
    assert sorted(values.sample_id) == list(range(10))


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    calc = AUMCalculator("~/aum_out")
    calc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), [0])
    calc.finalize()
    assert (tmp_path / "aum_out" / "aum_values.csv").read_text() == "sample_id,aum\n0,-1.0\n"
    calc.finalize("~/other")
    assert (tmp_path / "other" / "aum_values.csv").exists()


@pytest.mark.parametrize(
    ("logits", "targets", "ids", "message"),
    [
        (torch.zeros(3, 4), torch.tensor([0, 1, 2]), [1, 2], "2 sample ids for 3 rows"),
        (torch.zeros(2, 4), torch.tensor([0, 4]), [1, 2], "target 4"),
        (torch.zeros(2, 4), torch.tensor([0, -1]), [1, 2], "target -1"),
        (torch.zeros(2, 1), torch.tensor([0, 0]), [1, 2], "at least 2 classes"),
        ([[0.0, 1.0]], torch.tensor([0]), [1], "got list"),
        (np.zeros((1, 2)), torch.tensor([0]), [1], "got ndarray"),
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), [1, 2], "floating-point"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), [1, "a"], "mix ints and strings"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), [1.5, 2.5], "neither an int nor a str"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, logits, targets, ids, message) -> None:
    calc = AUMCalculator(tmp_path)
    with pytest.raises(InputError, match=message):
        calc.update(logits, targets, ids)


def test_finalize_before_update_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="before any update"):
        AUMCalculator(tmp_path).finalize()
    assert not (tmp_path / "aum_values.csv").exists()


def test_id_kind_cannot_change(tmp_path: Path) -> None:
    calc = AUMCalculator(tmp_path)
    calc.update(torch.zeros(1, 2), torch.tensor([0]), [1])
    with pytest.raises(InputError, match="one id kind"):
        calc.update(torch.zeros(1, 2), torch.tensor([0]), ["a"])


def test_log_dir_records_a_replayable_run(tmp_path: Path) -> None:
    calc = AUMCalculator(tmp_path / "out", compressed=False, log_dir=tmp_path / "run")
    for epoch_batches in _epochs(_stream(5, 20, 4, 3), 20):
        for logits, targets, ids in epoch_batches:
            calc.update(logits, targets, ids)
        calc.end_epoch()
    calc.finalize()
    result = aum_replay.compute(tmp_path / "run", tmp_path / "replayed")
    assert result.epochs == [0, 1, 2]
    for name in ("aum_values.csv", "full_aum_records.csv"):
        assert (tmp_path / "replayed" / name).read_text() == (tmp_path / "out" / name).read_text()


def _epochs(batches, n: int):
    """Regroup a stream into epochs of n rows (the stream yields whole epochs in order)."""
    epoch, rows = [], 0
    for batch in batches:
        epoch.append(batch)
        rows += len(batch[2])
        if rows == n:
            yield epoch
            epoch, rows = [], 0


def test_returned_records_are_a_dict_built_on_first_use(tmp_path: Path) -> None:
    import copy
    import pickle

    calc = AUMCalculator(tmp_path)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    first = calc.update(logits, torch.tensor([0, 0]), [10, 11])
    second = calc.update(logits, torch.tensor([0, 0]), [10, 11])
    # The first batch's records keep the state after the first batch, however late they are read.
    assert first[10] == AUMRecord(10, 1, 0, 2.0, 1, 0.0, 2.0, 2.0)
    assert second[11] == AUMRecord(11, 2, 0, 0.0, 1, 1.0, -1.0, -1.0)
    assert isinstance(calc.update(logits, torch.tensor([0, 0]), [10, 11]), dict)  # third
    plain = {10: first[10], 11: first[11]}
    assert first == plain and plain == first and dict(first) == plain and {**first} == plain
    assert len(second) == 2 and list(second) == [10, 11] and 11 in second
    assert [r.num_measurements for r in second.values()] == [2, 2]
    untouched = calc.update(logits, torch.tensor([0, 0]), [10, 11])  # fourth
    assert pickle.loads(pickle.dumps(untouched)) == dict(untouched.items())
    fifth = calc.update(logits, torch.tensor([0, 0]), [10, 11])
    assert copy.copy(fifth)[10].num_measurements == 5
    assert calc.update(logits[:0], torch.tensor([], dtype=torch.long), []) == {}


def test_negative_huge_and_small_int_ids_mix(tmp_path: Path) -> None:
    """Small ids go through the lookup table, others through the dict: one id space."""
    pool = np.array([3, -5, 2**40, 0, 7, -(2**35), 12, 1])

    def batches():
        for logits, targets, ids in _stream(9, len(pool), 4, 4):
            yield logits, targets, torch.from_numpy(pool[ids.numpy()])

    ref_dir, our_dir = _run_both(tmp_path, batches())
    for name in ("full_aum_records.csv", "aum_values.csv"):
        assert (our_dir / name).read_text() == (ref_dir / name).read_text()


@pytest.mark.parametrize("ints", [True, False])
def test_the_seeds_attributes_and_records_to_df(tmp_path: Path, ints: bool) -> None:
    """counts, sums, records, vars(record) and records_to_df mean what they meant in the seed."""
    gen = torch.Generator().manual_seed(3)
    ref = aum.AUMCalculator(str(tmp_path / "ref"), compressed=False)
    ours = AUMCalculator(tmp_path / "ours", compressed=False)
    for _ in range(3):
        picked = torch.randperm(12, generator=gen)[:9].tolist()
        ids = picked if ints else [f"s{i}" for i in picked]
        logits = torch.randn(9, 4, generator=gen)
        targets = torch.randint(0, 4, (9,), generator=gen)
        ref.update(logits, targets, ids)
        ours.update(logits, targets, ids)
    assert dict(ours.counts) == dict(ref.counts) and dict(ours.sums) == dict(ref.sums)
    assert ours.counts["never seen" if not ints else 99] == 0  # a defaultdict, as in the seed
    assert [vars(r) for r in ours.records] == [vars(r) for r in ref.records]
    expected = aum.AUMCalculator.records_to_df(ref.records)
    assert AUMCalculator.records_to_df(ours.records).equals(expected)
    compressed = AUMCalculator(tmp_path / "c")
    with pytest.raises(AttributeError):
        _ = compressed.records  # the seed has no records when compressed
