"""The training-time side of threshold samples: a dataset wrapper that relabels them.

See :mod:`aum_replay.threshold` for the method and the flagging rule that uses them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aum_replay.errors import InputError
from aum_replay.threshold import warn_threshold_share

__all__ = ["ThresholdSampleDataset"]


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
        warn_threshold_share(m, n, int(num_classes))  # few classes: a large threshold share
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
