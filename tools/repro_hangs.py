"""Reproduce the known HDF5 hangs: shards with flipped bytes on which validation never returns.

``tests/data/known_hangs/`` holds two 16 KiB shards from a byte-flipping fuzzer (2026-11-26).
``read_info`` hangs on both inside HDF5's read of a variable-length string attribute, holding
the GIL; the code before the replay speed-up hung too. The CLI ends such a hang with a one-line
error after ``AUM_REPLAY_SHARD_TIMEOUT`` seconds (``tests/test_corrupt.py`` checks it), but the
library call still never returns. This script calls ``read_info`` on each file in a child
process with a timeout and prints one JSON line per file, so a fix in the library (a safer
attribute read, or a format without variable-length strings) can be checked.

Usage::

    python tools/repro_hangs.py [--timeout 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HANGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "known_hangs"
CHILD = """
import sys
from pathlib import Path
from aum_replay.errors import AumReplayError
from aum_replay.format import read_info
try:
    read_info(Path(sys.argv[1]))
    print("validated")
except AumReplayError as exc:
    print("FormatError:", exc)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    for path in sorted(HANGS.glob("*.h5")):
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)],
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
            outcome = (done.stdout or done.stderr).strip().splitlines()[-1:] or ["(no output)"]
            result = {"file": path.name, "hangs": False, "outcome": outcome[0][:200]}
        except subprocess.TimeoutExpired:
            result = {"file": path.name, "hangs": True, "outcome": f"no answer in {args.timeout} s"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
