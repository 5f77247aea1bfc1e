"""The end-to-end demo: find flipped labels in scikit-learn's digits with threshold samples.

:func:`run_demo` flips a seeded 20% of the digits labels (1,797 8x8 images, 10 classes), trains a
small MLP twice - with threshold set 1 and with threshold set 2 - recording the logits of every
training step with :class:`aum_replay.LogitLogger`, then replays the AUM with
:func:`aum_replay.compute`, flags with :func:`aum_replay.flag`, draws with :func:`aum_replay.plot`
and scores the flags against the flips it made. The building blocks (data, noise, model, training)
are public so that ``tools/eval_detection.py`` measures exactly this pipeline.

Why these settings: AUM separates mislabeled samples only while the network fits the clean ones
and has not yet memorised the noise. A 64-unit MLP with SGD at learning rate 0.01 for 30 epochs
stays in that regime on digits; a wider net or a 5x larger rate memorises the noise, the threshold
samples' AUMs rise and alpha with them, and precision falls.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from aum_replay.csvout import AtomicCsv
from aum_replay.dataset import DatasetWithIndex
from aum_replay.errors import InputError
from aum_replay.flag import FlagResult, flag
from aum_replay.format import list_shards
from aum_replay.logger import LogitLogger
from aum_replay.outputs import OutputSet, describe_os_error
from aum_replay.plots import plot
from aum_replay.replay import compute
from aum_replay.threshold_data import ThresholdSampleDataset

__all__ = [
    "NUM_CLASSES",
    "DemoConfig",
    "DemoResult",
    "corrupt_labels",
    "detection_scores",
    "load_digits_data",
    "make_mlp",
    "run_demo",
    "train",
]

NUM_CLASSES = 10
NoiseMode = Literal["uniform", "classflip"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoConfig:
    """Training settings of the demo network (defaults tuned on digits; see the module doc).

    Attributes
    ----------
    epochs
        Training epochs per run (default 30).
    hidden
        Width of the MLP's one hidden layer (default 64).
    lr, momentum, weight_decay
        SGD settings (0.01, 0.9, 5e-4).
    batch_size
        Default 64.
    count
        Epoch selection that counts towards AUM (see :mod:`aum_replay.epochs`); default all.
    """

    epochs: int = 30
    hidden: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    count: str | None = None


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and wrote.

    Attributes
    ----------
    precision, recall, f1
        Of the flagged set against the flipped labels.
    num_samples, num_flipped, num_flagged, true_positives
        Counts behind the scores.
    run_dirs
        The two recorded runs (threshold set 1 and set 2).
    aum_dirs
        ``aum_values.csv`` and ``full_aum_records.csv`` of each run.
    flag_dir
        ``mislabeled.csv``, ``aum_details.csv`` and ``flag_summary.json``.
    plot_paths
        The PNG files (of run 1, with the combined flags).
    labels_path
        ``labels.csv``: each sample's given (noisy) label, true label and whether it was flipped.
    """

    precision: float
    recall: float
    f1: float
    num_samples: int
    num_flipped: int
    num_flagged: int
    true_positives: int
    out_dir: Path
    run_dirs: list[Path]
    aum_dirs: list[Path]
    flag_dir: Path
    plot_paths: list[Path]
    labels_path: Path
    seconds: float
    config: DemoConfig
    flags: FlagResult = field(repr=False)


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, standardised per pixel.

    Returns
    -------
    X : numpy.ndarray
        Shape (1797, 64), float32, zero mean and unit variance per feature (constant pixels 0).
    y : numpy.ndarray
        Shape (1797,), int64 labels in ``[0, 10)``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the installation
        raise InputError("the demo needs scikit-learn: pip install 'aum-replay[demo]'") from None
    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return x.astype(np.float32), np.asarray(data.target, dtype=np.int64)


def corrupt_labels(
    labels: np.ndarray,
    noise: float,
    *,
    num_classes: int = NUM_CLASSES,
    mode: NoiseMode = "uniform",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(noise * N)`` labels chosen uniformly at random (seeded).

    Parameters
    ----------
    labels
        True labels, shape (N,).
    noise
        Fraction of labels to flip, in ``[0, 1]``.
    mode
        ``"uniform"``: a flipped label becomes one of the other c - 1 classes, uniformly;
        ``"classflip"``: ``y -> (y + 1) mod c``.
    seed
        Seed of the choice.

    Returns
    -------
    noisy : numpy.ndarray
        Shape (N,), int64: the labels to train on.
    flipped : numpy.ndarray
        Shape (N,), bool: which labels were changed (every flip changes the label).
    """
    if not 0.0 <= noise <= 1.0:
        raise InputError(f"noise must be in [0, 1], not {noise}")
    if mode not in ("uniform", "classflip"):
        raise InputError(f"noise mode must be 'uniform' or 'classflip', not {mode!r}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng((seed, 7919))
    chosen = rng.choice(len(labels), size=round(noise * len(labels)), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen)) if mode == "uniform" else 1
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[chosen] = True
    return noisy, flipped


def make_mlp(num_inputs: int, num_outputs: int, hidden: int, *, seed: int) -> torch.nn.Module:
    """A one-hidden-layer ReLU MLP (num_inputs -> hidden -> num_outputs), seeded initialisation."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return torch.nn.Sequential(
            torch.nn.Linear(num_inputs, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, num_outputs),
        )
    finally:
        torch.random.set_rng_state(generator_state)


