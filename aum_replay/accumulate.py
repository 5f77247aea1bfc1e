"""Per-sample state: float64 margin sums and measurement counts, and running means.

The accumulator owns state only; the math of one measurement lives in :mod:`aum_replay.margins`.
Samples are addressed by a dense index ``0..N-1`` (the caller maps ids to indices once, at the
boundary). Sums are float64 and follow measurement order exactly, so results are bit-identical to
the reference's ``sums[id] += margin`` loop, including an index that appears twice in one block.
"""

from __future__ import annotations

import numpy as np

from aum_replay.kernels import loaded_torch

__all__ = ["MarginAccumulator", "occurrence_rank"]


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


class MarginAccumulator:
    """Float64 sums and int64 counts of margins per sample.

    Parameters
    ----------
    num_samples
        N, the number of dense sample indices; :meth:`grow` adds more.
    """

    def __init__(self, num_samples: int = 0) -> None:
        self.sums = np.zeros(num_samples, dtype=np.float64)
        self.counts = np.zeros(num_samples, dtype=np.int64)
        self._scratch = np.zeros(num_samples, dtype=np.int64)

    @property
    def num_samples(self) -> int:
        return len(self.sums)

    def grow(self, num_samples: int) -> None:
        """Extend the state to ``num_samples`` indices (new ones start empty)."""
        extra = num_samples - len(self.sums)
        if extra > 0:
            self.sums = np.concatenate([self.sums, np.zeros(extra)])
            self.counts = np.concatenate([self.counts, np.zeros(extra, dtype=np.int64)])
            self._scratch = np.zeros(num_samples, dtype=np.int64)

    def all_unique(self, index: np.ndarray) -> bool:
        """True when no value repeats in ``index`` (an O(B) check using scratch space)."""
        if len(index) < 2:
            return True
        positions = np.arange(len(index))
        self._scratch[index] = positions
        # With a repeat, two positions write one cell and at most one reads its own position back.
        return bool((self._scratch[index] == positions).all())

    def add(self, index: np.ndarray, margin: np.ndarray, *, unique: bool = False) -> None:
        """Add margins to the sums alone, in row order (for a caller that keeps the counts).

        ``unique``: no index repeats. Then, where torch is already imported, its ``index_add_``
        does it (one addition per sample, the same numbers) and, unlike ``np.add.at``, lets other
        threads run meanwhile. The replay never imports torch for this.
        """
        torch = loaded_torch()
        if unique and torch is not None:
            sums = torch.from_numpy(self.sums)
            sums.index_add_(0, torch.from_numpy(index), torch.from_numpy(margin))
        else:
            np.add.at(self.sums, index, margin)  # a repeated index is added in row order

    def update(
        self,
        index: np.ndarray,
        margin: np.ndarray,
        *,
        running: bool = False,
        unique: bool = False,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Add one measurement per row, in row order.

        Parameters
        ----------
        index
            Dense sample indices, shape (B,), ``int64``.
        margin
            Margins, shape (B,), ``float64``.
        running
            If True, return ``(num_measurements, aum)`` after each row, both of shape (B,):
            the count and running mean of that row's sample, as the full records need.
        unique
            With ``running``: the caller guarantees that no index repeats (skips the check).
            Without ``running`` it is not needed: margins are added with ``np.add.at``, which
            adds a repeated index's margins in row order.
        """
        if not running:  # add.at adds a repeated index's margins in row order: exact
            self.add(index, margin)
            np.add.at(self.counts, index, 1)
            return None
        if unique or self.all_unique(index):
            return self._running(index, margin)
        rank = occurrence_rank(index)
        out_n = np.empty(len(index), dtype=np.int64)
        out_aum = np.empty(len(index), dtype=np.float64)
        for k in range(int(rank.max()) + 1):
            rows = np.flatnonzero(rank == k)  # the k-th occurrences: unique indices
            out_n[rows], out_aum[rows] = self._running(index[rows], margin[rows])
        return out_n, out_aum

    def _running(self, index: np.ndarray, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # index holds no repeats here: one addition per sample.
        sums = self.sums[index] + margin
        counts = self.counts[index] + 1
        self.sums[index] = sums
        self.counts[index] = counts
        return counts, sums / counts

    def aum(self) -> np.ndarray:
        """AUM of every sample, shape (N,): sum / count, NaN where a sample has no measurement."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.sums / self.counts
        out[self.counts == 0] = np.nan
        return out
