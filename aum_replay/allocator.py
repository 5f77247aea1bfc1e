"""The C allocator's settings that a replay's memory depends on (glibc's malloc; elsewhere no-ops).

glibc keeps memory that a program frees: in per-thread arenas, and in the middle of its heap,
below memory still in use. A replay allocates and frees arrays of whole epochs in its id scan,
then holds far less while it folds and writes; what glibc keeps of the scan's peak stays
resident until the process ends.

And glibc gives memory back too eagerly for a program that allocates and frees the same
arrays block after block: each array over its mmap threshold is a fresh mapping, and the heap's
free top is returned once it passes the trim threshold, so the next block's arrays fault their
pages in again (see :func:`tune_allocator`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["limit_arenas", "release_free_memory", "tune_allocator"]


def _libc(name: str) -> Callable[..., Any] | None:
    """A function of the process's C library, or None (not Linux, not there)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def limit_arenas(count: int = 1) -> bool:
    """Give this process at most ``count`` malloc arenas (``M_ARENA_MAX``); returns whether
    that was set (False where malloc is not glibc's).

    glibc gives each thread that allocates an arena of its own, and memory freed inside any
    arena but the main one mostly stays resident. A replay's id scan and worker threads allocate
    and free arrays for every epoch: with the default, a 2M-row string-id replay added ~263 MiB
    to the process at its peak, with one arena ~145 MiB, and ran as fast (the large arrays are
    few; Python objects do not come from malloc). Only takes effect before a second thread
    allocates: the console script calls it first thing; a library call leaves it alone.
    """
    mallopt = _libc("mallopt")
    m_arena_max = -8  # from glibc's malloc.h
    return mallopt is not None and bool(mallopt(m_arena_max, count))


#: The thresholds :func:`tune_allocator` fixes: glibc's own ceiling for its sliding mmap
#: threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``), and the trim threshold it pairs
#: with it (twice the mmap threshold, glibc's own rule when it slides).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def tune_allocator() -> bool:
    """The console script's malloc settings, set first thing: one arena (:func:`limit_arenas`)
    and fixed thresholds, so that the arrays of a block (a few MiB) are reused from the heap
    instead of mapped and faulted in again for every block; returns whether they were set
    (False where malloc is not glibc's).

    glibc maps every allocation over ``M_MMAP_THRESHOLD`` (128 KiB at start; it slides up
    only as mapped chunks are freed) afresh and trims the heap's free top past
    ``M_TRIM_THRESHOLD``; each page of a fresh mapping then costs a page fault when first
    written. A summary replay's blocks are a few vector operations on arrays of 100 KiB-2 MiB,
    so it faulted ~1,700 pages a replay (200k rows at C=1000, ~2 us a fault on these VMs) and
    spent a third of its time there: 7.2 ms against 4.7 ms with these settings, 10 faults
    (``tools/bench_replay.py --format-v2``). Free memory up to ``TRIM_THRESHOLD`` stays
    resident at the heap's top; a replay's peak (VmHWM) is unchanged, and
    :func:`release_free_memory` still returns it all. A library call leaves the allocator
    alone; a notebook may call this itself, once, early.
    """
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return (
        limit_arenas()
        and bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD))
        and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
    )


def release_free_memory() -> None:
    """Hand the memory that malloc holds free back to the system (``malloc_trim``): the id
    scan's arrays, once it is done, so that the rest of the replay does not add to their peak."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)
