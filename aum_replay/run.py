"""A run directory: discovering, validating and selecting its shards; the sample-id universe."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aum_replay import keys as id_keys
from aum_replay.epochs import EpochSelection, parse_epochs
from aum_replay.errors import FormatError, InputError
from aum_replay.format import (
    ShardInfo,
    ShardReader,
    describe_threshold,
    list_lookalikes,
    list_shards,
    list_temporaries,
    read_all_id_keys,
    read_all_ids,
    read_info,
)
from aum_replay.keys import Collision, HashIndex, sort_order, unique_keys
from aum_replay.location import Location, RunDirLike, list_dir, location

__all__ = [
    "EpochSummary",
    "IdIndex",
    "IdScan",
    "Run",
    "RunSummary",
    "build_universe",
    "describe_run",
    "open_run",
    "scan_ids",
    "verify_run",
]


@dataclass(frozen=True)
class Run:
    """The validated, selected shards of a run directory.

    Attributes
    ----------
    run_dir
        The directory.
    shards
        Selected shards in measurement order: epochs ascending, ranks ascending.
    all_epochs
        Every epoch number the directory has a shard for.
    temporaries
        Leftover temporary files (ignored).
    num_classes, id_kind
        Common to every selected shard.
    lookalikes
        Files named almost like shards (``epoch_1.rank_0.h5``): ignored.
    """

    run_dir: Location
    shards: tuple[ShardInfo, ...]
    all_epochs: tuple[int, ...]
    temporaries: tuple[Location, ...]
    num_classes: int
    id_kind: str
    lookalikes: tuple[Location, ...] = ()

    @property
    def epochs(self) -> list[int]:
        """Selected epochs, ascending."""
        return sorted({s.epoch for s in self.shards})

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    @property
    def threshold(self) -> dict[str, Any] | None:
        """Threshold-sample description recorded by the logger, if any (the same in every shard)."""
        for shard in self.shards:
            if shard.threshold is not None:
                return shard.threshold
        return None

    @property
    def metadata(self) -> dict[str, Any]:
        return self.shards[0].metadata if self.shards else {}


def open_run(run_dir: RunDirLike, epochs: str | EpochSelection | None = None) -> Run:
    """Find the shards of ``run_dir`` (a directory, or an fsspec URL: :mod:`aum_replay.location`),
    select ``epochs`` and validate every selected shard.

    Raises
    ------
    FormatError
        Missing or empty directory; a corrupt, foreign, unfinished or newer-version shard; shards
        that disagree on the number of classes or the id kind.
    InputError
        A malformed selection, or one that matches no epoch.
    """
    path = location(run_dir)
    entries = list_dir(path)
    found = list_shards(path, entries)
    temporaries = tuple(list_temporaries(path, entries))
    lookalikes = tuple(list_lookalikes(path, entries))
    if not found:
        extra = f" (only {len(temporaries)} unfinished temporary file(s))" if temporaries else ""
        if lookalikes:
            extra += (
                f"; {lookalikes[0].name} looks like a shard but is not named like one (zero-padded "
                "epoch_NNNNN.rank_NNN.h5)"
            )
        raise FormatError(f"{path}: no shards (epoch_NNNNN.rank_NNN.h5) found{extra}")
    selection = epochs if isinstance(epochs, EpochSelection) else parse_epochs(epochs)
    all_epochs = tuple(sorted({e for e, _, _ in found}))
    chosen = set(selection.apply(all_epochs))
    infos = []
    for (epoch, rank, shard_path), (e2, r2, other) in itertools.pairwise(found):
        if (epoch, rank) == (e2, r2):
            raise FormatError(
                f"{path}: two shards of epoch {epoch} rank {rank} ({shard_path.name} and "
                f"{other.name}); remove the one that does not belong"
            )
    for epoch, rank, shard_path in found:
        if epoch not in chosen:
            continue
        info = read_info(shard_path)
        if (info.epoch, info.rank) != (epoch, rank):
            raise FormatError(
                f"{shard_path}: file name says epoch {epoch} rank {rank}, "
                f"attributes say epoch {info.epoch} rank {info.rank}"
            )
        infos.append(info)
    first = infos[0]
    for info in infos[1:]:
        if info.num_classes != first.num_classes:
            raise FormatError(
                f"{info.path}: {info.num_classes} classes, but {first.path.name} has "
                f"{first.num_classes}; a run must keep the number of classes"
            )
        if info.id_kind != first.id_kind:
            raise FormatError(
                f"{info.path}: {info.id_kind} sample ids, but {first.path.name} has "
                f"{first.id_kind} ids; a run must keep one id kind"
            )
        check_same_run(first, info)
    return Run(
        path,
        tuple(infos),
        all_epochs,
        temporaries,
        first.num_classes,
        first.id_kind,
        lookalikes,
    )


def check_same_run(first: ShardInfo, info: ShardInfo) -> None:
    """Raise :class:`FormatError` naming both shards when ``info`` cannot belong to the run of
    ``first``: another run id, format version, storage kind or threshold set (a shard copied in
    from another run, say set 2's epoch into set 1's run)."""

    def refuse(what: str, mine: object, theirs: object) -> FormatError:
        return FormatError(
            f"{info.path}: {what} {mine}, but {first.path.name} has {theirs}; shards of "
            "different runs cannot be replayed together"
        )

    if info.format_version != first.format_version:
        raise refuse("format", f"v{info.format_version}", f"v{first.format_version}")
    if info.run_id != first.run_id:
        raise refuse("run id", repr(info.run_id), repr(first.run_id))
    if info.storage != first.storage:
        raise refuse("storage", repr(info.storage), repr(first.storage))
    if info.threshold != first.threshold:
        raise refuse(
            "threshold samples",
            describe_threshold(info.threshold),
            describe_threshold(first.threshold),
        )


def build_universe(shards: Sequence[ShardInfo], id_kind: str) -> np.ndarray:
    """Every distinct sample id in ``shards``, sorted (ints numerically, strings by code point).

    Returns an ``int64`` array, or a numpy unicode array for string ids. Reads the ids only.
    """
    return scan_ids(shards, id_kind).universe


@dataclass(frozen=True)
class IdScan:
    """What one pass over the sample ids of a run's shards found (see :func:`scan_ids`)."""

    _universe: np.ndarray | None
    """Every distinct sample id, sorted (:attr:`universe`); ``None`` for string ids until
    someone asks: the replay works from ``keys`` and never decodes them."""
    appearances: np.ndarray | None
    """Per id of ``universe``, the number of epochs it appears in, when no epoch holds an id
    twice (then every row counts, whatever the duplicates policy); else ``None``, as for ids that
    are not dense integers, where finding out would cost a sort."""
    keys: np.ndarray | None = None
    """String ids: the universe as the replay reads ids (their UTF-8 bytes, a fixed-width ``S``
    array, see :meth:`~aum_replay.format.ShardReader.read_id_keys`), in the same order; ``None``
    for int ids. Mapping keys costs no Python object per row."""
    rows: dict[Location, np.ndarray] | None = field(default=None, repr=False)
    """Where :func:`resolves_rows`: per shard, every row's index in ``universe`` (``int32`` for
    string ids, ``int64`` for int ids), found by the scan that read them, so that the replay
    need not read (string ids: hash and look up) the ids a second time; ``None`` otherwise
    (the replay looks them up)."""

    @property
    def universe(self) -> np.ndarray:
        """Every distinct sample id, sorted: ``int64``, or a numpy unicode array (decoded from
        ``keys`` on first use)."""
        if self._universe is None:
            assert self.keys is not None
            object.__setattr__(self, "_universe", decode_keys(self.keys))
        assert self._universe is not None
        return self._universe

    @property
    def size(self) -> int:
        """The number of distinct sample ids."""
        return len(self.index_keys)

    def id_column(self, name: str = "sample_id", order: np.ndarray | None = None) -> Any:
        """The universe as a polars column: string ids straight from their UTF-8 keys (a
        byte copy, ~8x cheaper than converting numpy's unicode array). ``order``: the
        universe's positions to take, in that order, gathered by numpy before the column is
        made (polars' own gather copies a string column again, ~15 MiB more at 400k ids, and
        costs ~0.1 ms more for 40k ints)."""
        import polars as pl

        if self.keys is not None:
            keys = self.keys if order is None else self.keys.take(order)
            return pl.Series(name, keys).cast(pl.String)
        universe = self.universe
        if order is None:
            return pl.Series(name, universe)
        if len(universe) and int(universe[-1]) - int(universe[0]) == len(universe) - 1:
            return pl.Series(name, order + universe[0])  # ids low, low + 1, ...: no gather
        return pl.Series(name, universe.take(order))

    def labels_epoch(self, shards: Sequence[ShardInfo]) -> int | None:
        """The last epoch of ``shards`` (the ones scanned) when every sample appears in every
        one of their epochs, so each sample's last row lies in it (see :class:`Fold`'s
        ``labels_epoch``); else ``None``."""
        if self.appearances is None or not len(self.appearances) or not shards:
            return None
        epochs = len({shard.epoch for shard in shards})
        return shards[-1].epoch if int(self.appearances.min()) == epochs else None

    @property
    def index_keys(self) -> np.ndarray:
        """What an :class:`IdIndex` over this run is built from (see ``keys``)."""
        return self.universe if self.keys is None else self.keys


