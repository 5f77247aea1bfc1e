"""Detection benchmark: AUM with threshold samples vs cleanlab, with known label noise.

Settings (``NAME`` = dataset, recipe, noise kind and rate), each over several seeds:

- datasets: ``digits`` (scikit-learn's 1,797 8x8 digits, 10 classes), ``digits4`` (its classes
  0-3 only: few classes, threshold samples 20% of the data) and ``synth20`` (scikit-learn's
  ``make_classification``: 4,000 samples, 40 features, 20 classes); outside the grid, for checks
  of your own, ``synth8`` (3,000 samples, 20 features, 8 classes, 2 clusters per class);
- recipes: ``std`` (the demo's MLP: 64 hidden units, SGD lr 0.01, momentum 0.9, 30 epochs) and
  ``mem`` (a memorising one: 256 hidden units, lr 0.05, 60 epochs); outside the grid ``wide``
  (128 hidden units, lr 0.02, 40 epochs);
- noise: ``uniform`` (a flipped label becomes any other class), ``classflip`` (y -> y + 1 mod c)
  and ``pair`` (each class flips to one fixed other class, a seeded random derangement).

For each seed the script trains two threshold-sample runs (set 1 and set 2, recorded with
LogitLogger), then flags with each rule of :func:`aum_replay.flag` - ``paper`` (SPEC section 5:
99th percentile, all epochs), the default (rule ``f1``, epochs ``auto``), ``replication`` - and
an ``oracle`` cut: the lowest mean AUMs, as many as there are flips, on the default's epochs
(``oracle``) and on all epochs (``oracle_all_epochs``, the paper rule's ranking). On the same
noisy labels it runs cleanlab's ``find_label_issues`` on 5-fold cross-validated probabilities
from the same network and recipe.
Scores: precision, recall, F1 of the flagged set, AUROC of the ranking, the training compute of
each method (AUM: 2 runs; cleanlab: 5 fold trainings) and the flagging time.

One JSON line per setting (mean and std over the seeds)::

    python tools/eval_detection.py                                # the reported grid, seeds 0-4
    python tools/eval_detection.py --seeds 100-104                # the tuning seeds
    python tools/eval_detection.py --settings digits-std-uniform-0.2 --seeds 0
    python tools/eval_detection.py --dump DIR                     # also per-epoch margins (.npz)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from aum_replay import LogitLogger, ThresholdSampleDataset, flag
from aum_replay.dataset import DatasetWithIndex
from aum_replay.demo import DemoConfig, detection_scores, load_digits_data, make_mlp, train

RECIPES = {
    "std": DemoConfig(),
    "mem": DemoConfig(epochs=60, hidden=256, lr=0.05),
    "wide": DemoConfig(epochs=40, hidden=128, lr=0.02),  # not in the grid: for checks of your own
}

SETTINGS = [
    "digits-std-uniform-0.05",
    "digits-std-uniform-0.1",
    "digits-std-uniform-0.2",
    "digits-std-uniform-0.4",
    "digits-std-classflip-0.2",
    "digits-std-classflip-0.3",
    "digits-std-pair-0.2",
    "digits-mem-uniform-0.2",
    "digits-mem-pair-0.3",
    "digits4-std-uniform-0.2",
    "synth20-std-uniform-0.2",
    "synth20-std-pair-0.2",
]

RULES = ("paper", "replication", "default")

# scikit-learn make_classification arguments per synthetic dataset
SYNTHETIC: dict[str, dict[str, Any]] = {
    "synth20": {
        "n_samples": 4000, "n_features": 40, "n_informative": 30, "n_redundant": 0,
        "n_classes": 20, "n_clusters_per_class": 1, "class_sep": 2.0, "random_state": 0,
    },
    "synth8": {  # not in the grid: for checks of your own
        "n_samples": 3000, "n_features": 20, "n_informative": 15, "n_redundant": 2,
        "n_classes": 8, "n_clusters_per_class": 2, "class_sep": 2.5, "random_state": 1,
    },
}  # fmt: skip


def load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) float32, standardised, and labels (N,) int64."""
    if dataset == "digits":
        return load_digits_data()
    if dataset == "digits4":
        x, y = load_digits_data()
        keep = y < 4
        return x[keep], y[keep]
    if dataset in SYNTHETIC:
        from sklearn.datasets import make_classification

        x, y = make_classification(**SYNTHETIC[dataset])
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        return x.astype(np.float32), y.astype(np.int64)
    raise SystemExit(f"unknown dataset {dataset!r}")


