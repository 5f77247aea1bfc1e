"""Detection benchmark: AUM with threshold samples vs cleanlab, on digits with known label noise.

For each noise setting (uniform 10/20/40%, class-flip y -> (y + 1) mod c at 20/30%) and each seed,
runs the demo's pipeline (:func:`aum_replay.demo.run_demo`: two threshold-sample runs recorded with
LogitLogger, compute, flag) and, on the same noisy labels, cleanlab's ``find_label_issues`` with
5-fold cross-validated predicted probabilities from the same network and training settings.
Scores are precision, recall and F1 of the flagged set and AUROC of the ranking (low AUM, low
cleanlab label quality = suspicious) against the known flips, plus the wall time of each method.

Prints one JSON line per setting, mean and std over the seeds::

    python tools/eval_detection.py                 # the full grid, ~5-10 minutes on 2 cores
    python tools/eval_detection.py --seeds 1 --settings uniform:0.2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from aum_replay.dataset import DatasetWithIndex
from aum_replay.demo import (
    NUM_CLASSES,
    DemoConfig,
    corrupt_labels,
    detection_scores,
    load_digits_data,
    make_mlp,
    run_demo,
    train,
)

SETTINGS = [
    ("uniform", 0.1),
    ("uniform", 0.2),
    ("uniform", 0.4),
    ("classflip", 0.2),
    ("classflip", 0.3),
]


def eval_aum(seed: int, noise: float, mode: Any, config: DemoConfig) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    with tempfile.TemporaryDirectory(prefix="aum-eval-") as tmp:
        started = time.perf_counter()
        result = run_demo(Path(tmp), seed=seed, noise=noise, mode=mode, config=config)
        seconds = time.perf_counter() - started
    _, flipped = corrupt_labels(load_digits_data()[1], noise, mode=mode, seed=seed)
    details = result.flags.details.sort("sample_id")
    score = -details["aum_mean"].to_numpy()
    return {
        "precision": result.precision,
        "recall": result.recall,
        "f1": result.f1,
        "auroc": float(roc_auc_score(flipped[details["sample_id"].to_numpy()], score)),
        "flagged": result.num_flagged,
        "seconds": seconds,
    }


def eval_cleanlab(seed: int, noise: float, mode: Any, config: DemoConfig) -> dict[str, float]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    x, y = load_digits_data()
    noisy, flipped = corrupt_labels(y, noise, mode=mode, seed=seed)
    started = time.perf_counter()
    pred_probs = np.zeros((len(y), NUM_CLASSES))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(folds.split(x, noisy)):
        data = DatasetWithIndex(
            TensorDataset(torch.from_numpy(x[fit]), torch.from_numpy(noisy[fit]))
        )
        model = make_mlp(x.shape[1], NUM_CLASSES, config.hidden, seed=seed * 10 + k)
        train(model, data, config, seed=seed * 10 + k)
        model.eval()
        with torch.no_grad():
            pred_probs[held] = torch.softmax(model(torch.from_numpy(x[held])), dim=1).numpy()
    issues = find_label_issues(noisy, pred_probs)
    quality = get_label_quality_scores(noisy, pred_probs)
    seconds = time.perf_counter() - started
    precision, recall, f1 = detection_scores(issues, flipped)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": float(roc_auc_score(flipped, -quality)),
        "flagged": int(issues.sum()),
        "seconds": seconds,
    }


def _aggregate(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        key: {
            "mean": round(float(np.mean([r[key] for r in rows])), 4),
            "std": round(float(np.std([r[key] for r in rows])), 4),
        }
        for key in rows[0]
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    parser.add_argument(
        "--settings",
        default=None,
        help="comma-separated MODE:NOISE, e.g. uniform:0.2,classflip:0.3 (default: the full grid)",
    )
    parser.add_argument("--epochs", type=int, default=DemoConfig.epochs, help="training epochs")
    parser.add_argument("--lr", type=float, default=DemoConfig.lr, help="SGD learning rate")
    parser.add_argument("--hidden", type=int, default=DemoConfig.hidden, help="hidden units")
    parser.add_argument("--count", default=None, help="epochs that count towards AUM")
    args = parser.parse_args(argv)
    settings = SETTINGS
    if args.settings:
        settings = [(m, float(n)) for m, n in (s.split(":") for s in args.settings.split(","))]
    config = DemoConfig(epochs=args.epochs, lr=args.lr, hidden=args.hidden, count=args.count)
    torch.set_num_threads(1)
    for mode, noise in settings:
        aum_rows, cl_rows = [], []
        for seed in range(args.seeds):
            aum_rows.append(eval_aum(seed, noise, mode, config))
            cl_rows.append(eval_cleanlab(seed, noise, mode, config))
        line = {
            "noise_mode": mode,
            "noise": noise,
            "seeds": args.seeds,
            "config": {k: v for k, v in vars(config).items() if v is not None},
            "aum": _aggregate(aum_rows),
            "cleanlab": _aggregate(cl_rows),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
