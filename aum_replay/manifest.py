"""Format v2's shard record: one checksummed manifest at the end of the file.

A v2 shard is an HDF5 file followed by its *manifest*: everything a reader needs (the shard's
description, where each dataset's chunks lie, a checksum of every group of rows of every dataset)
in one record that the writer appends after HDF5 has closed the file. HDF5 ignores bytes past its
own end, so ``h5py`` still opens the file; the replay reads the manifest with one ``pread`` and
the rows with ``preadv`` at the offsets it gives, so it never parses HDF5's own structures
(superblock, object headers, B-trees: bytes the replay does not use, whose corruption made HDF5
hang or misread in format v1).

Layout of the manifest (little-endian)::

    u32 json_length | JSON (UTF-8) | zero padding to 8 bytes | int64 table
    u64 manifest_length | u32 crc32c(manifest) | b"AUMRPv2\\n"        <- the last 20 bytes

The JSON holds scalars and small objects; per-chunk offsets and per-group checksums live in the
int64 table (the JSON names slices of it), so a shard of thousands of chunks still validates in a
few microseconds.

The groups' checksums are XXH3-64 (the JSON's ``"checksum": "xxh3_64"``); shards written before
it was chosen have none named and hold CRC32C, which readers keep checking. XXH3 runs at 65-85
GB/s on a block just read against CRC32C's ~25 GB/s (SSE4.2) on these machines: hashing 800 MB of
rows takes ~12 ms of a core instead of ~33, and verifying every row read cost a values-only
replay 5.7-9.6% of its time (``tools/bench_replay.py --format-v2``).
Either catches a flipped byte: CRC32C always, XXH3 but for a 2**-64 chance.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash
from crc32c import crc32c

__all__ = [
    "GROUP_SUM",
    "GROUP_SUMS",
    "MAGIC",
    "TRAILER_SIZE",
    "RunningSum",
    "checksum",
    "group_sum",
    "pack",
    "read",
]

MAGIC = b"AUMRPv2\n"
_TRAILER = struct.Struct("<QI8s")
TRAILER_SIZE = _TRAILER.size
_JSON_LENGTH = struct.Struct("<I")
#: Bytes read from the end of a file in the first ``pread``: the trailer and, almost always, the
#: whole manifest.
_FIRST_READ = 16 << 10


def checksum(data: Any, value: int = 0) -> int:
    """CRC32C (hardware-accelerated where the CPU has it) of a bytes-like object, continuing
    from ``value``; the GIL is released for large buffers."""
    return int(crc32c(data, value))


#: The groups' checksum of a new shard, and every one a reader knows (what a manifest without a
#: ``"checksum"`` holds comes last).
GROUP_SUM = "xxh3_64"
GROUP_SUMS = ("xxh3_64", "crc32c")
_SIGN = 1 << 63


def _signed(digest: int) -> int:
    """An unsigned 64-bit digest as the int64 the manifest's table stores."""
    return digest - 2 * _SIGN if digest >= _SIGN else digest


def group_sum(data: Any, algorithm: str) -> int:
    """The checksum ``algorithm`` (one of :data:`GROUP_SUMS`) of a bytes-like object, as the
    manifest's table holds it (int64). Both release the GIL for large buffers."""
    if algorithm == "xxh3_64":
        return _signed(xxhash.xxh3_64_intdigest(data))
    return checksum(data)


class RunningSum:
    """:data:`GROUP_SUM` of bytes fed in pieces (a group of rows arrives batch by batch)."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_64()

    def update(self, data: Any) -> None:
        self._state.update(data)

    def digest(self) -> int:
        """The checksum of everything fed so far (as :func:`group_sum` gives it)."""
        return _signed(self._state.intdigest())


def pack(record: dict[str, Any], table: np.ndarray) -> bytes:
    """The manifest and trailer bytes of ``record`` (JSON-able) and ``table`` (int64)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head = _JSON_LENGTH.pack(len(text)) + text
    body = head + bytes(-len(head) % 8) + np.ascontiguousarray(table, dtype="<i8").tobytes()
    return body + _TRAILER.pack(len(body), checksum(body), MAGIC)


def read(
    pread: Callable[[int, int], bytes], size: int
) -> tuple[dict[str, Any], np.ndarray, int] | str | None:
    """The manifest of a file of ``size`` bytes: ``(record, table, start)``; ``pread(n,
    offset)`` reads its bytes (``os.pread`` of an open file, or a remote file's range).

    ``start`` is the manifest's byte offset (every dataset's bytes lie before it). Returns
    ``None`` when the file does not end in a v2 trailer (a v1 shard, or a foreign file), and a
    string saying what is wrong when the trailer is there but the manifest is damaged. Returns
    rather than raises, so that the caller names the file.
    """
    if size < TRAILER_SIZE:
        return None
    first = min(size, _FIRST_READ)
    tail = pread(first, size - first)
    if len(tail) != first:
        return "truncated while being read"
    length, crc, magic = _TRAILER.unpack_from(tail, first - TRAILER_SIZE)
    if magic != MAGIC:
        return None
    start = size - TRAILER_SIZE - length
    if length < _JSON_LENGTH.size or start < 0:
        return "the manifest's length is damaged"
    if length + TRAILER_SIZE <= first:
        body = tail[first - TRAILER_SIZE - length : first - TRAILER_SIZE]
    else:
        body = pread(length, start)
        if len(body) != length:
            return "truncated while being read"
    if checksum(body) != crc:
        return "manifest checksum mismatch (the file is corrupt)"
    (json_length,) = _JSON_LENGTH.unpack_from(body, 0)
    head = _JSON_LENGTH.size + json_length
    table_at = head + (-head % 8)
    if table_at > length or (length - table_at) % 8:
        return "the manifest's layout is damaged"
    try:
        record = json.loads(body[_JSON_LENGTH.size : head].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"the manifest is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return "the manifest is not a JSON object"
    table = np.frombuffer(body, dtype="<i8", offset=table_at)
    return record, table, start
