"""Flip single bytes of a shard and replay: how many flips end clearly? Prints one JSON line.

For each id kind (int, string), a small run of 2 epochs is written in the chosen format version
and replayed once clean. Then, ``--flips`` times, one random byte anywhere in one shard (a
random offset over the whole file, XOR a random non-zero mask) is flipped in a fresh copy and
``aum-replay compute`` runs in a subprocess. Each outcome lands in one column:

``identical``    exit 0 and both CSV files byte-identical to the clean run's (a byte the replay
                 never uses)
``clear_error``  exit 1 with one line on stderr, ``aum-replay: error: ...`` naming the shard
``different``    exit 0 and a different result: a silently wrong answer
``hang``         no answer within ``--timeout`` seconds
``crash``        anything else (a traceback, a signal, a line that does not name the shard)

Goal for format v2: 0 in ``different``, ``hang`` and ``crash`` (issue 13); format v1 is the
baseline (``--version 1``).

Usage::

    python tools/flips.py [--version 2] [--flips 200] [--seed 0] [--timeout 60] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CLI = [
    sys.executable,
    "-c",
    "import sys; from aum_replay.cli import main; sys.argv[0] = 'x'; main()",
]
COLUMNS = ("identical", "clear_error", "different", "hang", "crash")
OUTPUTS = ("aum_values.csv", "full_aum_records.csv")


def write_run(run_dir: Path, kind: str, version: int) -> None:
    import torch

    from aum_replay import LogitLogger

    rng = np.random.default_rng(0)
    with LogitLogger(run_dir, chunk_bytes=2048, format_version=version) as logger:
        for epoch in range(2):
            order = rng.permutation(200)
            for start in range(0, 200, 40):
                part = order[start : start + 40]
                logits = torch.from_numpy(rng.standard_normal((len(part), 5), dtype=np.float32))
                ids = part if kind == "int" else [f"img_{i:05d}.jpg" for i in part]
                logger.log(logits, part % 5, ids, epoch=epoch)


def replay(run_dir: Path, out: Path, timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, "AUM_REPLAY_SHARD_TIMEOUT": str(timeout)}
    try:
        done = subprocess.run(
            [*CLI, "compute", str(run_dir), "-o", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=timeout * 2,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stderr


def judge(rc: int | None, err: str, out: Path, clean: dict[str, bytes], shard: Path) -> str:
    if rc is None:
        return "hang"
    lines = err.splitlines()
    if rc == 1 and len(lines) == 1 and lines[0].startswith("aum-replay: error: "):
        return "clear_error" if shard.name in lines[0] else "crash"
    if rc == 0 and not err.strip():
        got = {name: (out / name).read_bytes() for name in OUTPUTS}
        return "identical" if got == clean else "different"
    if rc == 0 and "Traceback" not in err:  # a warning on stderr; judge the result
        got = {name: (out / name).read_bytes() for name in OUTPUTS}
        return "identical" if got == clean else "different"
    return "crash"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=2)
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    report: dict[str, object] = {"bench": "flips", "version": args.version, "flips": args.flips}
    tmp = Path(tempfile.mkdtemp(prefix="aum-replay-flips-"))
    try:
        for kind in ("int", "str"):
            base = tmp / kind / "run"
            write_run(base, kind, args.version)
            rc, err = replay(base, tmp / kind / "clean", args.timeout)
            assert rc == 0, err
            clean = {name: (tmp / kind / "clean" / name).read_bytes() for name in OUTPUTS}
            shards = sorted(base.glob("epoch_*.h5"))
            trials = []
            for k in range(args.flips):
                shard = shards[int(rng.integers(len(shards)))]
                offset = int(rng.integers(shard.stat().st_size))
                trials.append((k, shard.name, offset, int(rng.integers(1, 256))))

            def trial(
                spec: tuple[int, str, int, int], kind: str = kind, clean: dict[str, bytes] = clean
            ) -> tuple[str, str]:
                k, name, offset, mask = spec
                run = tmp / kind / f"t{k}"
                shutil.copytree(tmp / kind / "run", run)
                data = bytearray((run / name).read_bytes())
                data[offset] ^= mask
                (run / name).write_bytes(bytes(data))
                out = tmp / kind / f"o{k}"
                rc, err = replay(run, out, args.timeout)
                verdict = judge(rc, err, out, clean, run / name)
                shutil.rmtree(run, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                return verdict, f"{name}@{offset}^{mask}: {err.strip()[:160]}"

            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                results = list(pool.map(trial, trials))
            tally = {column: 0 for column in COLUMNS}
            examples: dict[str, str] = {}
            for verdict, note in results:
                tally[verdict] += 1
                examples.setdefault(verdict, note)
            report[f"{kind}_ids"] = {
                **tally,
                "shard_bytes": shards[0].stat().st_size,
                "examples": {k: v for k, v in examples.items() if k != "identical"},
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = sum(report[f"{k}_ids"][c] for k in ("int", "str") for c in COLUMNS[2:])  # type: ignore[index]
    report["goal_met"] = bad == 0
    print(json.dumps(report))


if __name__ == "__main__":
    main()
