"""The C allocator's settings that a replay's memory depends on (glibc's malloc; elsewhere no-ops).

glibc keeps memory that a program frees: in per-thread arenas, and in the middle of its heap,
below memory still in use. A replay allocates and frees arrays of whole epochs in its id scan,
then holds far less while it folds and writes; what glibc keeps of the scan's peak stays
resident until the process ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["limit_arenas", "release_free_memory"]


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


def release_free_memory() -> None:
    """Hand the memory that malloc holds free back to the system (``malloc_trim``): the id
    scan's arrays, once it is done, so that the rest of the replay does not add to their peak."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)
