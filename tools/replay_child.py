"""One replay in a fresh process, as the console script runs it: no torch (the CLI never imports
it), one malloc arena (``allocator.limit_arenas``), the numpy kernels. Prints one JSON line:
the timed call's seconds, its rows, the process's peak RSS after one replay and what that
replay added to it.

``library``: ``aum_replay.compute(run, None)`` twice (no output written), the second timed.
``cli``: the console script's ``compute RUN -o OUT --values-only --quiet`` once, as a user runs
it (``aum_values.csv`` written, into a temporary directory).

Usage (by ``bench_replay.py --format-v2``)::

    python tools/replay_child.py RUN_DIR VERIFY(0|1) [library|cli]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from measure import peak_rss_mib, rss_mib


def main(run_dir: str, verify: bool, mode: str) -> None:
    from aum_replay.allocator import limit_arenas

    limit_arenas()  # before polars' threads start, as in the console script
    from aum_replay import compute, format, kernels
    from aum_replay.cli import app

    kernels.USE_LOADED_TORCH = False  # the CLI's kernels (torch is not imported here anyway)
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
    main(sys.argv[1], sys.argv[2] == "1", sys.argv[3] if len(sys.argv) > 3 else "library")
