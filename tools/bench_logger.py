"""Benchmark: what LogitLogger costs a training loop. Prints one JSON line.

One training loop - an MLP 512-1024-1024-100, batch 256, SGD, synthetic data - is timed with and
without ``logger.log(...)`` in the same process, in alternating blocks of steps (after a warm-up
of both), so drift and noisy neighbours hit both sides alike. The figure that matters is the ratio
of median step times (goal: <= 1.03); a real model's step is far longer than this one, so its
relative overhead is far smaller.

Extra memory is reported two ways: ``buffer_bytes``, the host buffers the logger may hold at once
(``(max_pending + 1)`` chunk-sized logits buffers plus their targets and ids), and
``rss_peak_growth_bytes``, how much the process's peak resident set (VmHWM) grew once the logger
ran, against the peak of the same loop without it (tracemalloc cannot see torch's allocations).

Usage::

    python tools/bench_logger.py [--threads 1] [--rounds 10] [--steps 20] [--steps-per-epoch 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aum_replay import LogitLogger, __version__

IN, HIDDEN, CLASSES, BATCH = 512, 1024, 100, 256
MAX_PENDING = 4  # the logger's default


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM), or -1 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=20, help="steps per block, each way")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps, each way")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=100, help="logged steps per epoch (publishes)"
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pool = [(torch.randn(BATCH, IN), torch.randint(0, CLASSES, (BATCH,))) for _ in range(16)]

    def step(i: int, logger: LogitLogger | None) -> tuple[float, float]:
        inputs, targets = pool[i % len(pool)]
        start = time.perf_counter()
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log_s = 0.0
        if logger is not None:
            t = time.perf_counter()
            first = (i % args.steps_per_epoch) * BATCH
            ids = torch.arange(first, first + BATCH)
            logger.log(logits, targets, ids, epoch=i // args.steps_per_epoch)
            log_s = time.perf_counter() - t
        return time.perf_counter() - start, log_s

    with tempfile.TemporaryDirectory(prefix="bench-logger-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        for i in range(args.warmup):
            step(i, None)
        peak_without = peak_rss()
        logger = LogitLogger(run_dir, max_pending=MAX_PENDING)
        logged = 0
        for _ in range(args.warmup):
            step(logged, logger)
            logged += 1

        without: list[float] = []
        with_logger: list[float] = []
        log_calls: list[float] = []
        plain = 0
        for r in range(args.rounds):
            for side in ("without", "with") if r % 2 == 0 else ("with", "without"):
                for _ in range(args.steps):
                    if side == "with":
                        seconds, log_s = step(logged, logger)
                        logged += 1
                        with_logger.append(seconds)
                        log_calls.append(log_s)
                    else:
                        without.append(step(plain, None)[0])
                        plain += 1
        logger.close()
        peak_with = peak_rss()
        shard_bytes = sum(p.stat().st_size for p in Path(run_dir).glob("*.h5"))
        shards = len(list(Path(run_dir).glob("*.h5")))

    # The logger sizes a chunk of rows (float32 logits, int64 target, int64 id) from chunk_bytes
    # and holds at most max_pending + 1 of them: the one being filled and those queued.
    chunk_rows = logger.chunk_bytes // (CLASSES * 4 + 8 + 8)
    buffer_bytes = (MAX_PENDING + 1) * chunk_rows * (CLASSES * 4 + 8 + 8)
    med_without = statistics.median(without)
    med_with = statistics.median(with_logger)
    print(
        json.dumps(
            {
                "bench": "logger",
                "aum_replay": __version__,
                "torch": torch.__version__,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "model": f"MLP {IN}-{HIDDEN}-{HIDDEN}-{CLASSES}, batch {BATCH}, SGD",
                "step_ms_without": round(med_without * 1e3, 3),
                "step_ms_with": round(med_with * 1e3, 3),
                "ratio": round(med_with / med_without, 4),
                "goal_ratio": 1.03,
                "log_call_ms_median": round(statistics.median(log_calls) * 1e3, 3),
                "rounds": args.rounds,
                "steps_per_block": args.steps,
                "steps_timed_each_way": len(without),
                "steps_logged": logged,
                "epochs": shards,
                "shard_bytes": shard_bytes,
                "buffer_bytes": buffer_bytes,
                "rss_peak_growth_bytes": peak_with - peak_without if peak_without >= 0 else None,
                "memory_method": "buffer_bytes = (max_pending+1) x chunk rows x row bytes; "
                "rss_peak_growth_bytes = VmHWM after the logged steps - VmHWM before the logger",
            }
        )
    )


if __name__ == "__main__":
    main()