def corrupt(y: np.ndarray, mode: str, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip round(noise * N) seeded labels; returns (noisy labels, flipped mask)."""
    c = int(y.max()) + 1
    rng = np.random.default_rng((seed, 7919))
    chosen = rng.choice(len(y), size=round(noise * len(y)), replace=False)
    noisy = y.copy()
    if mode == "uniform":
        noisy[chosen] = (y[chosen] + rng.integers(1, c, size=len(chosen))) % c
    elif mode == "classflip":
        noisy[chosen] = (y[chosen] + 1) % c
    elif mode == "pair":
        while True:  # a random derangement: each class to one fixed other class
            target = rng.permutation(c)
            if (target != np.arange(c)).all():
                break
        noisy[chosen] = target[y[chosen]]
    else:
        raise SystemExit(f"unknown noise mode {mode!r}")
    flipped = np.zeros(len(y), dtype=bool)
    flipped[chosen] = True
    return noisy, flipped


def parse_setting(name: str) -> tuple[str, DemoConfig, str, float]:
    dataset, recipe, mode, noise = name.split("-")
    return dataset, RECIPES[recipe], mode, float(noise)


def auroc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score))


def scores(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    precision, recall, f1 = detection_scores(flagged, truth)
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(flagged.sum())}


def eval_aum(
    x: np.ndarray, noisy: np.ndarray, flipped: np.ndarray, config: DemoConfig, seed: int,
    dump: Path | None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    c = int(noisy.max()) + 1
    base = TensorDataset(torch.from_numpy(x), torch.from_numpy(noisy))
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aum-eval-") as tmp:
        run_dirs = []
        started = time.perf_counter()
        for set_index in (1, 2):
            data = ThresholdSampleDataset(base, c, set_index=set_index, seed=seed)
            model = make_mlp(x.shape[1], c + 1, config.hidden, seed=seed * 10 + set_index)
            run_dir = Path(tmp) / f"set{set_index}"
            with LogitLogger(run_dir, threshold_samples=data) as logger:
                train(model, DatasetWithIndex(data), config, seed=seed * 10 + set_index,
                      logger=logger)  # fmt: skip
            run_dirs.append(run_dir)
        train_seconds = time.perf_counter() - started
        for rule in RULES:
            started = time.perf_counter()
            kwargs: dict[str, Any] = {} if rule == "default" else {"rule": rule}
            result = flag(run_dirs, **kwargs)
            seconds = time.perf_counter() - started
            details = result.details.sort("sample_id")
            ids = details["sample_id"].to_numpy()
            predicted = np.zeros(len(noisy), dtype=bool)
            predicted[np.asarray(result.flagged_ids, dtype=np.int64)] = True
            row = scores(predicted, flipped)
            row["auroc"] = auroc(flipped[ids], -details["aum_mean"].to_numpy())
            row["train_seconds"] = train_seconds
            row["flag_seconds"] = seconds
            row["epochs"] = [r.epochs_spec for r in result.runs]
            out[rule] = row
            if rule in ("paper", "default"):
                # the oracle cut: this ranking, as many flagged as there are flips
                order = np.argsort(details["aum_mean"].to_numpy(), kind="stable")
                oracle = np.zeros(len(noisy), dtype=bool)
                oracle[ids[order[: int(flipped.sum())]]] = True
                name = "oracle" if rule == "default" else "oracle_all_epochs"
                out[name] = scores(oracle, flipped) | {"auroc": row["auroc"]}
        if dump is not None:
            from aum_replay.auto_epochs import epoch_margins
            from aum_replay.run import open_run

            arrays: dict[str, np.ndarray] = {"flipped": flipped, "noisy": noisy}
            for k, run_dir in enumerate(run_dirs, start=1):
                run = open_run(run_dir)
                _epochs, ids, margins = epoch_margins(run)
                assert (ids == np.arange(len(noisy))).all()
                arrays[f"margins{k}"] = margins.astype(np.float32)
                thr = np.zeros(len(noisy), dtype=bool)
                thr[np.asarray(run.threshold["sample_ids"])] = True  # type: ignore[index]
                arrays[f"threshold{k}"] = thr
            np.savez_compressed(dump, **arrays)
    return out


def eval_cleanlab(
    x: np.ndarray, noisy: np.ndarray, flipped: np.ndarray, config: DemoConfig, seed: int
) -> dict[str, Any]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    c = int(noisy.max()) + 1
    started = time.perf_counter()
    pred_probs = np.zeros((len(noisy), c))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(folds.split(x, noisy)):
        data = DatasetWithIndex(
            TensorDataset(torch.from_numpy(x[fit]), torch.from_numpy(noisy[fit]))
        )
        model = make_mlp(x.shape[1], c, config.hidden, seed=seed * 10 + k)
        train(model, data, config, seed=seed * 10 + k)
        model.eval()
        with torch.no_grad():
            pred_probs[held] = torch.softmax(model(torch.from_numpy(x[held])), dim=1).numpy()
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    issues = find_label_issues(noisy, pred_probs)
    quality = get_label_quality_scores(noisy, pred_probs)
    row = scores(issues, flipped)
    row["auroc"] = auroc(flipped, -quality)
    row["train_seconds"] = train_seconds
    row["flag_seconds"] = time.perf_counter() - started
    return row


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)):
            values = [r[key] for r in rows]
            out[key] = {
                "mean": round(float(np.mean(values)), 4),
                "std": round(float(np.std(values)), 4),
            }
        else:
            out[key] = [r[key] for r in rows]
    return out


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 100-104,7 (default 0-4)")
    parser.add_argument(
        "--settings",
        default=None,
        help="comma-separated DATASET-RECIPE-NOISE-RATE (default: the grid in SETTINGS)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--no-cleanlab", action="store_true", help="skip cleanlab (faster)")
    parser.add_argument("--dump", type=Path, default=None, help="save per-epoch margins here")
    args = parser.parse_args(argv)
    settings = args.settings.split(",") if args.settings else SETTINGS
    seeds = _seeds(args.seeds)
    torch.set_num_threads(1)
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
    for name in settings:
        dataset, config, mode, noise = parse_setting(name)
        if args.epochs is not None:
            config = replace(config, epochs=args.epochs)
        x, y = load(dataset)
        rows: dict[str, list[dict[str, Any]]] = {}
        for seed in seeds:
            noisy, flipped = corrupt(y, mode, noise, seed)
            dump = None if args.dump is None else args.dump / f"{name}.seed{seed}.npz"
            for key, row in eval_aum(x, noisy, flipped, config, seed, dump).items():
                rows.setdefault(key, []).append(row)
            if not args.no_cleanlab:
                rows.setdefault("cleanlab", []).append(
                    eval_cleanlab(x, noisy, flipped, config, seed)
                )
        line = {
            "setting": name,
            "seeds": seeds,
            "num_samples": len(y),
            "config": {"epochs": config.epochs, "hidden": config.hidden, "lr": config.lr},
            **{key: _aggregate(value) for key, value in rows.items()},
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
