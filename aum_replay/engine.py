"""The fold: kernel output in measurement order -> duplicates ledger -> reducers.

A replay is a stream of :class:`Segment` s: the per-row statistics of consecutive rows of the
measurement stream (epochs in order, ranks in rank order inside an epoch, rows in file order),
each tagged with the position of its first row. A :class:`Fold` is the state of a replay over a
set of measurements: the rows from position 0 up to its frontier are folded into per-sample
state (the ledger's labels and counts, every reducer's arrays); rows that lie beyond a gap are
kept as they are, until the segments in between arrive. So

- a single-machine replay folds each block as it comes (nothing ever waits);
- a distributed one computes segments anywhere (each task starts its own :class:`Fold`) and
  :meth:`Fold.merge` s them in any order and grouping: the result is bit for bit the one pass,
  because the float sums are always added in measurement order. That is what AUM needs (the
  reference adds margins in measurement order) and what makes the other signals independent of
  the number of workers, the block size and the split too.

Memory: O(samples) for the folded state, plus the rows of the segments waiting behind a gap.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np

from aum_replay.kernels import Stats
from aum_replay.reducers import AUM, Reducer

__all__ = ["Fold", "FoldResult", "Segment", "Sink", "all_unique", "fold_all", "occurrence_rank"]

Duplicates = Literal["first", "all"]


def occurrence_rank(index: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same value.

    ``occurrence_rank([4, 2, 4, 4]) == [0, 0, 1, 2]``. Shape (B,) in, (B,) ``int64`` out.
    """
    n = len(index)
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    positions = np.arange(n)
    starts = np.ones(n, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = positions - group_start
    return rank


def all_unique(index: np.ndarray, scratch: np.ndarray) -> bool:
    """True when no value repeats in ``index``; O(B), using ``scratch`` (len > max(index))."""
    if len(index) < 2:
        return True
    positions = np.arange(len(index))
    scratch[index] = positions
    # With a repeat, two positions write one cell and at most one reads its own position back.
    return bool((scratch[index] == positions).all())


@dataclass
class Segment:
    """Consecutive rows of the measurement stream, through the kernel.

    Every array has one entry per row; rows are in measurement order.
    """

    start: int
    """Position of the first row in the run's measurement stream (every row counts, dropped
    duplicates included)."""
    epoch: int
    """The epoch all these rows belong to."""
    index: np.ndarray
    """Dense sample index of each row (``int64``)."""
    targets: np.ndarray
    """Stored label of each row (``int64``)."""
    stats: Stats
    """Per-row statistics of the kernel (:data:`aum_replay.kernels.STATS`)."""
    finite: bool | None = None
    """Every margin is finite (``None``: not checked)."""

    @property
    def stop(self) -> int:
        return self.start + len(self.index)

    def rows(self, pick: np.ndarray | slice) -> Segment:
        """The rows at positions ``pick`` (for the fold; ``start`` is kept)."""
        stats = {name: value[pick] for name, value in self.stats.items()}
        return Segment(self.start, self.epoch, self.index[pick], self.targets[pick], stats)

    @staticmethod
    def concat(parts: Sequence[Segment]) -> Segment:
        """Consecutive segments of one epoch (``parts[k + 1].start == parts[k].stop``) as one."""
        first = parts[0]
        for a, b in pairwise(parts):
            if b.start != a.stop or b.epoch != a.epoch:
                raise ValueError("only consecutive segments of one epoch concatenate")
        if len(parts) == 1:
            return first
        stats = {k: np.concatenate([p.stats[k] for p in parts]) for k in first.stats}
        finite = None if any(p.finite is None for p in parts) else all(p.finite for p in parts)
        return Segment(
            first.start,
            first.epoch,
            np.concatenate([p.index for p in parts]),
            np.concatenate([p.targets for p in parts]),
            stats,
            finite,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (what a task sends back)."""
        arrays = [self.index, self.targets, *self.stats.values()]
        return sum(a.nbytes for a in arrays)

    def split(self, at: int) -> tuple[Segment, Segment]:
        """The first ``at`` rows and the rest, as two segments of the same stream."""
        head, tail = self.rows(slice(0, at)), self.rows(slice(at, None))
        tail.start = self.start + at
        return head, tail


#: Called with each round of counted rows (no index repeats) once the reducers have folded
#: them: ``sink(rows, where, counts, aum)``: the rows, their positions in the segment given to
#: :meth:`Fold.update` (``None``: all of its rows, in order), each row's sample's measurement
#: count and AUM just after it. The full records are written from it.
Sink = Callable[[Segment, np.ndarray | None, np.ndarray, np.ndarray], None]


@dataclass
class FoldResult:
    """What :meth:`Fold.result` returns: the ledger's figures and every reducer's signals."""

    counts: np.ndarray
    """Counted measurements of each sample (N,)."""
    labels: np.ndarray
    """Label of each sample's last counted row (N,), -1 if none."""
    signals: dict[str, np.ndarray]
    duplicates_dropped: int
    nonfinite_margins: int
    rows: int
    """Rows folded (the frontier)."""


class _Ledger:
    """Which rows count: with ``duplicates="first"``, the first row of a sample in each epoch.

    Every row gets a ticket (its position in the stream); a sample's mark is the ticket of its
    last row seen (counted or dropped), so "seen this epoch" is mark >= the epoch's first
    ticket. ``clean``: no epoch holds an id twice, so there is nothing to drop.
    """

    def __init__(self, n: int, duplicates: Duplicates, *, clean: bool) -> None:
        self.first_only = duplicates == "first" and not clean
        self.unique_rows = duplicates == "first" or clean
        """No sample index repeats among the rows admitted from one segment."""
        self.dropped = 0
        self.mark = np.full(n if self.first_only else 0, -1, dtype=np.int64)
        self.epoch_start = 0

    def resize(self, n: int) -> None:
        if self.first_only and len(self.mark) < n:
            mark = np.full(n, -1, dtype=np.int64)
            mark[: len(self.mark)] = self.mark
            self.mark = mark

    def new_epoch(self, start: int) -> None:
        self.epoch_start = start

    def admit(self, seg: Segment) -> np.ndarray | None:
        """The positions of the rows of ``seg`` that count (``None``: all of them)."""
        if not self.first_only:
            return None
        index = seg.index
        tickets = np.arange(seg.start, seg.stop)
        earlier = self.mark[index]
        self.mark[index] = tickets
        # A repeated index keeps one ticket, so at most one of its rows reads its own back.
        unique = bool((self.mark[index] == tickets).all())
        if unique and (not len(index) or int(earlier.max()) < self.epoch_start):
            return None  # the common case: no sample seen before in this epoch
        fresh = earlier < self.epoch_start
        if not unique:
            fresh &= occurrence_rank(index) == 0
        keep = np.flatnonzero(fresh)
        self.dropped += len(index) - len(keep)
        return keep

    def seen_this_epoch(self) -> np.ndarray:
        return self.mark >= self.epoch_start


class Fold:
    """Mergeable replay state: ledger, labels, counts and reducers, over a set of measurements.

    Parameters
    ----------
    num_samples
        N, the number of dense sample indices (:meth:`resize` adds more).
    reducers
        The reducers to feed; the kernel must give every statistic they need.
    duplicates
        ``"first"``: a sample counts once per epoch, its first row; ``"all"``: every row.
    clean
        The caller knows that no epoch holds a sample twice (then nothing is dropped).
    counts
        The final measurement counts, when the caller knows them (a clean run's id scan): then
        rows are not counted one by one, unless a reducer or the sink needs running counts.
    sink
        Receives every counted row with its running count and AUM (needs an :class:`AUM`).
    labels_epoch
        The caller knows that every sample has a counted row in this epoch, the run's last
        (a clean run whose every sample is in every epoch): the labels, those of each sample's
        last counted row, then come from its rows alone, and the scatter of every earlier
        epoch's targets is skipped.
    """

    def __init__(
        self,
        num_samples: int,
        reducers: Sequence[Reducer],
        *,
        duplicates: Duplicates = "first",
        clean: bool = False,
        counts: np.ndarray | None = None,
        sink: Sink | None = None,
        labels_epoch: int | None = None,
    ) -> None:
        if duplicates not in ("first", "all"):
            raise ValueError(f"duplicates must be 'first' or 'all', not {duplicates!r}")
        self.reducers = list(reducers)
        self.duplicates: Duplicates = duplicates
        self.clean = clean
        self.sink = sink
        self.labels_epoch = labels_epoch
        self.aum: AUM | None = None
        for reducer in self.reducers:
            if isinstance(reducer, AUM):
                self.aum = reducer
        if sink is not None and self.aum is None:
            raise ValueError("a sink needs the AUM reducer (its running values)")
        self.needs = frozenset().union(*(r.needs for r in self.reducers))
        self._ledger = _Ledger(num_samples, duplicates, clean=clean)
        self.labels = np.full(num_samples, -1, dtype=np.int64)
        running = sink is not None or any(r.reads_counts for r in self.reducers)
        # With first-only counting and no running counts, each epoch's end adds one to every
        # sample seen in it: one pass over N instead of a scatter per row.
        self._count_epochs = not running and counts is None and self._ledger.first_only
        self._count_rows = running or (counts is None and not self._count_epochs)
        self.counts = np.zeros(num_samples, dtype=np.int64) if counts is None or running else counts
        self._scratch: np.ndarray | None = None  # for all_unique, made when first needed
        self.nonfinite = 0
        self.frontier = 0
        self._epoch: int | None = None
        self._pending: list[tuple[int, int, Segment]] = []  # (start, stop, segment), sorted

    # ------------------------------------------------------------------ building the state
    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def resize(self, num_samples: int) -> None:
        """Extend the state to ``num_samples`` indices (new ones start empty)."""
        if num_samples <= self.num_samples:
            return
        if not (self._count_rows or self._count_epochs):  # the counts were given, final
            raise ValueError("a Fold built with known counts cannot grow")
        extra = num_samples - self.num_samples
        self.labels = np.concatenate([self.labels, np.full(extra, -1, dtype=np.int64)])
        self.counts = np.concatenate([self.counts, np.zeros(extra, dtype=np.int64)])
        self._scratch = None
        self._ledger.resize(num_samples)
        for reducer in self.reducers:
            reducer.resize(num_samples)

    def update(self, seg: Segment) -> None:
        """Add one segment: folded now if it continues the folded rows, else kept until then."""
        if not len(seg.index):
            return
        if seg.start == self.frontier and not self._pending:
            self._fold(seg)
        else:
            self._hold(seg)
            self._drain()

    def merge(self, other: Fold) -> Fold:
        """The state of the measurements of both (disjoint sets); returns it.

        Bit for bit the state one pass over all the rows in measurement order would give, in
        whatever order and grouping states are merged. The state that holds the start of the
        run (folded rows) carries the result: it is returned, and the other one must not be
        used afterwards.
        """
        self._check_compatible(other)
        if other.frontier > 0 and self.frontier > 0:
            raise ValueError("both states hold the first rows of the run: measurements overlap")
        base, extra = (other, self) if other.frontier > 0 else (self, other)
        base.sink = base.sink or extra.sink
        for _, _, seg in extra._pending:
            base._hold(seg)
        extra._pending = []
        base._drain()
        return base

    def result(self, rows: int | None = None) -> FoldResult:
        """Close the last epoch and compute every signal.

        ``rows``: how many rows the run has; a gap (a segment never given) is an error.
        """
        if self._pending:
            start = self._pending[0][0]
            raise ValueError(f"rows {self.frontier}:{start} of the run were never given")
        if rows is not None and rows != self.frontier:
            raise ValueError(f"rows {self.frontier}:{rows} of the run were never given")
        counts = self.counts
        if self._count_epochs and self._epoch is not None:  # the open epoch's samples
            counts = counts + self._ledger.seen_this_epoch()
        signals: dict[str, np.ndarray] = {}
        for reducer in self.reducers:
            signals.update(reducer.compute(counts))
        return FoldResult(
            counts=counts,
            labels=self.labels,
            signals=signals,
            duplicates_dropped=self._ledger.dropped,
            nonfinite_margins=self.nonfinite,
            rows=self.frontier,
        )

    # ------------------------------------------------------------------ the fold itself
    def _check_compatible(self, other: Fold) -> None:
        mine = [(type(r), r.names) for r in self.reducers]
        theirs = [(type(r), r.names) for r in other.reducers]
        if mine != theirs or self.duplicates != other.duplicates or self.clean != other.clean:
            raise ValueError("cannot merge states of different reducers or duplicate rules")
        if self.num_samples != other.num_samples:
            raise ValueError(
                f"cannot merge states over {self.num_samples} and {other.num_samples} samples"
            )

    def _hold(self, seg: Segment) -> None:
        if seg.start < self.frontier:
            raise ValueError(f"rows from {seg.start} were folded already: measurements overlap")
        at = bisect_left(self._pending, seg.start, key=lambda item: item[0])
        before = self._pending[at - 1] if at else None
        after = self._pending[at] if at < len(self._pending) else None
        # The list is sorted and disjoint: only the neighbours can overlap the new segment.
        if before is not None and before[1] > seg.start:
            raise ValueError(f"two segments hold row {seg.start}: measurements overlap")
        if after is not None and after[0] < seg.stop:
            raise ValueError(f"two segments hold row {after[0]}: measurements overlap")
        self._pending.insert(at, (seg.start, seg.stop, seg))

    def _drain(self) -> None:
        while self._pending and self._pending[0][0] == self.frontier:
            _, _, seg = self._pending.pop(0)
            self._fold(seg)

    def _end_epoch(self) -> None:
        if self._count_epochs and self._epoch is not None:
            self.counts += self._ledger.seen_this_epoch()

    def _fold(self, seg: Segment) -> None:
        missing = self.needs.difference(seg.stats)
        if missing:
            raise ValueError(f"the segment lacks the statistics {sorted(missing)}")
        if seg.epoch != self._epoch:
            self._end_epoch()
            self._ledger.new_epoch(seg.start)
            self._epoch = seg.epoch
        self.frontier = seg.stop
        keep = self._ledger.admit(seg)
        rows = seg if keep is None else seg.rows(keep)
        if self.labels_epoch is None or seg.epoch == self.labels_epoch:
            self.labels[rows.index] = rows.targets  # a repeated index: its last row's label
        if "margin" in rows.stats and not seg.finite:
            self.nonfinite += int((~np.isfinite(rows.stats["margin"])).sum())
        if self._ledger.unique_rows or all_unique(rows.index, self._scratch_array()):
            self._round(rows, keep)
            return
        rank = occurrence_rank(rows.index)  # --duplicates all: the k-th rows in round k
        for k in range(int(rank.max()) + 1):
            pick = np.flatnonzero(rank == k)
            self._round(rows.rows(pick), pick if keep is None else keep[pick])

    def _scratch_array(self) -> np.ndarray:
        if self._scratch is None:
            self._scratch = np.zeros(self.num_samples, dtype=np.int64)
        return self._scratch

    def _round(self, rows: Segment, where: np.ndarray | None) -> None:
        """Rows without a repeated index into the counts, the reducers and the sink."""
        index = rows.index
        counts = None
        if self._count_rows:
            counts = self.counts[index] + 1
            self.counts[index] = counts
        for reducer in self.reducers:
            reducer.update(index, rows.stats, counts)
        if self.sink is not None:
            assert self.aum is not None and counts is not None
            self.sink(rows, where, counts, self.aum.running(index, counts))


def fold_all(fold: Fold, segments: Iterable[Segment]) -> Fold:
    """Feed ``segments`` to ``fold`` in the order given; returns ``fold``."""
    for seg in segments:
        fold.update(seg)
    return fold
