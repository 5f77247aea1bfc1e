"""Shared by the benchmark scripts: the peak (and current) resident memory of this process.

``getrusage().ru_maxrss`` is the wrong figure for a child process on Linux: it survives
``execve``, so a fresh interpreter started by a parent that holds 300 MiB (torch, a written run)
reports at least 300 MiB whatever it does itself. ``VmHWM`` in ``/proc/self/status`` belongs to
the address space, which ``execve`` replaces: it is the process's own peak.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident set size of this process since it started its program, in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on BSD


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux; else the peak)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    return peak_rss_mib()
