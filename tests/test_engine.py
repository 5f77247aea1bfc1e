"""The fold: float64 sums in measurement order, counts, running means, and exact merges."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aum_replay.engine import Fold, Segment, all_unique, fold_all, occurrence_rank
from aum_replay.kernels import STATS, block_stats
from aum_replay.reducers import AUM, METRICS, Correctness, Reducer, reducers_for


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
    scratch = np.zeros(10, dtype=np.int64)
    assert all_unique(np.array([3, 1, 9, 0]), scratch)
    assert not all_unique(np.array([3, 1, 3]), scratch)
    assert not all_unique(np.array([2, 2]), scratch)
    assert all_unique(np.array([5]), scratch)
    assert all_unique(np.array([], dtype=np.int64), scratch)
    assert all_unique(
        np.array([0, 1, 2, 3]), scratch
    )  # stale scratch from earlier calls is harmless


class Running:
    """A sink that keeps every counted row's (position, count, aum), in fold order."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float]] = []

    def __call__(
        self, rows: Segment, where: np.ndarray | None, counts: np.ndarray, aum: np.ndarray
    ) -> None:
        at = np.arange(len(rows.index)) if where is None else where
        self.rows += zip((rows.start + at).tolist(), counts.tolist(), aum.tolist(), strict=True)

    def bits(self) -> list[tuple[int, int, int]]:
        """Every row as (position, count, the bits of its aum), sorted: NaN compares equal."""
        return sorted((p, n, struct.unpack("<q", struct.pack("<d", a))[0]) for p, n, a in self.rows)

    def in_row_order(self) -> tuple[list[int], list[float]]:
        ordered = sorted(self.rows)
        return [n for _, n, _ in ordered], [a for _, _, a in ordered]


def seg(start: int, index: list[int], margin: list[float], epoch: int = 0) -> Segment:
    targets = np.zeros(len(index), dtype=np.int64)
    stats = {"margin": np.array(margin, dtype=np.float64)}
    return Segment(start, epoch, np.array(index, dtype=np.int64), targets, stats)


def aum_fold(n: int, sink: Running | None = None) -> tuple[Fold, AUM]:
    aum = AUM(n)
    return Fold(n, [aum], duplicates="all", sink=sink), aum


def test_unique_block_sums_and_counts() -> None:
    sink = Running()
    fold, aum = aum_fold(4, sink)
    fold.update(seg(0, [2, 0], [1.5, -0.5]))
    fold.update(seg(2, [2, 3], [0.25, 4.0]))
    n, running = sink.in_row_order()
    assert n == [1, 1, 2, 1]
    assert running[2:] == [(1.5 + 0.25) / 2, 4.0]
    assert aum.sums.tolist() == [-0.5, 0.0, 1.75, 4.0]
    result = fold.result(4)
    assert result.counts.tolist() == [1, 0, 2, 1]
    aum_all = result.signals["aum"]
    assert aum_all[0] == -0.5 and math.isnan(aum_all[1]) and aum_all[2] == 0.875


def test_repeated_index_in_one_block_is_summed_in_row_order() -> None:
    # 0.1 + 0.2 + 0.3 != 0.1 + (0.2 + 0.3) in floats: the order of additions is visible.
    index = [0, 1, 0, 0, 2, 1, 0]
    margin = [0.1, 1e16, 0.2, 0.3, -1.0, 1.0, 1e-17]
    sink = Running()
    fold, aum = aum_fold(3, sink)
    fold.update(seg(0, index, margin))
    n, running = sink.in_row_order()
    ref = LoopReference()
    ref_n, ref_aum = ref.update(index, margin)
    assert n == ref_n == [1, 1, 2, 3, 1, 2, 4]
    assert running == ref_aum
    assert aum.sums.tolist() == [ref.sums[i] for i in range(3)]
    assert aum.sums[0] == ((0.1 + 0.2) + 0.3) + 1e-17
    assert fold.counts.tolist() == [4, 2, 1]


def test_nan_margin_keeps_the_sample_nan_and_is_counted() -> None:
    fold, _ = aum_fold(2)
    fold.update(seg(0, [0, 1], [math.nan, 1.0]))
    fold.update(seg(2, [0, 1], [2.0, 3.0]))
    result = fold.result()
    assert math.isnan(result.signals["aum"][0]) and result.signals["aum"][1] == 2.0
    assert result.nonfinite_margins == 1


