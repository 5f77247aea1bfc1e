"""Shared by the benchmark scripts: the peak (and current) resident memory of this process.

``getrusage().ru_maxrss`` is the wrong figure for a child process on Linux: it survives
``execve``, so a fresh interpreter started by a parent that holds 300 MiB (torch, a written run)
reports at least 300 MiB whatever it does itself. ``VmHWM`` in ``/proc/self/status`` belongs to
the address space, which ``execve`` replaces: it is the process's own peak.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` figure (``VmHWM``, ``VmRSS``) in MiB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process since it started its program, in MiB."""
    peak = _status_mib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss, KiB on BSD
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux; elsewhere the peak)."""
    now = _status_mib("VmRSS")
    return peak_rss_mib() if now is None else now
