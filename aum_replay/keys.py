"""String sample ids as numbers: a 64-bit hash of each id's UTF-8 key, checked, never trusted.

A replay of string ids reads them as fixed-width UTF-8 keys (``S`` arrays,
:meth:`aum_replay.format.ShardReader.read_id_keys`). numpy sorts, gathers and compares such keys
byte by byte: 3-30x the cost of the same on integers. Here a key is handled as its whole 8-byte
words (:func:`key_words`): sorted by ranking each word with an integer sort, gathered and
compared as rows of integers, and hashed to a ``uint64`` so that a block's ids map to the
universe through an open-addressing table (:class:`HashIndex`). A hash is only a shortcut: every
lookup compares the key's words themselves, and two distinct ids with one hash (odds ~N^2 /
2^65) make the callers fall back to comparing bytes (:class:`HashIndex` raises
:class:`Collision`)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "Collision",
    "HashIndex",
    "hash_keys",
    "hash_words",
    "key_words",
    "sort_order",
    "unique_keys",
    "widen_words",
]

_MULTIPLY = np.uint64(0xFF51AFD7ED558CCD)
_SEED = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(33)
_LOW = np.uint64(0xFFFFFFFF)  # a slot's index field; all ones: the slot is free
_TAG = np.uint64(32)  # a slot's top 32 bits: the top 32 bits of its key's hash


class Collision(Exception):
    """Two distinct keys have the same hash: compare bytes instead."""


def key_words(keys: np.ndarray) -> np.ndarray:
    """Each key as whole little-endian 8-byte words, ``(n, words)`` ``uint64``, C-contiguous.

    An ``S`` key is padded with NUL bytes to a multiple of 8 (a copy only when its width is not
    one already); an ``int64`` id is one word. Rows of words gather and compare at the speed of
    integers, where numpy copies and compares ``S`` elements of odd widths byte by byte (10-30x
    slower a key at ``S15``).
    """
    if keys.dtype.kind == "i":
        return keys.astype(np.int64, copy=False).view(np.uint64).reshape(-1, 1)
    n, width = len(keys), keys.dtype.itemsize
    words = -(-width // 8)
    raw = np.ascontiguousarray(keys).view(np.uint8).reshape(n, width)
    if width % 8:
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, :width] = raw
        raw = padded
    return raw.view("<u8").reshape(n, words)


def hash_words(words: np.ndarray) -> np.ndarray:
    """A ``uint64`` hash of each row of :func:`key_words` that does not depend on the number of
    words: keys hold no NUL byte (the logger refuses ids with one), so the zero words that pad a
    short key in a wide array are skipped."""
    n = len(words)
    if n <= _HASH_PIECE:
        return _hash_piece(words)
    h = np.empty(n, dtype=np.uint64)
    for lo in range(0, n, _HASH_PIECE):  # the temporaries stay small (and in the CPU cache)
        h[lo : lo + _HASH_PIECE] = _hash_piece(words[lo : lo + _HASH_PIECE])
    return h


#: Keys hashed at once by :func:`hash_words`: its temporaries (a few arrays of this many
#: words) stay in the CPU cache and add nothing to the id scan's peak of memory, where a whole
#: epoch at once (400k ids) held ~12 MiB of them.
_HASH_PIECE = 1 << 16


def _hash_piece(words: np.ndarray) -> np.ndarray:
    h = np.full(len(words), _SEED, dtype=np.uint64)
    for j in range(words.shape[1]):
        word = words[:, j]
        mixed = (h ^ word) * _MULTIPLY
        mixed ^= mixed >> _SHIFT
        h = np.where(word != 0, mixed, h) if j else mixed
    return h


def hash_keys(keys: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
    """A ``uint64`` hash of each key of an ``S`` array, independent of the array's width
    (:func:`hash_words`; ``words``: the keys' :func:`key_words`, when the caller has them); an
    ``int64`` array is its own hash."""
    if keys.dtype.kind == "i":  # int64 ids are their own hash: distinct ids, distinct hashes
        if words is not None:  # their key_words: the ids' own bits, one word each
            return words.reshape(-1)
        return keys.astype(np.int64, copy=False).view(np.uint64)
    return hash_words(key_words(keys) if words is None else words)


def sort_order(keys: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
    """A permutation that sorts ``keys``: ints by value (stable), ``S`` keys as bytes compare
    (equal keys in no particular order).

    ``S`` keys are compared by their big-endian 8-byte words (a key's NUL padding sorts first,
    as a shorter key does: keys hold no NUL). Rather than ``np.lexsort``'s stable sorts (~150 ns
    a key), each word that varies is ranked with numpy's SIMD quicksort and the ranks of the
    words so far are folded into one: ``rank * distinct + next rank`` stays below ``n**2``, so
    it fits an ``int64``, and one more quicksort ranks the pair (~50 ns a key for two words).
    ``words``: the keys' :func:`key_words`, when the caller has them.
    """
    if keys.dtype.kind != "S" or len(keys) < 2:
        return np.argsort(keys, kind="stable")
    columns = (key_words(keys) if words is None else words).byteswap()
    varying = [j for j in range(columns.shape[1]) if not (columns[:, j] == columns[0, j]).all()]
    if not varying:
        return np.arange(len(keys))
    order = np.argsort(columns[:, varying[0]])
    rank, distinct = _dense_rank(columns[:, varying[0]], order)
    for at, j in enumerate(varying[1:], 2):
        if distinct == len(keys):  # the words so far tell every key apart
            break
        column = columns[:, j]
        more, more_distinct = _dense_rank(column, np.argsort(column))
        rank = rank * more_distinct + more
        order = np.argsort(rank)
        if at < len(varying):
            rank, distinct = _dense_rank(rank, order)
    return order


def _dense_rank(values: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's rank among the distinct values (``int64``) and how many there are, given
    the permutation ``order`` that sorts ``values``."""
    ordered = values[order]
    change = np.empty(len(values), dtype=np.int64)
    change[0] = 0
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:], casting="unsafe")
    np.cumsum(change, out=change)
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = change
    return rank, int(change[-1]) + 1


