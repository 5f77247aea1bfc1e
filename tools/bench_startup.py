"""Benchmark: whole-process wall time of the CLI against importing its libraries, in one run.

Runs, interleaved so that machine noise hits all alike, ``--rounds`` times each:

- ``base``: ``python -c "import numpy, h5py, polars"`` (what any replay must load);
- ``version``, ``help``: ``aum-replay --version`` and ``aum-replay --help``;
- ``compute``: ``aum-replay compute RUN -o OUT`` on the demo's first run (made by
  ``aum-replay demo`` unless ``--run`` names one).

Prints one JSON line with the median and min wall seconds of each and the ratios of the medians
against ``base``. Goals (issue 9): compute <= 2.5x base, --version and --help <= 1.5x base.

    python tools/bench_startup.py [--rounds 7] [--run aum-demo/runs/set1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"version": 1.5, "help": 1.5, "compute": 2.5}


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--run", type=Path, help="run directory to replay (default: a new demo)")
    args = parser.parse_args()
    exe = shutil.which("aum-replay")
    if exe is None:
        sys.exit("aum-replay is not on PATH: pip install -e . first")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            subprocess.run([exe, "demo", f"{tmp}/demo", "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            run = Path(tmp) / "demo" / "runs" / "set1"
        commands = {
            "base": [sys.executable, "-c", "import numpy, h5py, polars"],
            "version": [exe, "--version"],
            "help": [exe, "--help"],
            "compute": [exe, "compute", str(run), "-o", f"{tmp}/out"],
        }
        for command in commands.values():  # warm the page cache and bytecode caches
            _wall(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(_wall(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: round(median[name] / median["base"], 2) for name in GOALS}
    print(
        json.dumps(
            {
                "bench": "startup",
                "rounds": args.rounds,
                "median_s": {k: round(v, 3) for k, v in median.items()},
                "min_s": {k: round(min(v), 3) for k, v in times.items()},
                "ratio_to_base": ratio,
                "goal_ratio": GOALS,
                "met": {name: ratio[name] <= goal for name, goal in GOALS.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