def decode_keys(keys: np.ndarray) -> np.ndarray:
    """String ids (a numpy unicode array) from their sorted UTF-8 keys (same order)."""
    if not len(keys):
        return np.zeros(0, dtype=np.str_)
    try:
        return keys.astype(f"U{keys.dtype.itemsize}")  # ASCII ids: a C cast, 5x decode's speed
    except UnicodeDecodeError:
        return np.char.decode(keys, "utf-8")


def scan_ids(
    shards: Sequence[ShardInfo], id_kind: str, stop: threading.Event | None = None
) -> IdScan:
    """Read every sample id of ``shards`` (in epoch order) once: the universe, and whether any
    epoch holds an id twice.

    Dense integer ids (the common case) cost one scatter per row: each id's slot in a table over
    ``[low, high]`` (widened as later shards need, while it stays within a few times the rows
    read) is stamped with the epoch it was last seen in, and an epoch whose distinct stamps are
    fewer than its rows held an id twice.

    ``stop``: once set, a scan of string ids raises :class:`ScanStopped` before its next shard
    (the replay sets it when it ends early while the scan runs beside it).
    """
    if id_kind == "str":
        try:
            return _scan_string_keys(shards, stop)
        except Collision:  # two ids with one hash: sort the bytes instead (below)
            pass
    # Int ids of a summary run: every shard's ids, mapped to rows once the universe is known.
    # (String ids reach this loop only when two shared a hash; their rows are looked up later.)
    keep = id_kind == "int" and resolves_rows(shards, id_kind)
    kept: list[tuple[Location, np.ndarray]] | None = [] if keep else None
    uniques: list[np.ndarray] = []
    stamp: np.ndarray | None = None  # int ids: last epoch ordinal seen, over [low, low + len)
    appearances: np.ndarray | None = None
    low = 0
    clean = True
    epoch_rows = ordinal = rows_seen = 0
    for k, info in enumerate(shards):
        ids = read_all_id_keys(info)
        if kept is not None:
            kept.append((info.path, ids))
        if len(ids) and id_kind == "str":
            appearances = None
            uniques.append(_sorted_unique(ids))  # UTF-8 keys: sorted as the strings are
        elif len(ids):
            lo, hi = int(ids.min()), int(ids.max())
            rows_seen += len(ids)
            if stamp is None and not uniques and hi - lo < 4 * rows_seen + 4096:
                stamp, low = np.full(hi - lo + 1, -1, dtype=np.int32), lo
                appearances = np.zeros(len(stamp), dtype=np.int64)
            elif stamp is not None and (lo < low or hi >= low + len(stamp)):
                first, last = min(lo, low), max(hi, low + len(stamp) - 1)
                if last - first < 4 * rows_seen + 4096:  # still compact: widen the table
                    at = low - first
                    wider = np.full(last - first + 1, -1, dtype=np.int32)
                    wider[at : at + len(stamp)] = stamp
                    if appearances is not None:
                        more = np.zeros(len(wider), dtype=np.int64)
                        more[at : at + len(stamp)] = appearances
                        appearances = more
                    stamp, low = wider, first
            if stamp is not None and lo >= low and hi < low + len(stamp):
                # O(rows), no sort: dense ids. The value as an int32 scalar, as the table is:
                # numpy scatters a Python int ~1.6x slower (50 against 30 us for 40k ids).
                stamp[ids - low if low else ids] = np.int32(ordinal)
                epoch_rows += len(ids)
            else:
                appearances = None  # ids outside the table: no cheap duplicate check
                uniques.append(_sorted_unique(ids))
        if len(uniques) > 8:  # keep memory O(N), not O(rows)
            uniques = [_sorted_unique(np.concatenate(uniques))]
        if k + 1 == len(shards) or shards[k + 1].epoch != info.epoch:  # the epoch's last shard
            if appearances is not None and stamp is not None:
                seen = stamp == ordinal
                clean = clean and int(np.count_nonzero(seen)) == epoch_rows
                appearances += seen
            epoch_rows, ordinal = 0, ordinal + 1
    if stamp is not None:
        present = np.flatnonzero(stamp >= 0)
        if appearances is not None:
            appearances = appearances[present]
        uniques.append(present.astype(np.int64) + low)
    if not uniques:
        empty = np.zeros(0, dtype=np.int64 if id_kind == "int" else np.str_)
        keys = None if id_kind == "int" else np.zeros(0, dtype="S1")
        return IdScan(empty, np.zeros(0, dtype=np.int64) if clean else None, keys)
    if len(uniques) == 1 and stamp is not None:
        scan = IdScan(uniques[0], appearances if clean else None)
    else:
        universe = _sorted_unique(np.concatenate(uniques))
        if id_kind == "str":
            return IdScan(None, None, universe)
        scan = IdScan(universe, None)
    if kept is None:
        return scan
    index = IdIndex(scan.universe, "int")  # ids 0..N-1 are their own index: no copy
    return dataclasses.replace(scan, rows={path: index(ids) for path, ids in kept})


