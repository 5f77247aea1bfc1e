"""``DatasetWithIndex``: give every item of a dataset its index as the sample id."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["DatasetWithIndex"]


class DatasetWithIndex(Dataset):
    """A thin wrapper that appends the sample index as the last element of each item.

    ``DatasetWithIndex(ds)[i] == (*ds[i], i)``, exactly as the original ``aum`` library's wrapper;
    ``len()`` is forwarded. Through PyTorch's default collate the ids of a batch arrive as a
    LongTensor of shape (B,), which :class:`aum_replay.LogitLogger` accepts as sample ids.

    Parameters
    ----------
    base_dataset
        Any map-style dataset whose items are tuples, e.g. ``(x, y)``.
    """

    def __init__(self, base_dataset: Any) -> None:
        self.base_dataset = base_dataset

    def __len__(self) -> int:
        return len(self.base_dataset)

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        return (*self.base_dataset[index], index)
