"""Per-sample reducers of the training-dynamics signals: ``update`` / ``merge`` / ``compute``.

Each reducer owns per-sample state over dense sample indices ``0..N-1`` (the caller maps ids
once) and no math of its own beyond folding the per-row statistics of
:func:`aum_replay.kernels.row_signals` in measurement order. ``merge(other)`` folds in the state
of a later, disjoint stretch of measurements (the next epochs, say), so that a replay split into
pieces and merged left to right gives what one pass gives: exactly for the counts, correctness
and forgetting; to float64 rounding for the means and the spread (a float sum regrouped rounds
differently). ``update`` takes rows whose indices do not repeat (one row per sample: the replay
splits a block with repeats into rounds of first, second, ... occurrences).

The signals (SPEC section 7), for each sample over its counted measurements:

- ``confidence`` = mean of p[y]; ``variability`` = population standard deviation of p[y]
  (Welford's update, Chan's merge); ``correctness`` = fraction with argmax(z) == y (dataset
  cartography, Swayamdipta et al. 2020);
- ``forgetting_events`` = consecutive pairs going from correct to incorrect; ``never_learned`` =
  no measurement correct (Toneva et al. 2019);
- ``el2n`` = mean of ||p - onehot(y)||_2 (Paul et al. 2021); ``loss`` = mean of
  logsumexp(z) - z[y]; ``aleatoric`` = mean of p[y] (1 - p[y]) (Data-IQ, Seedat et al. 2022).

A NaN row makes the float signals of its sample NaN, and its forgetting events and
never-learned flag unknown (null): a NaN correctness cannot say whether it was forgotten.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aum_replay.kernels import RowSignals

__all__ = ["METRICS", "DynamicsState"]

#: Every signal, in the column order of ``training_dynamics.csv`` (after sample_id, target and
#: num_measurements).
METRICS = (
    "aum",
    "confidence",
    "variability",
    "correctness",
    "forgetting_events",
    "never_learned",
    "el2n",
    "loss",
    "aleatoric",
)

_MEANS = ("p_target", "correct", "el2n", "loss", "aleatoric")


class DynamicsState:
    """The per-sample state of every signal but AUM (which keeps its own exact accumulator).

    Parameters
    ----------
    num_samples
        N, the number of dense sample indices.
    """

    def __init__(self, num_samples: int) -> None:
        n = num_samples
        self.count = np.zeros(n, dtype=np.int64)
        self.sums = {name: np.zeros(n) for name in _MEANS}
        self.mean_p = np.zeros(n)  # Welford's running mean and M2 of p[y]
        self.m2_p = np.zeros(n)
        self.first = np.full(n, -1, dtype=np.int8)  # first and last correctness: -1 none, 0, 1
        self.last = np.full(n, -1, dtype=np.int8)
        self.forgotten = np.zeros(n, dtype=np.int64)
        self.learned = np.zeros(n, dtype=bool)
        self.nan_rows = np.zeros(n, dtype=np.int64)

    def update(self, index: np.ndarray, rows: RowSignals) -> None:
        """Fold one measurement per index (no index repeats) into the state, in row order."""
        p = rows.p_target
        values = {
            "p_target": p,
            "correct": rows.correct,
            "el2n": rows.el2n,
            "loss": rows.loss,
            "aleatoric": p * (1.0 - p),
        }
        for name, value in values.items():
            self.sums[name][index] += value
        n = self.count[index] + 1
        self.count[index] = n
        mean = self.mean_p[index]
        delta = p - mean
        mean = mean + delta / n
        self.mean_p[index] = mean
        self.m2_p[index] += delta * (p - mean)
        nan = np.isnan(rows.correct)
        self.nan_rows[index[nan]] += 1
        correct = np.where(nan, 0, rows.correct).astype(np.int8)
        last = self.last[index]
        self.forgotten[index] += (last == 1) & (correct == 0) & ~nan
        self.last[index] = np.where(nan, last, correct)
        unset = self.first[index] < 0
        self.first[index[unset & ~nan]] = correct[unset & ~nan]
        self.learned[index[correct == 1]] = True

    def merge(self, other: DynamicsState) -> None:
        """Fold in ``other``: the state of the measurements that come after this one's."""
        for name in _MEANS:
            self.sums[name] += other.sums[name]
        n_a, n_b = self.count, other.count
        total = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean_p - self.mean_p
            share = np.where(total > 0, n_b / np.maximum(total, 1), 0.0)
            self.mean_p = self.mean_p + delta * share
            self.m2_p = self.m2_p + other.m2_p + delta * delta * n_a * share
        self.count = total
        self.forgotten += other.forgotten + ((self.last == 1) & (other.first == 0))
        self.first = np.where(self.first < 0, other.first, self.first)
        self.last = np.where(other.last < 0, self.last, other.last)
        self.learned |= other.learned
        self.nan_rows += other.nan_rows

    def compute(self) -> dict[str, Any]:
        """Every signal but ``aum``, arrays of shape (N,); NaN (or None) where undefined."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = {name: self.sums[name] / n for name in _MEANS}
            variability = np.sqrt(np.maximum(self.m2_p / n, 0.0))
        nan = self.nan_rows > 0
        variability[nan] = np.nan
        known = ~nan & (n > 0)
        return {
            "confidence": mean["p_target"],
            "variability": variability,
            "correctness": mean["correct"],
            "forgetting_events": np.where(known, self.forgotten, -1),
            "never_learned": np.where(known, ~self.learned, False),
            "known": known,
            "el2n": mean["el2n"],
            "loss": mean["loss"],
            "aleatoric": mean["aleatoric"],
        }