#: Most bytes the scan of a string-id run keeps to hand every row's index to the replay
#: (:attr:`IdScan.rows`, 4 bytes a row: 64M rows; while the scan maps them to the sorted
#: universe, about 3x that for a moment); a larger run's replay looks its ids up again. The
#: scan of an int-id run of summary shards keeps its ids under the same bound (8 bytes a row).
RESOLVED_BYTES = 256 << 20


class ScanStopped(Exception):
    """The id scan was asked to stop (:func:`scan_ids`' ``stop``) before it finished."""


def resolves_rows(shards: Sequence[ShardInfo], id_kind: str) -> bool:
    """Whether :func:`scan_ids` hands back every row's index (:attr:`IdScan.rows`), within
    :data:`RESOLVED_BYTES`: string ids (unless two ids share a hash), whose second reading
    would hash and look up every id again; and int ids of a run of summary shards, where the
    ids are a third of the bytes read (of a logits run, well under 1%: not worth the memory)."""
    rows = sum(s.num_rows for s in shards)
    if id_kind == "str":
        return rows * 4 <= RESOLVED_BYTES
    return all(s.storage == "summary" for s in shards) and rows * 8 <= RESOLVED_BYTES


def _scan_string_keys(shards: Sequence[ShardInfo], stop: threading.Event | None) -> IdScan:
    """:func:`scan_ids` of string ids by their hashes (see :func:`scan_pieces`)."""
    resolved = None
    if resolves_rows(shards, "str"):
        resolved = np.empty(sum(s.num_rows for s in shards), dtype=np.int32)
    scan = scan_pieces(_piece_keys(shards, stop), "str", resolved)
    if resolved is None:
        return scan
    rows: dict[Location, np.ndarray] = {}
    at = 0
    for info in shards:
        rows[info.path] = resolved[at : at + info.num_rows]
        at += info.num_rows
    return dataclasses.replace(scan, rows=rows)


