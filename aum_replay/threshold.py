"""Threshold samples (SPEC section 5): the training-time wrapper and the flagging rule.

The cut-off between a hard sample and a mislabeled one is learned from samples that are mislabeled
on purpose. :class:`ThresholdSampleDataset` picks ``m = N // (c + 1)`` samples uniformly at random
(a seeded permutation), gives them the extra label ``c`` and records which ones they are; the model
then has ``c + 1`` outputs. After training, with ``a`` the AUM of each sample::

    alpha   = percentile(a[threshold samples], 99)      (numpy's linear interpolation)
    flagged = a <= alpha, for samples that are not threshold samples

Threshold samples are never flagged, so a second run with a disjoint threshold set (set 2: the next
slice of the same permutation) scores them; over several runs a sample is flagged when it is flagged
in every run where it was scored (present and not a threshold sample). The rule is the pure
functions below; :mod:`aum_replay.flag` applies them to recorded runs.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aum_replay.errors import InputError

__all__ = [
    "ThresholdSampleDataset",
    "ThresholdShareWarning",
    "combine_flags",
    "flag_run",
    "fraction_alpha",
    "threshold_alpha",
]


class ThresholdSampleDataset(Dataset):
    """Relabel a seeded random subset of a dataset to an extra class ``num_classes``.

    Items of ``dataset`` are tuples ``(x, y, ...)``; for a threshold sample the item comes back as
    ``(x, num_classes, ...)`` (same type as ``y``: int, numpy integer or 0-d tensor), every other
    item unchanged. Wrap the result in :class:`aum_replay.DatasetWithIndex` (or wrap an indexed
    dataset in this class) so that the sample id of index ``i`` is ``i``.

    Parameters
    ----------
    dataset
        Map-style dataset of N items ``(x, y, ...)`` with labels ``y`` in ``[0, num_classes)``.
    num_classes
        c, the real number of classes. The model must have ``c + 1`` outputs.
    set_index
        Which threshold set, 1-based (default 1): set k is slice ``[(k-1)*m, k*m)`` of one seeded
        permutation of ``range(N)``, so sets 1 and 2 of the same seed are disjoint.
    seed
        Seed of the permutation (default 0). Runs that should share sets must share the seed.
    num_threshold
        m, the size of each set. Default ``N // (c + 1)`` (the paper); the official replication code
        used ``N // c``.
    sample_ids
        The id under which index ``i`` is logged, a sequence of N ints or strings; default the index
        itself (what ``DatasetWithIndex`` gives).

    Attributes
    ----------
    threshold_ids : list
        The ids of the threshold samples, sorted.
    threshold_indices : numpy.ndarray
        Their indices into ``dataset``, shape (m,), sorted.
    extra_class : int
        The label given to threshold samples (``num_classes``).

    Examples
    --------
    >>> train = ThresholdSampleDataset(base, num_classes=10, set_index=1, seed=0)  # doctest: +SKIP
    >>> loader = DataLoader(DatasetWithIndex(train), batch_size=64, shuffle=True)  # doctest: +SKIP
    >>> logger = LogitLogger("runs/set1", threshold_samples=train)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Any,
        num_classes: int,
        *,
        set_index: int = 1,
        seed: int = 0,
        num_threshold: int | None = None,
        sample_ids: Sequence[int | str] | None = None,
    ) -> None:
        n = len(dataset)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise InputError(f"num_classes must be an int, not {num_classes!r}")
        if num_classes < 1:
            raise InputError(f"num_classes must be at least 1, not {num_classes}")
        if isinstance(set_index, bool) or not isinstance(set_index, (int, np.integer)):
            raise InputError(f"set_index must be an int, not {set_index!r}")
        if set_index < 1:
            raise InputError(f"set_index counts from 1, got {set_index}")
        m = n // (int(num_classes) + 1) if num_threshold is None else int(num_threshold)
        if m < 1:
            raise InputError(
                f"no threshold samples: num_threshold is {m} for a dataset of {n} samples"
            )
        if set_index * m > n:
            raise InputError(
                f"threshold set {set_index} of {m} samples needs {set_index * m} samples, "
                f"but the dataset has {n}"
            )
        if sample_ids is not None and len(sample_ids) != n:
            raise InputError(f"sample_ids has {len(sample_ids)} ids for a dataset of {n} samples")
        warn_threshold_share(m, n, int(num_classes))
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.extra_class = int(num_classes)
        self.set_index = int(set_index)
        self.seed = int(seed)
        self.num_threshold = m
        permutation = np.random.default_rng(self.seed).permutation(n)
        chosen = permutation[(self.set_index - 1) * m : self.set_index * m]
        self.threshold_indices = np.sort(chosen).astype(np.int64)
        self._mask = np.zeros(n, dtype=bool)
        self._mask[chosen] = True
        if sample_ids is None:
            self.threshold_ids: list[Any] = [int(i) for i in self.threshold_indices]
        else:
            self.threshold_ids = sorted(_plain(sample_ids[int(i)]) for i in chosen)

    def __len__(self) -> int:
        return len(self._mask)

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        item = self.dataset[index]
        if not self._mask[operator.index(index)]:
            return tuple(item)
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise InputError(
                f"items must be tuples (x, y, ...) to relabel; item {index} is {type(item)}"
            )
        return (item[0], _like(item[1], self.extra_class), *item[2:])

    def is_threshold(self, index: int) -> bool:
        """Whether index ``index`` is a threshold sample."""
        return bool(self._mask[operator.index(index)])

    def threshold_metadata(self) -> dict[str, Any]:
        """What :class:`aum_replay.LogitLogger` records so that the replay can flag on its own.

        Returns
        -------
        dict
            JSON-able: ``sample_ids`` (sorted), ``extra_class``, ``num_classes``, ``set_index``,
            ``seed``, ``num_threshold`` and ``num_samples``.
        """
        return {
            "sample_ids": list(self.threshold_ids),
            "extra_class": self.extra_class,
            "num_classes": self.num_classes,
            "set_index": self.set_index,
            "seed": self.seed,
            "num_threshold": self.num_threshold,
            "num_samples": len(self),
        }


