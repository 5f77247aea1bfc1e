"""``--epochs auto``: the counted epochs, read off the threshold samples' margin trajectory.

AUM separates mislabeled samples while the network fits the clean ones and has not yet memorised
the noise. The threshold samples show when that ends: they are mislabeled by construction, so
their margins first fall (the network learns the real classes, which argue against the extra
label) and, once the network starts to memorise, rise back toward and above zero. The paper counts
the epochs up to the first learning-rate drop for this reason; :func:`choose_epochs` finds the
point from the run itself:

1. per epoch, the median margin of the threshold samples (robust to the few that are fitted
   early);
2. smoothed with a centred 3-epoch moving average (one noisy epoch is not a turn);
3. the memorisation point (``turn``) is the epoch of the smoothed minimum, if the median climbs
   back from it at least half way to zero later (half of the threshold samples are on their way
   to being fitted). A smaller rise is the slow drift of a network that is not memorising
   (measured: +0.3 to +0.5 over 25 epochs on the benchmark's standard recipe, against -2 to
   +2.5 on the memorising one), and every epoch counts;
4. where memorisation is declared, the counted epochs end (inclusive) at ``stop``:
   ``"turn"`` (:func:`choose_epochs`' default, the rule before): at the minimum itself;
   ``"climb"`` (what ``flag --epochs auto`` uses): at the first epoch from the minimum on where
   the smoothed median has risen above it by more than the trajectory's own epoch-to-epoch
   noise (the standard deviation of the unsmoothed median's changes from one epoch to the
   next), and at the latest where it is back half way to zero. The minimum of a flat, noisy
   bottom is where the noise put it, often an epoch or two into training; the clean samples'
   margins are still separating from the mislabeled ones' until the climb is real (memorising
   recipe: the minimum at epochs 1-2, the climb measurable at epochs 4-8, and F1 best with 5-8
   counted epochs).

Every epoch from the first one counts up to that point, as the paper counts from the start.

The pure function works on any trajectory (tests use synthetic ones); :func:`epoch_margins` reads
a recorded run's per-epoch margins with the same engine as ``compute``. Nothing here imports
torch at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aum_replay.errors import InputError

if TYPE_CHECKING:
    from aum_replay.run import Run

__all__ = ["AutoEpochs", "choose_epochs", "epoch_margins", "epochs_spec"]


@dataclass(frozen=True)
class AutoEpochs:
    """What :func:`choose_epochs` decided.

    Attributes
    ----------
    epochs
        The counted epochs, ascending (a prefix of the run's epochs).
    turn
        The epoch at which the threshold samples' median margin is lowest (the memorisation
        point), or ``None`` when it never rises significantly after its minimum.
    median
        The per-epoch median margin of the threshold samples, one per run epoch (unsmoothed).
    """

    epochs: list[int]
    turn: int | None
    median: list[float]

    @property
    def spec(self) -> str:
        """The selection as an epoch spec (``"A:B"``), usable with ``--epochs``."""
        return epochs_spec(self.epochs)


def epochs_spec(epochs: Sequence[int]) -> str:
    """``"A:B"`` for a contiguous run of epochs, else the comma-separated list."""
    epochs = list(epochs)
    if epochs and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}:{epochs[-1] + 1}"
    return ",".join(map(str, epochs))


def choose_epochs(
    epochs: Sequence[int], threshold_margins: Any, *, stop: Literal["turn", "climb"] = "turn"
) -> AutoEpochs:
    """The counted epochs from the threshold samples' margins per epoch.

    Parameters
    ----------
    epochs
        The run's epoch numbers, ascending, length E.
    threshold_margins
        Shape (E, m): margin of each threshold sample in each epoch (NaN where a sample was not
        measured; an epoch with no finite value is skipped for the decision).
    stop
        Where the counted epochs end when memorisation is declared: ``"turn"``, at the smoothed
        minimum; ``"climb"`` (``flag``'s), where the climb from it first exceeds the
        trajectory's epoch-to-epoch noise (module docstring).

    Returns
    -------
    AutoEpochs
    """
    if stop not in ("turn", "climb"):
        raise InputError(f"stop must be 'turn' or 'climb', not {stop!r}")
    epochs = [int(e) for e in epochs]
    values = np.asarray(threshold_margins, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(epochs):
        raise InputError(
            f"threshold_margins must have shape (epochs, samples) = ({len(epochs)}, m), "
            f"not {values.shape}"
        )
    if not epochs:
        raise InputError("no epochs to choose from")
    finite = np.isfinite(values)
    median = np.full(len(epochs), np.nan)
    for i in range(len(epochs)):
        if finite[i].any():
            median[i] = float(np.median(values[i, finite[i]]))
    usable = np.flatnonzero(np.isfinite(median))
    if len(usable) < 4:
        return AutoEpochs(list(epochs), None, median.tolist())
    curve = median[usable]
    smooth = np.convolve(np.pad(curve, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    low = int(np.argmin(smooth))
    bottom = float(smooth[low])
    # memorised: after its lowest point the median climbs back at least half way to zero (half
    # of the threshold samples are then on their way to being fitted); a slow drift is not
    if bottom >= 0.0 or low == len(smooth) - 1 or smooth[low:].max() < bottom / 2.0:
        return AutoEpochs(list(epochs), None, median.tolist())
    turn = epochs[int(usable[low])]
    end = turn
    if stop == "climb":
        noise = float(np.std(np.diff(curve)))
        target = min(bottom + noise, bottom / 2.0)  # reached: the half-way climb was seen
        end = epochs[int(usable[low + int(np.argmax(smooth[low:] >= target))])]
    return AutoEpochs([e for e in epochs if e <= end], turn, median.tolist())


def epoch_margins(
    run: Run,
    *,
    duplicates: Literal["first", "all"] = "first",
    device: str = "cpu",
    threads: int | None = 1,
    workers: int = 2,
    client: Any = None,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per-epoch mean margin of every sample of an opened run (one replay pass in all;
    ``client``: on that Dask cluster).

    Returns
    -------
    epochs : list of int
        The run's selected epochs.
    sample_ids : numpy.ndarray
        Shape (N,), sorted (ints, or strings for string ids).
    margins : numpy.ndarray
        Shape (E, N), float64: the sample's AUM over that one epoch; NaN where absent.
    """
    from aum_replay.epochs import parse_epochs
    from aum_replay.replay import compute
    from aum_replay.run import open_run

    per_epoch = []
    for epoch in run.epochs:
        one = open_run(run.run_dir, parse_epochs(str(epoch)))
        result = compute(
            one, None, full=False, duplicates=duplicates, device=device, threads=threads,
            workers=workers, client=client,
        )  # fmt: skip
        ids = result.aum["sample_id"].to_numpy()
        ids = ids.astype(np.str_) if run.id_kind == "str" else ids.astype(np.int64)
        per_epoch.append((ids, result.aum["aum"].to_numpy().astype(np.float64)))
    universe = np.unique(np.concatenate([ids for ids, _ in per_epoch]))
    margins = np.full((len(per_epoch), len(universe)), np.nan)
    for i, (ids, values) in enumerate(per_epoch):
        margins[i, np.searchsorted(universe, ids)] = values
    return list(run.epochs), universe, margins