#: Rows of ids the string-id scan reads, hashes and looks up at once (rounded to whole
#: checksummed groups): a piece's keys, words and hashes are ~2.5 MiB at 16-byte ids, where an
#: epoch of 400k ids held ~10 MiB of them, twice over while the next one was read.
PIECE_ROWS = 1 << 16

#: A piece of a scan: id keys, and at the last piece of an epoch the epoch's number of rows
#: (``None`` before it).
Piece = tuple[np.ndarray, "int | None"]


def _piece_keys(
    shards: Sequence[ShardInfo], stop: threading.Event | None = None
) -> Iterator[Piece]:
    """The id keys of ``shards`` in pieces of about :data:`PIECE_ROWS` rows, in order, each
    epoch's last piece carrying its rows (epochs without rows are left out); raises
    :class:`ScanStopped` before reading a shard once ``stop`` is set."""
    totals: dict[int, int] = {}
    for info in shards:
        totals[info.epoch] = totals.get(info.epoch, 0) + info.num_rows
    for k, info in enumerate(shards):
        if stop is not None and stop.is_set():
            raise ScanStopped
        last = k + 1 == len(shards) or shards[k + 1].epoch != info.epoch
        total = totals[info.epoch]
        n = info.num_rows
        if not n:
            if last and total:
                yield np.zeros(0, dtype="S1"), total
            continue
        group = max(1, info.group_rows)
        step = group * max(1, PIECE_ROWS // group)
        with ShardReader(info.path, info=info) as reader:
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                yield reader.read_id_keys(lo, hi), total if last and hi == n else None


def scan_epochs(
    epochs: Iterable[tuple[list[np.ndarray], int]],
    id_kind: str,
    resolved: np.ndarray | None = None,
) -> IdScan:
    """:func:`scan_pieces` of a run given per epoch in order: the id keys of its shards
    (repeats allowed; :meth:`~aum_replay.format.ShardReader.read_id_keys`) and its number of
    rows (which may exceed the keys given: the Dask scan sends each shard's distinct ids)."""

    def pieces() -> Iterator[Piece]:
        for parts, rows in epochs:
            for k, part in enumerate(parts):
                yield part, rows if k + 1 == len(parts) else None

    return scan_pieces(pieces(), id_kind, resolved)


def scan_pieces(
    pieces: Iterable[Piece], id_kind: str, resolved: np.ndarray | None = None
) -> IdScan:
    """The id scan of a run from its id keys in pieces, in order (:data:`Piece`: each epoch's
    last piece carries the epoch's number of rows).

    The distinct ids seen so far are kept with a :class:`~aum_replay.keys.HashIndex` over them:
    each piece's keys are looked up (a hash and a gather a row, no sort) and the ids found are
    marked as seen in the epoch; ids never seen before wait for the epoch's end, where they are
    sorted, added and indexed at once. An epoch holds an id twice if it has fewer distinct ids
    than rows. The first epoch's ids come sorted, so a run whose later epochs bring no new id
    (the common case) is never sorted again. Raises :class:`~aum_replay.keys.Collision` for two
    string ids with one hash.

    ``resolved``, an ``int32`` array of the run's rows, receives each row's index in the
    returned universe, piece after piece, for :attr:`IdScan.rows`.
    """
    # The distinct ids so far, as key_words rows (their keys are a view of them: _as_keys).
    words = np.zeros((0, 1), dtype=np.uint64)
    counts = np.zeros(0, dtype=np.int64)  # per distinct id so far: epochs it appears in
    index: HashIndex | None = None
    ordered = True  # the ids are sorted (as sort_order sorts)
    at = 0  # rows resolved so far
    clean = True
    seen = np.zeros(0, dtype=bool)  # per distinct id: seen in this epoch (1 byte an id)
    waiting: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # new ids: words, hashes, rows
    with closing(_hashed_ahead(pieces)) as ahead:  # its thread ends with it
        for piece_words, h, epoch_rows in ahead:
            n = len(piece_words)
            if n:
                # each row's index goes straight into its place in resolved (int32), when kept
                out = None if resolved is None else resolved[at : at + n]
                if index is None:
                    found = np.empty(n, dtype=np.int64) if out is None else out
                    found[:] = -1
                else:
                    found = index.find_words(piece_words, h, out=out)
                new = found < 0
                if new.any():  # indexed at the epoch's end, with the epoch's other new ids
                    rows = np.flatnonzero(new).astype(np.int32)  # < RESOLVED_BYTES / 4 rows
                    if len(rows) == n:
                        waiting.append((piece_words, h, rows + np.int32(at)))
                    else:
                        waiting.append((piece_words[rows], h[rows], rows + np.int32(at)))
                        seen[found[~new]] = True
                    del rows
                else:
                    seen[found] = True
                del found, new
                at += n
            del piece_words, h
            if epoch_rows is None:
                continue
            if waiting:
                index = None  # the old table goes before the new one is built
                words, counts, seen, index, ordered = _add_new_ids(
                    waiting, words, counts, seen, ordered, id_kind, resolved
                )
            clean = clean and int(np.count_nonzero(seen)) == epoch_rows
            counts += seen
            seen = np.zeros(len(words), dtype=bool)
    index = None
    if not ordered:  # ints by value; UTF-8 bytes sort as the code points do
        order = sort_order(_as_keys(words, id_kind), words)
        words = np.take(words, order, axis=0)
        counts = counts[order]
        if resolved is not None:  # arrival order -> position in the sorted universe
            rank = np.empty(len(order), dtype=np.int32)
            rank[order] = np.arange(len(order), dtype=np.int32)
            for lo in range(0, at, 1 << 20):  # in place, in pieces: no second array of rows
                resolved[lo : lo + (1 << 20)] = rank[resolved[lo : lo + (1 << 20)]]
    keys = _as_keys(words, id_kind)
    appearances = counts if clean else None
    if id_kind == "int":
        return IdScan(keys, appearances)
    return IdScan(None, appearances, keys)


def _add_new_ids(
    waiting: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    words: np.ndarray,
    counts: np.ndarray,
    seen: np.ndarray,
    ordered: bool,
    id_kind: str,
    resolved: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, HashIndex, bool]:
    """:func:`scan_pieces` at an epoch's end: its new ids (``waiting``: per piece, their words,
    hashes and rows; emptied) added to the universe ``words``, their rows resolved, marked
    ``seen``, and the table built anew (the caller has let the old one go). Returns the new
    ``words, counts, seen, index, ordered``."""
    width = max(w.shape[1] for w, _, _ in waiting)
    parts = [id_keys.widen_words(w, width) for w, _, _ in waiting]
    hash_parts = [h for _, h, _ in waiting]
    row_parts = [r for _, _, r in waiting]
    waiting.clear()
    # one list at a time, each freed once joined: the pieces and their join do not all coexist
    fresh = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    fresh_hashes = hash_parts[0] if len(hash_parts) == 1 else np.concatenate(hash_parts)
    del hash_parts
    rows = row_parts[0] if len(row_parts) == 1 else np.concatenate(row_parts)
    del row_parts
    picks, inverse = unique_keys(_as_keys(fresh, id_kind), fresh)
    added = np.take(fresh, picks, axis=0)
    added_hashes = fresh_hashes[picks]
    del fresh, fresh_hashes, picks
    last = _as_keys(words[-1:], id_kind)
    if len(last) and not last[0] < _as_keys(added[:1], id_kind)[0]:
        ordered = False  # bytes compare as sort_order sorts
    inverse += len(words)
    if resolved is not None:
        resolved[rows] = inverse
    del rows
    hashes = None  # the universe's hashes are not kept: HashIndex hashes again
    if not len(words):  # the first ids: no copy, their hashes at hand
        words, hashes = added, added_hashes
    else:
        width = max(words.shape[1], added.shape[1])
        words = np.concatenate(
            [id_keys.widen_words(words, width), id_keys.widen_words(added, width)]
        )
    del added, added_hashes
    counts = np.concatenate([counts, np.zeros(len(words) - len(counts), np.int64)])
    seen = np.concatenate([seen, np.zeros(len(words) - len(seen), dtype=bool)])
    seen[inverse] = True
    del inverse
    return words, counts, seen, HashIndex(_as_keys(words, id_kind), hashes, words), ordered


def _as_keys(words: np.ndarray, id_kind: str) -> np.ndarray:
    """Rows of :func:`~aum_replay.keys.key_words` as keys, a view: ``int64`` ids, or UTF-8 keys
    at the words' width (NUL-padded, which numpy and polars strip, as keys hold no NUL)."""
    if id_kind == "int":
        return words.view(np.int64).reshape(-1)
    return words.view(f"S{8 * words.shape[1]}").reshape(-1)


def _hashed_ahead(
    pieces: Iterable[Piece],
) -> Generator[tuple[np.ndarray, np.ndarray, int | None], None, None]:
    """Per piece, its keys as :func:`~aum_replay.keys.key_words`, their hashes, and its
    epoch's rows (at the epoch's last piece), each piece read and hashed by a thread while the
    caller looks up the one before (reads, copies and numpy's arithmetic release the GIL)."""
    source = iter(pieces)

    def next_piece() -> tuple[np.ndarray, np.ndarray, int | None] | None:
        item = next(source, None)  # only the one thread advances the source
        if item is None:
            return None
        keys, epoch_rows = item
        del item
        words = id_keys.key_words(keys)
        kind = np.empty(0, dtype=keys.dtype)  # what hash_keys reads of the keys
        del keys  # before hashing: the blob goes now, unless words is a view of it
        hashes = id_keys.hash_keys(kind, words)  # looked up at call time: tests force collisions
        return words, hashes, epoch_rows

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aum-replay-scan") as pool:
            ahead = pool.submit(next_piece)
            while (item := ahead.result()) is not None:
                ahead = pool.submit(next_piece)
                yield item
                del item
    finally:
        close = getattr(source, "close", None)
        if close is not None:  # the thread is done with it: its open shard is closed now
            close()


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # np.unique hashes since numpy 2.3, ~15x slower than a sort for 50k int64 ids.
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class IdIndex:
    """Maps sample ids to their dense index in a sorted ``universe`` (see :func:`index_of`).

    Integer ids that span a compact range use a lookup table (one gather per block) instead
    of a binary search; ids that are exactly ``low, low + 1, ...`` (what
    :class:`~aum_replay.DatasetWithIndex` gives) are their own index, shifted.
    """

    def __init__(self, universe: np.ndarray, id_kind: str) -> None:
        self.universe = universe
        self.id_kind = id_kind
        self._lut: np.ndarray | None = None
        self._low = 0
        self._consecutive = False
        self._hashed: HashIndex | None = None
        # UTF-8 keys are looked up by hash, in a table built at the first lookup: a replay whose
        # scan resolved every row (IdScan.rows) never needs it.
        self._hash_pending = id_kind == "str" and universe.dtype.kind == "S"
        self._lock = threading.Lock()
        if id_kind == "int" and len(universe):
            low, high = int(universe[0]), int(universe[-1])
            self._low = low
            self._consecutive = high - low == len(universe) - 1  # sorted and distinct
            if not self._consecutive and high - low < 4 * len(universe) + 4096:
                self._lut = np.full(high - low + 1, -1, dtype=np.int64)
                self._lut[universe - low] = np.arange(len(universe), dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to Dask workers: without the lock, and without a hash table they rebuild.
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        if state["_hashed"] is not None:
            state["_hashed"], state["_hash_pending"] = None, True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Dense index of each id, shape (B,) ``int64`` (``ids`` itself when they are 0..N-1)."""
        if self._hash_pending:
            with self._lock:
                if self._hash_pending:
                    with suppress(Collision):
                        self._hashed = HashIndex(self.universe)
                    self._hash_pending = False
        if self._hashed is not None and ids.dtype.kind == "S":
            index = self._hashed(ids)
            if index is None:
                raise InputError("sample id not in the run's id universe")  # pragma: no cover
            return index
        if not self._consecutive and self._lut is None:
            return index_of(self.universe, ids, self.id_kind)
        offset = np.asarray(ids, dtype=np.int64)
        if self._low:
            offset = offset - self._low
        size = len(self.universe) if self._lut is None else len(self._lut)
        # One pass checks both ends: a negative offset is a huge unsigned number.
        if len(offset) and int(offset.view(np.uint64).max()) >= size:
            raise InputError("sample id not in the run's id universe")  # pragma: no cover
        if self._lut is None:
            return offset
        index = self._lut[offset]
        if len(index) and index.min() < 0:
            raise InputError("sample id not in the run's id universe")  # pragma: no cover
        return index


def index_of(universe: np.ndarray, ids: np.ndarray, id_kind: str) -> np.ndarray:
    """Dense index of each id in the sorted ``universe``, shape (B,) ``int64``."""
    if id_kind == "str" and ids.dtype.kind != "S":  # UTF-8 keys match keys as they are
        ids = ids.astype(np.str_)
    index = np.searchsorted(universe, ids)
    if len(index) and (index.max() >= len(universe) or not (universe[index] == ids).all()):
        raise InputError("sample id not in the run's id universe")  # pragma: no cover
    return index.astype(np.int64, copy=False)


def check_targets(targets: np.ndarray, num_classes: int, where: str) -> None:
    """Raise :class:`FormatError` if a stored target is outside ``[0, num_classes)``."""
    if len(targets) == 0:
        return
    if targets.dtype == np.int64 and int(targets.view(np.uint64).max()) < num_classes:
        return  # one pass, no temporaries: a negative target is a huge unsigned number
    bad = np.flatnonzero((targets < 0) | (targets >= num_classes))
    if len(bad):
        raise FormatError(
            f"{where}: target {int(targets[bad[0]])} at row {int(bad[0])} is outside "
            f"[0, {num_classes})"
        )


@dataclass(frozen=True)
class EpochSummary:
    """What one epoch of a run holds (see :func:`describe_run`)."""

    epoch: int
    ranks: tuple[int, ...]
    rows: int
    distinct_ids: int
    duplicate_rows: int
    missing_ids: int
    nbytes: int
    stored_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """The answer of ``aum-replay info``."""

    run: Run
    epochs: tuple[EpochSummary, ...]
    num_samples: int
    nbytes: int


def verify_run(run: Run) -> int:
    """Read every row of every shard of ``run`` and check it against its checksum (v2).

    Returns the bytes checked; raises :class:`FormatError` naming the first corrupt shard.
    """
    checked = 0
    for info in run.shards:
        with ShardReader(info.path, info=info, verify=True) as reader:
            checked += reader.verify_all()
    return checked


def describe_run(run_dir: RunDirLike) -> RunSummary:
    """Validate every shard of ``run_dir`` and count rows, ids, duplicates and gaps per epoch.

    ``missing_ids`` of an epoch counts the ids that other epochs have and this one lacks;
    ``duplicate_rows`` the rows whose id already appeared earlier in the same epoch.
    """
    run = open_run(run_dir)
    universe = build_universe(run.shards, run.id_kind)
    summaries = []
    for epoch in run.epochs:
        shards = [s for s in run.shards if s.epoch == epoch]
        seen = np.zeros(len(universe), dtype=np.int64)
        for info in shards:
            np.add.at(seen, index_of(universe, read_all_ids(info), run.id_kind), 1)
        rows = sum(s.num_rows for s in shards)
        distinct = int((seen > 0).sum())
        summaries.append(
            EpochSummary(
                epoch=epoch,
                ranks=tuple(s.rank for s in shards),
                rows=rows,
                distinct_ids=distinct,
                duplicate_rows=rows - distinct,
                missing_ids=len(universe) - distinct,
                nbytes=sum(s.nbytes for s in shards),
                stored_dtypes=tuple(sorted({s.stored_dtype for s in shards})),
            )
        )
    return RunSummary(
        run=run,
        epochs=tuple(summaries),
        num_samples=len(universe),
        nbytes=sum(s.nbytes for s in summaries),
    )