def _like(label: Any, value: int) -> Any:
    """``value`` in the type of ``label``, so that the default collate can stack a batch."""
    if isinstance(label, torch.Tensor):
        return torch.tensor(value, dtype=label.dtype)
    if isinstance(label, np.generic):
        return type(label)(value)
    return value


def _plain(value: Any) -> int | str:
    if isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor):
        value = value.item()
    return int(value)


class ThresholdShareWarning(UserWarning):
    """The threshold samples are a large share of the data (few classes)."""


#: above this share of the data, recording warns (c < 9 classes with the default N // (c + 1))
THRESHOLD_SHARE_LIMIT = 0.1


def warn_threshold_share(num_threshold: int, num_samples: int, num_classes: int) -> None:
    """Warn when the threshold samples are more than a tenth of the data.

    With ``m = N // (c + 1)`` that is every run with fewer than 9 classes (20% at c = 4): the extra
    class is then as large as a real one, takes a fifth of each real class's samples away and
    lowers every margin. The default rule of ``aum-replay flag`` still places the cut well there
    (README, detection benchmark, ``digits4``); the paper's 99th percentile flags too much.
    """
    if num_samples and num_threshold > THRESHOLD_SHARE_LIMIT * num_samples:
        warnings.warn(
            f"{num_threshold} threshold samples are {100 * num_threshold / num_samples:.0f}% of "
            f"the {num_samples} samples ({num_classes} classes): a threshold class this large "
            "crowds the real ones and lowers every margin. Flag with the default rule (not "
            "--rule paper), or pass a smaller num_threshold (e.g. N // 10); see the README, "
            "'Few classes'",
            ThresholdShareWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- the flagging rule
def threshold_alpha(threshold_aums: Any, percentile: float = 99.0) -> float:
    """alpha: the ``percentile``-th percentile of the threshold samples' AUMs.

    Parameters
    ----------
    threshold_aums
        AUMs of the threshold samples, array-like of shape (m,). Non-finite values are ignored.
    percentile
        In ``[0, 100]``, default 99 (the paper). Numpy's default linear interpolation.

    Raises
    ------
    InputError
        If the percentile is out of range or no threshold AUM is finite.
    """
    if not 0.0 <= percentile <= 100.0 or math.isnan(percentile):
        raise InputError(f"percentile must be in [0, 100], not {percentile}")
    values = np.asarray(threshold_aums, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise InputError("no threshold sample has a finite AUM; alpha is undefined")
    return float(np.percentile(values, percentile))


def fraction_alpha(aums: Any, fraction: float, *, eligible: Any = None) -> float:
    """The alpha that flags the lowest ``fraction`` of the eligible samples.

    With ``k = round(fraction * n)`` (n eligible samples with a finite AUM), alpha is the k-th
    smallest AUM, so ``aum <= alpha`` flags those k (more only on exact ties); ``-inf`` when k = 0.

    Parameters
    ----------
    aums
        AUMs, shape (N,).
    fraction
        In ``[0, 1]``.
    eligible
        Boolean mask (N,) of the samples that may be flagged; default all.
    """
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise InputError(f"fraction must be in [0, 1], not {fraction}")
    values = np.asarray(aums, dtype=np.float64)
    if eligible is not None:
        values = values[np.asarray(eligible, dtype=bool)]
    values = np.sort(values[np.isfinite(values)])
    k = round(fraction * len(values))
    return float(values[k - 1]) if k > 0 else float("-inf")


def flag_run(aums: Any, is_threshold: Any, alpha: float) -> np.ndarray:
    """Flags of one run: ``aum <= alpha`` and not a threshold sample.

    Parameters
    ----------
    aums
        AUMs, shape (N,); NaN is never flagged.
    is_threshold
        Boolean mask (N,) of this run's threshold samples.
    alpha
        The cut-off.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape (N,).
    """
    aums = np.asarray(aums, dtype=np.float64)
    is_threshold = np.asarray(is_threshold, dtype=bool)
    if aums.shape != is_threshold.shape:
        raise InputError(f"aums {aums.shape} and is_threshold {is_threshold.shape} differ")
    return (aums <= alpha) & ~is_threshold


def combine_flags(flags: Any, scored: Any) -> np.ndarray:
    """Combine the flags of R runs: flagged in every run that scored the sample, and scored once.

    Parameters
    ----------
    flags
        Boolean array of shape (R, N): flagged in run r.
    scored
        Boolean array of shape (R, N): sample present in run r and not one of its threshold
        samples.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape (N,).
    """
    flags = np.atleast_2d(np.asarray(flags, dtype=bool))
    scored = np.atleast_2d(np.asarray(scored, dtype=bool))
    if flags.shape != scored.shape:
        raise InputError(f"flags {flags.shape} and scored {scored.shape} differ")
    return scored.any(axis=0) & (flags | ~scored).all(axis=0)
