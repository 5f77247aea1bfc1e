"""One replay in a fresh process, as the console script runs it: no torch (the CLI never imports
it), one malloc arena (``cli.limit_malloc_arenas``), the numpy kernels. Prints one JSON line:
the second call's seconds, its rows, the process's peak RSS and what the replays added to it.

Usage (by ``bench_replay.py --format-v2``)::

    python tools/replay_child.py RUN_DIR VERIFY(0|1) [FULL(0|1)]
"""

from __future__ import annotations

import json
import sys
import time

from measure import peak_rss_mib, rss_mib


def main(run_dir: str, verify: bool, full: bool) -> None:
    from aum_replay.cli import limit_malloc_arenas

    limit_malloc_arenas()  # before polars' threads start, as in the console script
    from aum_replay import compute, format, kernels

    kernels.USE_LOADED_TORCH = False  # the CLI's kernels (torch is not imported here anyway)
    format.VERIFY = verify
    base = rss_mib() * 1024  # before any replay: the interpreter and its imports
    compute(run_dir, None, full=full)  # warm-up: the page cache, numpy's first calls
    started = time.perf_counter()
    result = compute(run_dir, None, full=full)
    seconds = time.perf_counter() - started
    rss = peak_rss_mib() * 1024  # VmHWM: this process's own peak (see measure.py)
    record = {"seconds": seconds, "rows": result.num_measurements, "rss_kib": rss}
    record["replay_kib"] = rss - base  # what the replay itself added at its peak
    assert "torch" not in sys.modules
    print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1", len(sys.argv) > 3 and sys.argv[3] == "1")
