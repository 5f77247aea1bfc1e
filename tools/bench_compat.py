"""Benchmark: AUMCalculator.update against the original aum 1.0.2, in one run.

Feeds the same batches (batch 256, C=100 by default, float32 logits) to both calculators: the
reference gets a Python list of ids (it mishandles tensor ids), aum-replay both a LongTensor and
the same list (``ids.tolist()``, what the seed's own examples pass). Rounds alternate so that
machine noise hits every setup alike; it prints one JSON line: sample-epochs per second of each
(compressed, and compressed=False with finalize included) and the ratios (medians). Goal: update
throughput >= 10x the reference, with tensor ids and with list ids.

    python tools/bench_compat.py [--samples 20000] [--classes 100] [--batch 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _batches(samples: int, classes: int, batch: int, seed: int) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(samples, generator=gen)
    out = []
    for start in range(0, samples, batch):
        ids = perm[start : start + batch]
        logits = torch.randn(len(ids), classes, generator=gen)
        targets = torch.randint(0, classes, (len(ids),), generator=gen)
        out.append((logits, targets, ids, ids.tolist()))
    return out


def _time(make, batches, *, tensor_ids: bool, epochs: int, finalize_dir: Path | None) -> float:
    calc = make()
    start = time.perf_counter()
    for _ in range(epochs):
        for logits, targets, ids, id_list in batches:
            calc.update(logits, targets, ids if tensor_ids else id_list)
    if finalize_dir is not None:
        calc.finalize(str(finalize_dir))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import aum

    import aum_replay

    batches = _batches(args.samples, args.classes, args.batch, seed=0)
    se = args.samples * args.epochs
    # name -> (calculator class, compressed, ids as a tensor); the seed needs a list of ints.
    setups = {
        "ref": (aum.AUMCalculator, True, False),
        "ours": (aum_replay.AUMCalculator, True, True),
        "ours_list": (
            aum_replay.AUMCalculator,
            True,
            False,
        ),  # ids.tolist(), as the seed's examples
        "ref_full": (aum.AUMCalculator, False, False),
        "ours_full": (aum_replay.AUMCalculator, False, True),
    }
    times: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # alternate, so that machine noise hits every setup alike
            for name, (calculator, compressed, tensor_ids) in setups.items():
                seconds = _time(
                    lambda calculator=calculator, compressed=compressed: calculator(
                        tmp, compressed=compressed
                    ),
                    batches,
                    tensor_ids=tensor_ids,
                    epochs=args.epochs,
                    finalize_dir=None if compressed else Path(tmp) / name,
                )
                times[name].append(seconds)
    rate = {k: se / statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "compat_update",
                "samples": args.samples,
                "classes": args.classes,
                "batch": args.batch,
                "epochs_per_round": args.epochs,
                "rounds": args.rounds,
                "threads": args.threads,
                "ref_se_per_s": round(rate["ref"]),
                "ours_se_per_s": round(rate["ours"]),
                "ratio_update": round(rate["ours"] / rate["ref"], 2),
                "ours_list_ids_se_per_s": round(rate["ours_list"]),
                "ratio_update_list_ids": round(rate["ours_list"] / rate["ref"], 2),
                "ref_full_se_per_s_incl_finalize": round(rate["ref_full"]),
                "ours_full_se_per_s_incl_finalize": round(rate["ours_full"]),
                "ratio_full": round(rate["ours_full"] / rate["ref_full"], 2),
                "goal_ratio_update": 10,
            }
        )
    )


if __name__ == "__main__":
    main()