def test_resize_keeps_state_and_adds_empty_samples() -> None:
    fold, aum = aum_fold(2)
    fold.update(seg(0, [0, 1, 1], [1.0, 2.0, 3.0]))
    fold.resize(4)
    fold.resize(3)  # shrinking is a no-op
    assert fold.num_samples == 4
    assert aum.sums.tolist() == [1.0, 5.0, 0.0, 0.0]
    assert fold.counts.tolist() == [1, 2, 0, 0]
    fold.update(seg(3, [3, 3, 0], [1.0, 1.0, 1.0]))
    assert fold.counts.tolist() == [2, 2, 0, 2]


def test_segments_out_of_order_wait_for_the_gap() -> None:
    whole, _ = aum_fold(3)
    whole.update(seg(0, [0, 1], [0.1, 0.2]))
    whole.update(seg(2, [0, 2], [0.2, 0.4]))
    whole.update(seg(4, [0], [0.3]))
    fold, aum = aum_fold(3)
    fold.update(seg(4, [0], [0.3]))
    fold.update(seg(2, [0, 2], [0.2, 0.4]))
    assert fold.frontier == 0 and aum.sums.tolist() == [0.0, 0.0, 0.0]  # nothing folded yet
    with pytest.raises(ValueError, match="rows 0:2 of the run were never given"):
        fold.result()
    fold.update(seg(0, [0, 1], [0.1, 0.2]))
    assert fold.frontier == 5
    assert fold.result(5).signals["aum"].tolist() == whole.result(5).signals["aum"].tolist()
    with pytest.raises(ValueError, match="rows 5:6"):
        fold.result(6)


