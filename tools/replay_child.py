"""One replay in a fresh process, as the console script runs it: no torch (the CLI never imports
it), the console script's malloc settings (``allocator.tune_allocator``), the numpy kernels.
Prints one JSON line:
the timed call's seconds, its rows, the process's peak RSS after one replay and what that
replay added to it.

``library``: ``aum_replay.compute(run, None)`` twice (no output written), the second timed.
``cli``: the console script's ``compute RUN -o OUT --values-only --quiet`` once, as a user runs
it (``aum_values.csv`` written, into a temporary directory).

``pairs``: two library replays, A and B, alternated ``N`` times in this one process (after one
warm-up of each); prints the median seconds of each and the median of the paired differences
and ratios. On a shared machine whose load drifts between fresh processes, pairs taken moments
apart are what tells a 5% cost from noise (verification on and off, summary against full).

Usage (by ``bench_replay.py --format-v2``)::

    python tools/replay_child.py RUN_DIR VERIFY(0|1) [library|cli]
    python tools/replay_child.py pairs N RUN_A VERIFY_A RUN_B VERIFY_B
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import peak_rss_mib, rss_mib


def _as_console_script() -> tuple[Any, Any]:
    """This process set up as the console script runs: its malloc settings, before polars'
    threads start, and the numpy kernels (torch is not imported here anyway). Returns
    ``aum_replay.compute`` and ``aum_replay.format``."""
    from aum_replay.allocator import tune_allocator

    tune_allocator()
    from aum_replay import compute, format, kernels

    kernels.USE_LOADED_TORCH = False
    return compute, format


def pairs(count: int, a: tuple[str, bool], b: tuple[str, bool]) -> None:
    """A and B alternated ``count`` times; one JSON line of medians (see the module docstring)."""
    from statistics import median

    compute, format = _as_console_script()

    def once(run_dir: str, verify: bool) -> float:
        format.VERIFY = verify
        started = time.perf_counter()
        compute(run_dir, None, full=False)
        return time.perf_counter() - started

    once(*a), once(*b)  # warm-up: imports, page cache
    times: list[tuple[float, float]] = []
    for _ in range(count):
        times.append((once(*a), once(*b)))
    record = {
        "seconds_a": median(t for t, _ in times),
        "seconds_b": median(t for _, t in times),
        "difference": median(t - u for t, u in times),  # a - b
        "ratio": median(t / u for t, u in times),  # a / b
        "pairs": count,
    }
    print(json.dumps(record))


def main(run_dir: str, verify: bool, mode: str) -> None:
    compute, format = _as_console_script()
    from aum_replay.cli import app

    format.VERIFY = verify
    rows: int | None = None  # the console script does not hand back its result

    def once(out: Path) -> None:
        nonlocal rows
        if mode == "library":
            rows = compute(run_dir, None, full=False).num_measurements
            return
        args = ["compute", run_dir, "-o", str(out), "--values-only", "--quiet"]
        try:
            app(args, prog_name="aum-replay")
        except SystemExit as done:
            if done.code:
                raise

    with tempfile.TemporaryDirectory(prefix="aum-replay-child-") as tmp:
        base = rss_mib() * 1024  # before any replay: the interpreter and its imports
        if mode == "library":  # a warm-up call; the console script runs once, as a user's
            once(Path(tmp) / "warm-up")
        # VmHWM (this process's own peak, see measure.py) after one replay: what a replay adds
        # to a fresh process. A second call can add more on top (allocators keep what the first
        # one freed, and polars has an allocator of its own); the timing is the second call's.
        rss = peak_rss_mib() * 1024
        started = time.perf_counter()
        once(Path(tmp) / "out")
        seconds = time.perf_counter() - started
        if mode == "cli":
            rss = peak_rss_mib() * 1024
    record = {"seconds": seconds, "rows": rows, "rss_kib": rss, "replay_kib": rss - base}
    assert "torch" not in sys.modules
    print(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1] == "pairs":
        first, second = (sys.argv[3], sys.argv[4] == "1"), (sys.argv[5], sys.argv[6] == "1")
        pairs(int(sys.argv[2]), first, second)
    else:
        main(sys.argv[1], sys.argv[2] == "1", sys.argv[3] if len(sys.argv) > 3 else "library")
