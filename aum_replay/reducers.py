"""Per-sample reducers: fold per-row statistics into per-sample state, then compute the signals.

A reducer owns per-sample state over dense sample indices ``0..N-1`` (the caller maps ids once)
and names the per-row statistics it reads (:data:`aum_replay.kernels.STATS`); the kernel
computes each statistic once per block for every reducer that reads it. ``update`` folds rows
whose indices do not repeat (one row per sample, in measurement order); ``counts`` are then each
row's sample's measurement count including that row, kept by the caller
(:class:`aum_replay.engine.Fold`, which also owns the duplicates ledger, the labels and the
merge of partial states). ``compute`` returns the signals.

Merging partial states exactly is the caller's job, not the reducers': a float sum regrouped
rounds differently, and AUM must stay bit for bit the reference's, which adds margins in
measurement order. So a :class:`~aum_replay.engine.Fold` keeps the rows of a stretch that does
not follow its folded prefix as they are, and folds them in measurement order when the gap
closes; every signal below then comes out bit for bit the same however a run is split, merged
or blocked.

The signals (SPEC section 7), for each sample over its counted measurements, with z the row's
logits widened to float64, y its label, p = softmax(z):

- ``aum`` = mean of the margin (Pleiss et al. 2020; SPEC section 2), summed in measurement order;
- ``confidence`` = mean of p[y]; ``variability`` = population standard deviation of p[y]
  (Welford's update); ``correctness`` = fraction with argmax(z) == y (dataset cartography,
  Swayamdipta et al. 2020, ``selection/train_dy_filtering.py``);
- ``forgetting_events`` = consecutive pairs going from correct to incorrect; ``never_learned`` =
  no measurement correct (Toneva et al. 2019);
- ``el2n`` = mean of ||p - onehot(y)||_2 (Paul et al. 2021); ``loss`` = mean of
  logsumexp(z) - z[y]; ``aleatoric`` = mean of p[y] (1 - p[y]) (Data-IQ, Seedat et al. 2022).

A NaN row makes the float signals of its sample NaN, and its forgetting events and
never-learned flag unknown (``known`` False): a NaN correctness cannot say whether it was
forgotten.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from aum_replay.kernels import Stats, loaded_torch

__all__ = [
    "AUM",
    "METRICS",
    "Confidence",
    "Correctness",
    "Forgetting",
    "Mean",
    "Reducer",
    "reducers_for",
]

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


class Reducer(Protocol):
    """What :class:`aum_replay.engine.Fold` needs of a reducer."""

    #: The signals :meth:`compute` returns (keys of its dict).
    names: tuple[str, ...]
    #: The per-row statistics :meth:`update` reads.
    needs: frozenset[str]
    #: :meth:`update` reads ``counts`` (else the caller may pass ``None``).
    reads_counts: bool

    def resize(self, num_samples: int) -> None:
        """Extend the state to ``num_samples`` indices (new ones start empty)."""

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None) -> None:
        """Fold one row per index (no index repeats), in row order."""

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """The signals of every sample, shape (N,), from the final measurement counts."""


def _grown(a: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    if len(a) >= n:
        return a
    out = np.full(n, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def _mean(total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / counts
    out[counts == 0] = np.nan
    return out


class AUM:
    """Float64 sums of margins per sample, added in measurement order: the reference's AUM."""

    names: tuple[str, ...] = ("aum",)
    needs: frozenset[str] = frozenset({"margin"})
    reads_counts = False

    def __init__(self, num_samples: int = 0) -> None:
        self.sums = np.zeros(num_samples, dtype=np.float64)

    def resize(self, num_samples: int) -> None:
        self.sums = _grown(self.sums, num_samples, 0.0)

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None = None) -> None:
        """Add one margin per sample. Where torch is already imported, its ``index_add_`` does it
        (the same one addition per sample) and lets other threads run meanwhile; the replay
        never imports torch for this."""
        margin = stats["margin"]
        torch = loaded_torch()
        if torch is not None:
            sums = torch.from_numpy(self.sums)
            sums.index_add_(0, torch.from_numpy(index), torch.from_numpy(margin))
        else:
            np.add.at(self.sums, index, margin)  # one addition per sample; ~2x sums[i] += m

    def running(self, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The AUM of each row's sample just after the row (the full records' ``aum``)."""
        return self.sums[index] / counts

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        return {"aum": _mean(self.sums, counts)}


class Mean:
    """The mean of one per-row value per sample: ``el2n``, ``loss``, ``aleatoric``."""

    reads_counts = False

    def __init__(self, name: str, num_samples: int = 0) -> None:
        if name not in _MEANS:
            raise ValueError(f"no mean reducer for {name!r}")
        self.names: tuple[str, ...] = (name,)
        self.needs = frozenset({_MEANS[name]})
        self.sums = np.zeros(num_samples)

    def resize(self, num_samples: int) -> None:
        self.sums = _grown(self.sums, num_samples, 0.0)

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None = None) -> None:
        (stat,) = self.needs
        value = stats[stat]
        if self.names[0] == "aleatoric":
            value = value * (1.0 - value)
        np.add.at(self.sums, index, value)

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        return {self.names[0]: _mean(self.sums, counts)}


_MEANS = {"el2n": "el2n", "loss": "loss", "aleatoric": "p_target"}


class Confidence:
    """Mean and population standard deviation of p[y]: the data map's two axes.

    The mean is a plain sum in measurement order divided by the count (as ``np.mean`` of the
    sample's values, to rounding); the spread is Welford's running M2.
    """

    names: tuple[str, ...] = ("confidence", "variability")
    needs: frozenset[str] = frozenset({"p_target"})
    reads_counts = True

    def __init__(self, num_samples: int = 0) -> None:
        self.sums = np.zeros(num_samples)
        self.mean = np.zeros(num_samples)
        self.m2 = np.zeros(num_samples)

    def resize(self, num_samples: int) -> None:
        self.sums = _grown(self.sums, num_samples, 0.0)
        self.mean = _grown(self.mean, num_samples, 0.0)
        self.m2 = _grown(self.m2, num_samples, 0.0)

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None) -> None:
        assert counts is not None
        p = stats["p_target"]
        np.add.at(self.sums, index, p)
        mean = self.mean[index]
        delta = p - mean
        mean = mean + delta / counts
        self.mean[index] = mean
        np.add.at(self.m2, index, delta * (p - mean))

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            variability = np.sqrt(np.maximum(self.m2 / counts, 0.0))
        variability[counts == 0] = np.nan
        return {"confidence": _mean(self.sums, counts), "variability": variability}


class Correctness:
    """Fraction of measurements whose argmax is the label (NaN rows make it NaN)."""

    names: tuple[str, ...] = ("correctness",)
    needs: frozenset[str] = frozenset({"correct"})
    reads_counts = False

    def __init__(self, num_samples: int = 0) -> None:
        self.sums = np.zeros(num_samples)

    def resize(self, num_samples: int) -> None:
        self.sums = _grown(self.sums, num_samples, 0.0)

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None = None) -> None:
        np.add.at(self.sums, index, stats["correct"])

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        return {"correctness": _mean(self.sums, counts)}


class Forgetting:
    """Forgetting events and never-learned samples (Toneva et al. 2019), exact integers.

    ``compute`` also returns ``known``: False for a sample with a NaN row (its events and
    never-learned flag are then unknown) or without measurements.
    """

    names: tuple[str, ...] = ("forgetting_events", "never_learned", "known")
    needs: frozenset[str] = frozenset({"correct"})
    reads_counts = False

    def __init__(self, num_samples: int = 0) -> None:
        self.last = np.full(num_samples, -1, dtype=np.int8)  # last correctness: -1 none, 0, 1
        self.forgotten = np.zeros(num_samples, dtype=np.int64)
        self.learned = np.zeros(num_samples, dtype=bool)
        self.nan_rows = np.zeros(num_samples, dtype=np.int64)

    def resize(self, num_samples: int) -> None:
        self.last = _grown(self.last, num_samples, -1)
        self.forgotten = _grown(self.forgotten, num_samples)
        self.learned = _grown(self.learned, num_samples, False)
        self.nan_rows = _grown(self.nan_rows, num_samples)

    def update(self, index: np.ndarray, stats: Stats, counts: np.ndarray | None = None) -> None:
        correct = stats["correct"]
        nan = np.isnan(correct)
        if nan.any():
            self.nan_rows[index[nan]] += 1
            index, correct = index[~nan], correct[~nan]
        now = correct.astype(np.int8)
        forgot = (self.last[index] == 1) & (now == 0)
        np.add.at(self.forgotten, index, forgot.astype(np.int64))  # same dtype: add.at's fast path
        self.last[index] = now
        self.learned[index[now == 1]] = True

    def compute(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        known = (self.nan_rows == 0) & (counts > 0)
        return {
            "forgetting_events": np.where(known, self.forgotten, -1),
            "never_learned": np.where(known, ~self.learned, False),
            "known": known,
        }


def reducers_for(metrics: list[str] | tuple[str, ...], num_samples: int) -> list[Reducer]:
    """The reducers that compute ``metrics`` (names of :data:`METRICS`), each once."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}")
    out: list[Reducer] = []
    chosen = set(metrics)
    if "aum" in chosen:
        out.append(AUM(num_samples))
    if chosen & {"confidence", "variability"}:
        out.append(Confidence(num_samples))
    if "correctness" in chosen:
        out.append(Correctness(num_samples))
    if chosen & {"forgetting_events", "never_learned"}:
        out.append(Forgetting(num_samples))
    out += [Mean(name, num_samples) for name in ("el2n", "loss", "aleatoric") if name in chosen]
    return out