def unique_keys(keys: np.ndarray, words: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys of ``keys`` in sorted order (:func:`sort_order`), as ``(picks,
    inverse)``: ``keys[picks]`` are the distinct keys, sorted, and ``inverse`` is the position of
    each key of ``keys`` among them. Exact: the keys' bytes are compared, not their hashes.
    ``words``: the keys' :func:`key_words`, when the caller has them.
    """
    words = key_words(keys) if words is None else words
    order = sort_order(keys, words)
    first = np.ones(len(keys), dtype=bool)
    if len(keys) > 1:
        ordered = np.take(words, order, axis=0)
        np.any(ordered[1:] != ordered[:-1], axis=1, out=first[1:])
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return order[first], inverse


def widen_words(words: np.ndarray, count: int) -> np.ndarray:
    """Rows of :func:`key_words` padded with zero words to ``count`` words (a key's words do not
    depend on the width they are stored at, but for trailing zeros)."""
    if words.shape[1] >= count:
        return words
    out = np.zeros((len(words), count), dtype=np.uint64)
    out[:, : words.shape[1]] = words
    return out


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a[i] != b[i]`` for two ``(n, words)`` arrays: one flat comparison when every row is
    equal (the common case), per row otherwise."""
    if np.array_equal(a.reshape(-1), b.reshape(-1)):
        return np.zeros(len(a), dtype=bool)
    return np.any(a != b, axis=1)


def _match(entries: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slots of a :class:`HashIndex` table against the keys' tags: each slot's index
    (``int64``), whether it is taken, and whether it is taken with the key's tag."""
    found = (entries & _LOW).astype(np.int64)
    taken = found != int(_LOW)
    hit = (entries >> _TAG) == tags
    hit &= taken
    return found, taken, hit


class HashIndex:
    """Dense index of keys in ``universe``, an array of distinct keys (any order), by hash.

    An open-addressing table of at least twice as many 8-byte slots as keys (a 32-bit tag of
    the hash and the index), filled and probed (linear probing) for all keys of a block at
    once: a lookup is one or two gathers a key, then one gather of the universe's words
    (:func:`key_words`) to check the key itself.
    Raises :class:`Collision` on construction when two universe keys share a hash.
    ``hashes`` and ``words``: the universe's, when the caller has them.
    """

    def __init__(
        self,
        universe: np.ndarray,
        hashes: np.ndarray | None = None,
        words: np.ndarray | None = None,
    ) -> None:
        self.universe = universe
        n = len(universe)
        self._words = key_words(universe) if words is None else words
        h = hash_keys(universe, self._words) if hashes is None else hashes
        if n > 1 and not (h[1:] > h[:-1]).all():  # hashes that come sorted need no sort
            ordered = np.sort(h)
            collide = bool((ordered[1:] == ordered[:-1]).any())
            del ordered
            if collide:
                raise Collision
        bits = max(4, (2 * n - 1).bit_length())
        self._shift = np.uint64(64 - bits)
        # Linear probing without wrapping, built in one pass: keys in order of their home slot
        # each take the first free slot from home on, pos_i = max(home_i, pos_{i-1} + 1), a
        # running maximum of home_i - i. Every slot between a key's home and its place is
        # taken, as a lookup's probe needs, and the table ends with a free slot. (In place:
        # the build's temporaries are a few arrays of n, next to a table of 2-4n slots.)
        order = np.argsort(self._slots(h))
        place = self._slots(h[order])  # each key's home, in home order
        step = np.arange(n)
        place -= step
        np.maximum.accumulate(place, out=place)
        place += step
        del step
        size = max(1 << bits, int(place[-1]) + 2 if n else 0)
        # A slot is one uint64: the top 32 bits of its key's hash (a tag) and the key's index, so
        # a probe is one 8-byte gather. Keys with one tag are told apart by their words.
        if n >= int(_LOW):
            raise ValueError(f"{n} keys: a hash index holds fewer than 2**32 - 1")
        self._table = np.full(size, _LOW, dtype=np.uint64)
        self._table[place] = ((h[order] >> _TAG) << _TAG) | order.astype(np.uint64)

    def _slots(self, h: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the top bits of h times an odd constant. String hashes are mixed
        # already; int ids are their own hash, and their top bits alone would all be zero.
        return ((h * _MULTIPLY) >> self._shift).astype(np.int64)

    #: Keys looked up at once: the temporaries of a lookup stay in the CPU caches (a whole
    #: epoch at once runs ~2x slower a key than pieces of this size).
    PIECE = 16384

    def find(self, keys: np.ndarray, hashes: np.ndarray | None = None) -> np.ndarray:
        """The index of each key (B,) ``int64``, -1 for a key not in the universe."""
        words = key_words(keys)
        return self.find_words(words, hash_keys(keys, words) if hashes is None else hashes)

    def find_words(
        self, words: np.ndarray, hashes: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`find` of keys given as their :func:`key_words` and hashes; ``out``: an integer
        array (B,) to put the indices in (the id scan's ``int32`` rows), returned."""
        width = self._words.shape[1]
        if words.shape[1] < width:  # keys narrower than the universe's
            return self.find_words(widen_words(words, width), hashes, out)
        if words.shape[1] > width:  # a key longer than any in the universe is not there
            index = self.find_words(np.ascontiguousarray(words[:, :width]), hashes, out)
            index[words[:, width:].any(axis=1)] = -1
            return index
        if out is not None or len(words) > self.PIECE:
            index = np.empty(len(words), dtype=np.int64) if out is None else out
            for lo in range(0, len(words), self.PIECE):
                hi = lo + self.PIECE
                index[lo:hi] = self._find_piece(words[lo:hi], hashes[lo:hi])
            return index
        return self._find_piece(words, hashes)

    def _find_piece(self, words: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """:meth:`find_words` of at most :data:`PIECE` keys as wide as the universe's."""
        if not len(words):
            return np.zeros(0, dtype=np.int64)
        tags = hashes >> _TAG
        index, at = self._probe(self._slots(hashes), tags)
        # Each key's first slot with its tag holds it, unless another key has the same tag
        # (~n / 2**32 of lookups): its words tell, and a key that is not this one probes on.
        check = np.flatnonzero(index >= 0)
        every = len(check) == len(words)
        wrong = _rows_differ(
            np.take(self._words, index if every else index[check], axis=0),
            words if every else words[check],
        )
        while wrong.any():
            redo = check[wrong]
            index[redo], at[redo] = self._probe(at[redo] + 1, tags[redo])
            check = redo[index[redo] >= 0]
            wrong = _rows_differ(np.take(self._words, index[check], axis=0), words[check])
        return index

    def _probe(self, slot: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear probing from ``slot`` on: each key's first taken slot with its tag, as the
        index there (-1: a free slot came first, the key is not in the universe) and the slot.

        The first gather is of every key's home slot; the few whose home another key took
        (~1 in 4 at the table's load) go on a slot at a time. The table ends with a free slot:
        no wrapping.
        """
        # every key's home slot first, with no index array in between
        found, taken, hit = _match(self._table[slot], tags)
        index = np.where(hit, found, -1)
        at = slot.copy()
        todo = np.flatnonzero(taken & ~hit)  # another key's slot: probe on
        at[todo] += 1
        while len(todo):
            found, taken, hit = _match(self._table[at[todo]], tags[todo])
            index[todo[hit]] = found[hit]
            todo = todo[taken & ~hit]
            at[todo] += 1
        return index, at

    def __call__(self, keys: np.ndarray) -> np.ndarray | None:
        """The index of each key (B,) ``int64``, or ``None`` if some key is not in the universe."""
        index = self.find(keys)
        if len(index) and int(index.min()) < 0:
            return None
        return index