def train(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    config: DemoConfig,
    *,
    seed: int,
    logger: LogitLogger | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> torch.nn.Module:
    """Train ``model`` with SGD on items ``(x, y, sample_id)``, logging every step's logits.

    Parameters
    ----------
    model
        Maps (B, F) to logits (B, C).
    dataset
        Map-style dataset of ``(x, y, sample_id)`` (e.g. ``DatasetWithIndex`` of a labelled set).
    config
        Epochs, learning rate, batch size, ...
    seed
        Seed of the batch order.
    logger
        If given, ``logger.log(logits, y, sample_id, epoch=e)`` after each forward pass and
        ``logger.end_epoch()`` after each epoch.
    on_epoch
        Called with the number of finished epochs.
    """
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimiser = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    model.train()
    for epoch in range(config.epochs):
        for inputs, targets, sample_ids in loader:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if logger is not None:
                logger.log(logits, targets, sample_ids, epoch=epoch)
        if logger is not None:
            logger.end_epoch()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model


def detection_scores(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of boolean ``flagged`` (N,) against boolean ``truth`` (N,).

    Precision is 0 when nothing is flagged; recall is 0 when nothing is true.
    """
    flagged = np.asarray(flagged, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = int((flagged & truth).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else 0.0
    recall = tp / int(truth.sum()) if truth.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _epoch_done(report: Progress, stage: str, total: int, done: int) -> None:
    report(stage, done, total)


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    noise: float = 0.2,
    mode: NoiseMode = "uniform",
    config: DemoConfig | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Record, replay, flag and plot on digits with known label noise; score the flags.

    Parameters
    ----------
    out_dir
        Created if missing. The demo writes ``runs/set1``, ``runs/set2``, ``aum/set1``,
        ``aum/set2``, ``flags/``, ``plots/`` and ``labels.csv`` under it; running it again into
        the same directory replaces those.
    seed
        Seeds the label noise, the threshold sets, the initialisation and the batch order.
    noise
        Fraction of labels flipped (default 0.2).
    mode
        ``"uniform"`` (default) or ``"classflip"``, see :func:`corrupt_labels`.
    config
        Training settings; default :class:`DemoConfig()`.
    progress
        Called as ``progress(stage, done, total)``; stages ``"train set 1"``, ``"train set 2"``
        (in epochs), ``"compute"``, ``"flag"`` and ``"plot"``.

    Returns
    -------
    DemoResult
    """
    started = time.perf_counter()
    config = config or DemoConfig()
    if config.epochs < 1:
        raise InputError(f"epochs must be at least 1, not {config.epochs}")
    report: Progress = progress or (lambda stage, done, total: None)
    root = Path(out_dir).expanduser()
    _check_paths(root)
    x, y = load_digits_data()
    noisy, flipped = corrupt_labels(y, noise, mode=mode, seed=seed)
    base = TensorDataset(torch.from_numpy(x), torch.from_numpy(noisy))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and polite on shared cores
    run_dirs: list[Path] = []
    try:
        for set_index in (1, 2):
            stage = f"train set {set_index}"
            run_dir = root / "runs" / f"set{set_index}"
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"{run_dir}: cannot create ({describe_os_error(exc)})") from None
            for _, _, stale in list_shards(run_dir):
                assert isinstance(stale, Path)
                stale.unlink()  # a previous demo's shards: this run replaces them
            data = ThresholdSampleDataset(base, NUM_CLASSES, set_index=set_index, seed=seed)
            model = make_mlp(x.shape[1], NUM_CLASSES + 1, config.hidden, seed=seed * 10 + set_index)
            report(stage, 0, config.epochs)
            with LogitLogger(
                run_dir,
                threshold_samples=data,
                metadata={"demo": "digits", "noise": noise, "mode": mode, "seed": seed},
            ) as logger:
                train(
                    model,
                    DatasetWithIndex(data),
                    config,
                    seed=seed * 10 + set_index,
                    logger=logger,
                    on_epoch=functools.partial(_epoch_done, report, stage, config.epochs),
                )
            run_dirs.append(run_dir)
        aum_dirs = []
        for i, run_dir in enumerate(run_dirs):
            report("compute", i, len(run_dirs))
            aum_dir = root / "aum" / run_dir.name
            compute(run_dir, aum_dir, epochs=config.count)
            aum_dirs.append(aum_dir)
        report("compute", len(run_dirs), len(run_dirs))
        report("flag", 0, 1)
        flags = flag(run_dirs, root / "flags", epochs=config.count)
        report("flag", 1, 1)
        report("plot", 0, 1)
        plot_paths = plot(run_dirs[0], root / "plots", flags=flags, epochs=config.count)
        report("plot", 1, 1)
    finally:
        torch.set_num_threads(old_threads)

    labels_path = root / "labels.csv"
    with AtomicCsv(labels_path, ("sample_id", "label", "true_label", "flipped")) as csv:
        csv.write(
            {
                "sample_id": np.arange(len(y)),
                "label": noisy,
                "true_label": y,
                "flipped": flipped,
            }
        )
    predicted = np.zeros(len(y), dtype=bool)
    predicted[np.asarray(flags.flagged_ids, dtype=np.int64)] = True
    precision, recall, f1 = detection_scores(predicted, flipped)
    return DemoResult(
        precision=precision,
        recall=recall,
        f1=f1,
        num_samples=len(y),
        num_flipped=int(flipped.sum()),
        num_flagged=int(predicted.sum()),
        true_positives=int((predicted & flipped).sum()),
        out_dir=root,
        run_dirs=run_dirs,
        aum_dirs=aum_dirs,
        flag_dir=root / "flags",
        plot_paths=plot_paths,
        labels_path=labels_path,
        seconds=time.perf_counter() - started,
        config=config,
        flags=flags,
    )


def _check_paths(root: Path) -> None:
    """Fail before training when something is in the way of what the demo writes."""
    OutputSet(root, ("labels.csv",)).check()
    for folder in ("runs/set1", "runs/set2", "aum/set1", "aum/set2", "flags", "plots"):
        OutputSet(root / folder, ()).check()
