"""The original ``aum`` library's API, on aum-replay's kernel, accumulator and CSV writer.

``from aum_replay import AUMCalculator, AUMRecord, DatasetWithIndex`` replaces
``from aum import ...``: same constructor, methods, record fields and files, the same numbers
bit for bit, without the per-sample Python loop and without the original's defects:

- a batch of one row works (the original crashed in ``.squeeze()``);
- sample ids may be a tensor, a numpy array or a list: they accumulate per *value* (the original
  used each 0-d tensor as its own dict key, so nothing accumulated);
- ``save_dir="~/..."`` is expanded;
- ``finalize()`` before any update, fewer (or more) ids than rows, targets out of range, fewer than
  two classes and non-tensor logits raise :class:`aum_replay.InputError` naming the value.

``aum_values.csv`` ties are ordered by sample id (the original's order depended on the platform).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aum_replay.batch import check_logits, check_targets, normalize_ids
from aum_replay.csvout import (
    FULL_COLUMNS,
    FULL_NAME,
    VALUES_COLUMNS,
    VALUES_NAME,
    sort_values,
)
from aum_replay.dataset import DatasetWithIndex
from aum_replay.engine import Fold, Segment
from aum_replay.errors import InputError
from aum_replay.logger import LogitLogger
from aum_replay.margins import host_fields, margins
from aum_replay.outputs import OutputSet, writing
from aum_replay.reducers import AUM
from aum_replay.replay import WRITE_ROWS, make_records, write_records

__all__ = ["AUMCalculator", "AUMRecord", "BatchRecords", "DatasetWithIndex"]

SampleId = int | str
TABLE_LIMIT = 1 << 26  # int ids below this use a lookup table (8 bytes per id value)


@dataclass
class AUMRecord:
    """Class for holding info around an aum update for a single sample (the seed's fields).

    A plain dataclass like the seed's, so ``vars(record)`` and ``dataclasses.asdict`` work.
    """

    sample_id: SampleId
    num_measurements: int
    target_logit: int
    target_val: float
    other_logit: int
    other_val: float
    margin: float
    aum: float


class BatchRecords(dict):
    """The ``dict`` that :meth:`AUMCalculator.update` returns: sample id -> :class:`AUMRecord`.

    The numbers are computed by ``update()``; the ``AUMRecord`` objects are built the first time
    the dict is looked at (any read, comparison, copy or pickle), so a training loop that ignores
    the return value never pays for one Python object per sample, the bulk of ``update``'s cost.
    It is a real ``dict`` subclass and behaves as one.
    """

    __slots__ = ("_build",)

    def __init__(self, build: Any) -> None:
        super().__init__()
        self._build = build

    def _fill(self) -> None:
        build = self._build
        if build is not None:
            self._build = None
            dict.update(self, build())

    def __reduce__(self) -> tuple[Any, ...]:
        self._fill()
        return (dict, (dict(self.items()),))


def _filled(name: str) -> Any:
    method = getattr(dict, name)

    def call(self: BatchRecords, *args: Any, **kwargs: Any) -> Any:
        self._fill()
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


for _name in (
    "__getitem__", "__iter__", "__len__", "__contains__", "__repr__", "__eq__", "__ne__",
    "__or__", "__ror__", "__ior__", "__reversed__", "__setitem__", "__delitem__", "get", "keys",
    "values", "items", "copy", "pop", "popitem", "setdefault", "update", "clear",
):  # fmt: skip
    setattr(BatchRecords, _name, _filled(_name))


class AUMCalculator:
    """Accumulate AUM during training, as ``aum.AUMCalculator`` does.

    Parameters
    ----------
    save_dir
        Where :meth:`finalize` writes ``aum_values.csv`` (``~`` is expanded).
    compressed
        If False, every measurement is kept and ``full_aum_records.csv`` is written too. Kept as
        compact arrays (~64 bytes per measurement; the original kept ~720-byte Python objects).
    log_dir
        Optional run directory: every batch is also recorded with :class:`LogitLogger`, so the run
        can be replayed later with ``aum-replay compute`` over any subset of epochs. Call
        :meth:`end_epoch` at the end of each epoch (or pass ``epoch=`` to :meth:`update`).
    logger_options
        Keyword options for the :class:`LogitLogger` (``storage=``, ``metadata=``, ...).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        compressed: bool = True,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        **logger_options: Any,
    ) -> None:
        self.save_dir = save_dir
        self.compressed = compressed
        self._index: dict[SampleId, int] = {}
        self._ids: list[SampleId] = []
        self._id_kind: str | None = None
        self._aum = AUM()
        self._fold = Fold(0, [self._aum], duplicates="all", sink=self._running)
        self._rows = 0  # rows given so far: the position of the next one
        self._batch: tuple[np.ndarray, np.ndarray] | None = None
        self._records: list[np.ndarray] = []
        self._table = np.zeros(0, dtype=np.int64)  # small int id -> dense index, -1 if unseen
        self._logger = LogitLogger(log_dir, **logger_options) if log_dir is not None else None
        self._epoch = 0

    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        sample_ids: Any,
        *,
        epoch: int | None = None,
    ) -> BatchRecords:
        """Add one batch and return each sample's record after it.

        Parameters
        ----------
        logits
            Tensor (B, C), C >= 2, any float dtype and device.
        targets
            Integer labels (B,), each in ``[0, C)``.
        sample_ids
            (B,) ids: a list of ints or strings, a LongTensor or a numpy array.
        epoch
            Only with ``log_dir``: the epoch these rows belong to (default: the counter that
            :meth:`end_epoch` advances).

        Returns
        -------
        BatchRecords
            A ``dict``: sample id -> :class:`AUMRecord` (for an id seen twice in the batch, its
            last record). The record objects are built when the dict is first used.
        """
        logits = check_logits(logits)
        rows, num_classes = logits.shape
        target_array = check_targets(targets, rows, num_classes)
        ids, kind = normalize_ids(sample_ids, rows)
        if self._id_kind is not None and kind != self._id_kind and rows:
            raise InputError(
                f"sample ids are {kind}s but earlier batches had {self._id_kind}s; "
                "use one id kind per calculator"
            )
        if rows == 0:
            return BatchRecords(None)
        self._id_kind = kind
        if self._logger is not None:
            self._logger.log(
                logits, target_array, ids, epoch=self._epoch if epoch is None else epoch
            )
        id_list = ids.tolist()
        index = self._ids_to_index(ids, id_list)
        targets_t = torch.from_numpy(target_array).to(logits.device)
        m = margins(logits, targets_t)
        margin = m.margin.cpu().numpy()
        stats = {"margin": margin, **host_fields(m)._asdict()}
        self._batch = counts, aum = np.empty(rows, dtype=np.int64), np.empty(rows)
        self._fold.update(Segment(self._rows, 0, index, target_array, stats))
        self._rows += rows
        records = make_records(index, target_array, stats, counts, aum)
        if not self.compressed:
            self._records.append(records)

        def build() -> zip[tuple[SampleId, AUMRecord]]:
            made = map(
                AUMRecord,
                id_list,
                counts.tolist(),
                target_array.tolist(),
                records["target_val"].tolist(),
                records["other_logit"].tolist(),
                records["other_val"].tolist(),
                margin.tolist(),
                aum.tolist(),
            )
            return zip(id_list, made, strict=True)

        return BatchRecords(build)

    def _running(
        self, rows: Segment, where: np.ndarray | None, counts: np.ndarray, aum: np.ndarray
    ) -> None:
        """The fold's sink: each row's count and AUM, into the current batch's arrays."""
        assert self._batch is not None
        place = slice(None) if where is None else where
        self._batch[0][place] = counts
        self._batch[1][place] = aum

    def _ids_to_index(self, ids: np.ndarray, id_list: list[SampleId]) -> np.ndarray:
        """Dense index of each id, registering new ids in order of first appearance.

        Int ids in ``[0, TABLE_LIMIT)`` (dataset indices, the common case) live in a lookup
        table, with no Python work per id even when they are new; any other id in a dict.
        """
        if ids.dtype == np.int64:
            small = (ids >= 0) & (ids < TABLE_LIMIT)
            if small.all():
                index = self._table_index(ids)
            else:
                index = np.empty(len(ids), dtype=np.int64)
                index[small] = self._table_index(ids[small])
                index[~small] = [self._dict_index(i) for i in ids[~small].tolist()]
        else:
            index = np.fromiter(
                (self._dict_index(i) for i in id_list), dtype=np.int64, count=len(id_list)
            )
        if len(self._ids) > self._fold.num_samples:  # grow geometrically: amortised O(1) per id
            self._fold.resize(max(len(self._ids), 2 * self._fold.num_samples))
        return index

    def _table_index(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        table = self._table
        if ids.max() >= len(table):
            table = np.full(max(2 * len(table), int(ids.max()) + 1), -1, dtype=np.int64)
            table[: len(self._table)] = self._table
            self._table = table
        index = table[ids]
        new = index < 0
        if new.any():
            fresh, first = np.unique(ids[new], return_index=True)
            fresh = fresh[np.argsort(first, kind="stable")]
            table[fresh] = np.arange(len(self._ids), len(self._ids) + len(fresh))
            self._ids.extend(fresh.tolist())
            index = table[ids]
        return index

    def _dict_index(self, sid: SampleId) -> int:
        i = self._index.get(sid)
        if i is None:
            i = self._index[sid] = len(self._ids)
            self._ids.append(sid)
        return i

    # ------------------------------------------------------------ the seed's attributes
    # The seed kept these as Python containers it updated per sample; here the state is arrays,
    # and these are views built on access: O(samples) (``records``: O(measurements)) per call,
    # so read them once after training rather than inside the loop.
    @property
    def counts(self) -> defaultdict[SampleId, int]:
        """Sample id -> number of measurements so far (a new ``defaultdict(int)`` each call)."""
        n = len(self._ids)
        return defaultdict(int, zip(self._ids, self._fold.counts[:n].tolist(), strict=True))

    @property
    def sums(self) -> defaultdict[SampleId, float]:
        """Sample id -> sum of its margins so far (a new ``defaultdict(float)`` each call)."""
        n = len(self._ids)
        return defaultdict(float, zip(self._ids, self._aum.sums[:n].tolist(), strict=True))

    @property
    def records(self) -> list[AUMRecord]:
        """Every measurement as an :class:`AUMRecord`, in update order (``compressed=False``).

        As in the seed, a compressed calculator has no records (``AttributeError``).
        """
        if self.compressed:
            raise AttributeError("'AUMCalculator' object has no attribute 'records' (compressed)")
        if not self._records:
            return []
        parts = np.concatenate(self._records)
        ids = self._ids
        return [
            AUMRecord(ids[i], n, t, tv, o, ov, m, a)
            for i, n, t, tv, o, ov, m, a in zip(
                parts["index"].tolist(),
                parts["num_measurements"].tolist(),
                parts["target_logit"].tolist(),
                parts["target_val"].tolist(),
                parts["other_logit"].tolist(),
                parts["other_val"].tolist(),
                parts["margin"].tolist(),
                parts["aum"].tolist(),
                strict=True,
            )
        ]

    @staticmethod
    def records_to_df(records: list[AUMRecord]) -> Any:
        """The seed's helper: records as a pandas DataFrame sorted by sample_id, num_measurements.

        Needs pandas (the seed depended on it; aum-replay does not).
        """
        try:
            import pandas as pd
        except ImportError:
            raise InputError("records_to_df needs pandas: pip install pandas") from None
        df = pd.DataFrame([asdict(record) for record in records])
        df.sort_values(by=["sample_id", "num_measurements"], inplace=True)
        return df

    def end_epoch(self) -> None:
        """With ``log_dir``: publish the current epoch's shard and start the next epoch."""
        if self._logger is not None:
            self._logger.end_epoch()
        self._epoch += 1

    def finalize(self, save_dir: str | os.PathLike[str] | None = None) -> None:
        """Write ``aum_values.csv`` (and ``full_aum_records.csv`` if not compressed).

        Parameters
        ----------
        save_dir
            Overrides the directory given at construction.

        Raises
        ------
        InputError
            If no batch was ever added.
        """
        if not self._ids:
            raise InputError("finalize() called before any update(): there is no AUM to write")
        target = Path(save_dir if save_dir is not None else self.save_dir).expanduser()
        if self._logger is not None:
            self._logger.close()
        ids = np.array(self._ids, dtype=np.int64 if self._id_kind == "int" else np.str_)
        aum = self._fold.result().signals["aum"][: len(ids)]
        order = sort_values(ids, aum)
        names = (VALUES_NAME,) if self.compressed else (VALUES_NAME, FULL_NAME)
        with OutputSet(target, names) as outputs, writing(target, "the AUM files"):
            outputs.csv(VALUES_NAME, VALUES_COLUMNS).write(
                {"sample_id": ids[order], "aum": aum[order]}
            )
            if not self.compressed:
                records = np.concatenate(self._records)
                id_rank = np.empty(len(ids), dtype=np.int64)
                id_rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
                order = np.lexsort((records["num_measurements"], id_rank[records["index"]]))
                records = records[order]
                parts = (records[lo : lo + WRITE_ROWS] for lo in range(0, len(records), WRITE_ROWS))
                write_records(outputs.csv(FULL_NAME, FULL_COLUMNS), parts, ids)
            outputs.commit()
