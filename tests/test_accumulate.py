"""The per-sample accumulator: float64 sums in measurement order, counts, running means."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from aum_replay.accumulate import MarginAccumulator, occurrence_rank


class LoopReference:
    """The reference's ``sums[id] += margin`` loop, in Python floats."""

    def __init__(self) -> None:
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def update(self, index: list[int], margin: list[float]) -> tuple[list[int], list[float]]:
        ns, aums = [], []
        for i, m in zip(index, margin, strict=True):
            self.sums[i] = self.sums.get(i, 0.0) + m
            self.counts[i] = self.counts.get(i, 0) + 1
            ns.append(self.counts[i])
            aums.append(self.sums[i] / self.counts[i])
        return ns, aums


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


def test_occurrence_rank_examples() -> None:
    assert occurrence_rank(np.array([4, 2, 4, 4])).tolist() == [0, 0, 1, 2]
    assert occurrence_rank(np.array([1, 2, 3])).tolist() == [0, 0, 0]
    assert occurrence_rank(np.array([7, 7, 7, 7])).tolist() == [0, 1, 2, 3]
    assert occurrence_rank(np.array([], dtype=np.int64)).tolist() == []
    assert occurrence_rank(np.array([5, 0, 5, 0, 1])).dtype == np.int64


@given(st.lists(st.integers(0, 6), max_size=40))
def test_occurrence_rank_counts_earlier_equal_positions(values: list[int]) -> None:
    expected = [values[:i].count(v) for i, v in enumerate(values)]
    assert occurrence_rank(np.array(values, dtype=np.int64)).tolist() == expected


def test_all_unique() -> None:
    acc = MarginAccumulator(10)
    assert acc.all_unique(np.array([3, 1, 9, 0]))
    assert not acc.all_unique(np.array([3, 1, 3]))
    assert not acc.all_unique(np.array([2, 2]))
    assert acc.all_unique(np.array([5]))
    assert acc.all_unique(np.array([], dtype=np.int64))
    assert acc.all_unique(np.array([0, 1, 2, 3]))  # stale scratch from earlier calls is harmless


def test_unique_block_sums_and_counts() -> None:
    acc = MarginAccumulator(4)
    assert acc.update(np.array([2, 0]), np.array([1.5, -0.5])) is None
    n, aum = acc.update(np.array([2, 3]), np.array([0.25, 4.0]), running=True)  # type: ignore[misc]
    assert n.tolist() == [2, 1]
    assert aum.tolist() == [(1.5 + 0.25) / 2, 4.0]
    assert acc.sums.tolist() == [-0.5, 0.0, 1.75, 4.0]
    assert acc.counts.tolist() == [1, 0, 2, 1]
    aum_all = acc.aum()
    assert aum_all[0] == -0.5 and math.isnan(aum_all[1]) and aum_all[2] == 0.875


def test_repeated_index_in_one_block_is_summed_in_row_order() -> None:
    # 0.1 + 0.2 + 0.3 != 0.1 + (0.2 + 0.3) in floats: the order of additions is visible.
    index = [0, 1, 0, 0, 2, 1, 0]
    margin = [0.1, 1e16, 0.2, 0.3, -1.0, 1.0, 1e-17]
    acc = MarginAccumulator(3)
    n, aum = acc.update(np.array(index), np.array(margin), running=True)  # type: ignore[misc]
    ref = LoopReference()
    ref_n, ref_aum = ref.update(index, margin)
    assert n.tolist() == ref_n == [1, 1, 2, 3, 1, 2, 4]
    assert aum.tolist() == ref_aum
    assert acc.sums.tolist() == [ref.sums[i] for i in range(3)]
    assert acc.sums[0] == ((0.1 + 0.2) + 0.3) + 1e-17
    assert acc.counts.tolist() == [4, 2, 1]


def test_nan_margin_keeps_the_sample_nan() -> None:
    acc = MarginAccumulator(2)
    acc.update(np.array([0, 1]), np.array([math.nan, 1.0]))
    acc.update(np.array([0, 1]), np.array([2.0, 3.0]))
    aum = acc.aum()
    assert math.isnan(aum[0]) and aum[1] == 2.0


def test_grow_keeps_state_and_adds_empty_samples() -> None:
    acc = MarginAccumulator(2)
    acc.update(np.array([0, 1, 1]), np.array([1.0, 2.0, 3.0]))
    acc.grow(4)
    acc.grow(3)  # shrinking is a no-op
    assert acc.num_samples == 4
    assert acc.sums.tolist() == [1.0, 5.0, 0.0, 0.0]
    assert acc.counts.tolist() == [1, 2, 0, 0]
    acc.update(np.array([3, 3, 0]), np.array([1.0, 1.0, 1.0]))
    assert acc.counts.tolist() == [2, 2, 0, 2]


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 5), st.floats(allow_nan=False, allow_infinity=False, width=32)
            ),
            max_size=25,
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_blocks_match_the_sequential_loop_bit_for_bit(
    blocks: list[list[tuple[int, float]]], running: bool
) -> None:
    acc = MarginAccumulator(6)
    ref = LoopReference()
    for block in blocks:
        index = [i for i, _ in block]
        margin = [m for _, m in block]
        out = acc.update(
            np.array(index, dtype=np.int64), np.array(margin, dtype=np.float64), running=running
        )
        ref_n, ref_aum = ref.update(index, margin)
        if running:
            assert out is not None
            assert out[0].tolist() == ref_n
            assert all(same_float(a, b) for a, b in zip(out[1].tolist(), ref_aum, strict=True))
        else:
            assert out is None
    for i in range(6):
        assert acc.counts[i] == ref.counts.get(i, 0)
        if i in ref.sums:
            assert same_float(float(acc.sums[i]), ref.sums[i])
            assert same_float(float(acc.aum()[i]), ref.sums[i] / ref.counts[i])
        else:
            assert math.isnan(acc.aum()[i])