def test_overlapping_measurements_are_refused() -> None:
    fold, _ = aum_fold(3)
    fold.update(seg(0, [0, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="overlap"):
        fold.update(seg(1, [2], [0.3]))
    other, _ = aum_fold(3)
    other.update(seg(0, [0], [1.0]))
    with pytest.raises(ValueError, match="overlap"):
        fold.merge(other)
    late, _ = aum_fold(3)
    late.update(seg(5, [0, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="overlap"):
        late.update(seg(6, [2], [0.3]))
    with pytest.raises(ValueError, match="different reducers"):
        fold.merge(Fold(3, [AUM(3), Correctness(3)], duplicates="all"))
    with pytest.raises(ValueError, match="samples"):
        fold.merge(aum_fold(4)[0])


def test_a_segment_without_what_the_reducers_read_is_refused() -> None:
    fold = Fold(2, [Correctness(2)])
    with pytest.raises(ValueError, match=r"lacks the statistics \['correct'\]"):
        fold.update(seg(0, [0], [1.0]))


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
    blocks: list[list[tuple[int, float]]], with_sink: bool
) -> None:
    sink = Running() if with_sink else None
    fold, aum = aum_fold(6, sink)
    ref = LoopReference()
    start = 0
    want_n: list[int] = []
    want_aum: list[float] = []
    for block in blocks:
        index = [i for i, _ in block]
        margin = [m for _, m in block]
        fold.update(seg(start, index, margin))
        start += len(index)
        ref_n, ref_aum = ref.update(index, margin)
        want_n += ref_n
        want_aum += ref_aum
    if sink is not None:
        n, running = sink.in_row_order()
        assert n == want_n
        assert all(same_float(a, b) for a, b in zip(running, want_aum, strict=True))
    result = fold.result(start)
    for i in range(6):
        assert result.counts[i] == ref.counts.get(i, 0)
        if i in ref.sums:
            assert same_float(float(aum.sums[i]), ref.sums[i])
            assert same_float(float(result.signals["aum"][i]), ref.sums[i] / ref.counts[i])
        else:
            assert math.isnan(result.signals["aum"][i])


def random_segments(seed: int, n: int, epochs: int, *, pad: bool) -> list[Segment]:
    """A run's blocks through the real kernel: integer logits (ties), a NaN row, DDP padding."""
    rng = np.random.default_rng(seed)
    segments: list[Segment] = []
    start = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        if pad:
            order = np.concatenate([order, order[: rng.integers(1, 3)]])
        for part in np.array_split(order, int(rng.integers(1, 4))):
            logits = rng.integers(-2, 3, size=(len(part), 4)).astype(np.float32)
            logits += rng.normal(scale=0.3, size=logits.shape).astype(np.float32) * (
                rng.random(logits.shape) < 0.5
            )
            if rng.random() < 0.2 and len(part):
                logits[0, int(rng.integers(0, 4))] = np.nan
            targets = rng.integers(0, 4, size=len(part))
            stats = block_stats(logits, targets, "float32", STATS)
            segments.append(Segment(start, epoch, part.astype(np.int64), targets, stats))
            start += len(part)
    return segments


def every_reducer(n: int) -> list[Reducer]:
    return reducers_for(list(METRICS), n)


def one_pass(segments: list[Segment], n: int, duplicates: str) -> tuple[Fold, Running]:
    sink = Running()
    fold = Fold(n, every_reducer(n), duplicates=duplicates, sink=sink)  # type: ignore[arg-type]
    return fold_all(fold, segments), sink


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**16),
    st.sampled_from(["first", "all"]),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.randoms(use_true_random=False),
)
def test_any_split_merged_in_any_order_is_one_pass_bit_for_bit(
    seed: int, duplicates: str, cuts: list[int], order: Any
) -> None:
    """Cut a run's rows anywhere into pieces, fold each piece alone, merge the states in a
    random order and grouping: every signal, count, label and full record is the one pass's."""
    n = 7
    segments = random_segments(seed, n, 4, pad=True)
    whole, whole_sink = one_pass(segments, n, duplicates)
    total = whole.frontier
    # Cut the stream of rows at the given positions, then group the pieces into random states.
    rows = [s for seg_ in segments for s in _cut(seg_, {c % (total + 1) for c in cuts})]
    assert [p.start for p in rows[1:]] == [p.stop for p in rows[:-1]] and rows[-1].stop == total
    sink = Running()
    states = []
    for piece in rows:
        state = Fold(n, every_reducer(n), duplicates=duplicates, sink=sink)  # type: ignore[arg-type]
        state.update(piece)
        states.append(state)
    order.shuffle(states)
    while len(states) > 1:
        i = order.randrange(len(states) - 1)
        states[i : i + 2] = [states[i].merge(states[i + 1])]
    merged = states[0].result(total)
    expected = whole.result(total)
    assert np.array_equal(merged.counts, expected.counts)
    assert np.array_equal(merged.labels, expected.labels)
    assert merged.duplicates_dropped == expected.duplicates_dropped
    assert merged.nonfinite_margins == expected.nonfinite_margins
    for name, values in expected.signals.items():
        got = merged.signals[name]
        assert got.tobytes() == values.tobytes(), name  # bit for bit, NaN and -0.0 included
    assert sink.bits() == whole_sink.bits()


def _cut(segment: Segment, cuts: set[int]) -> list[Segment]:
    """``segment`` cut at every position of ``cuts`` that falls inside it."""
    pieces = []
    for cut in sorted(c for c in cuts if segment.start < c < segment.stop):
        head, segment = segment.split(cut - segment.start)
        pieces.append(head)
    pieces.append(segment)
    return pieces


@given(
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(1, 5),
    st.randoms(use_true_random=False),
)
def test_labels_from_the_last_epoch_alone_are_the_labels_of_every_row(
    n: int, epochs: int, pieces: int, rng: Any
) -> None:
    """A clean run whose every sample is in every epoch: folding only the last epoch's targets
    (``labels_epoch``) gives each sample's last label, as scattering every epoch's does, even
    where a sample's label changes between epochs; counts and AUM are untouched."""
    segments = []
    start = 0
    for epoch in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        cuts = sorted(rng.sample(range(1, n), min(pieces, n) - 1)) if n > 1 else []
        for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
            index = np.array(order[lo:hi], dtype=np.int64)
            targets = np.array([rng.randrange(3) for _ in index], dtype=np.int64)
            margin = {"margin": np.array([rng.uniform(-2, 2) for _ in index])}
            segments.append(Segment(start, epoch, index, targets, margin))
            start += len(index)
    counts = np.full(n, epochs, dtype=np.int64)
    results = []
    for labels_epoch in (None, epochs - 1):
        fold = Fold(n, [AUM(n)], clean=True, counts=counts, labels_epoch=labels_epoch)
        results.append(fold_all(fold, segments).result(start))
    plain, last_only = results
    assert last_only.labels.tolist() == plain.labels.tolist()
    assert last_only.counts.tolist() == plain.counts.tolist()
    assert last_only.signals["aum"].tolist() == plain.signals["aum"].tolist()
