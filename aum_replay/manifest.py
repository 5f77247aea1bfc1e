"""Format v2's shard record: one checksummed manifest at the end of the file.

A v2 shard is an HDF5 file followed by its *manifest*: everything a reader needs (the shard's
description, where each dataset's chunks lie, a CRC32C of every group of rows of every dataset)
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
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from crc32c import crc32c

__all__ = ["MAGIC", "TRAILER_SIZE", "checksum", "pack", "read"]

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
