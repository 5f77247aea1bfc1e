"""--epochs auto: the memorisation point read off the threshold samples' margins."""

from __future__ import annotations

import numpy as np
import pytest

from aum_replay import InputError
from aum_replay.auto_epochs import choose_epochs, epochs_spec


def trajectory(medians: list[float], m: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array(medians)[:, None] + rng.normal(0.0, 0.3, (len(medians), m))


def test_memorising_run_stops_at_the_turn() -> None:
    # falls to -2 by epoch 5, then the network memorises: up to +1.5 by epoch 29
    medians = [-0.5, -1.0, -1.5, -1.8, -1.9, -2.0, *list(np.linspace(-1.9, 1.5, 24))]
    choice = choose_epochs(list(range(30)), trajectory(medians))
    assert choice.turn is not None and 4 <= choice.turn <= 6
    assert choice.epochs == list(range(choice.turn + 1))
    assert choice.spec == f"0:{choice.turn + 1}"
    assert len(choice.median) == 30


def test_slow_drift_is_not_memorisation() -> None:
    # the standard recipe: down to -2.2, then a drift of +0.5 over 25 epochs
    medians = [-0.6, -1.2, -2.0, -1.9, -2.2, *list(np.linspace(-2.2, -1.7, 25))]
    choice = choose_epochs(list(range(30)), trajectory(medians))
    assert choice.turn is None and choice.epochs == list(range(30))


def test_epoch_numbers_are_kept_and_nan_epochs_skipped() -> None:
    medians = [-1.0, -2.0, -3.0, -3.0, -1.0, 0.0, 1.0, 2.0]
    margins = trajectory(medians, seed=1)
    margins[6] = np.nan
    choice = choose_epochs([10, 11, 12, 13, 14, 15, 16, 17], margins)
    assert choice.turn in (12, 13) and choice.epochs[0] == 10
    assert np.isnan(choice.median[6])


def test_short_or_rising_runs_count_everything() -> None:
    assert choose_epochs([0, 1, 2], trajectory([-1.0, -2.0, 1.0])).epochs == [0, 1, 2]
    rising = choose_epochs(list(range(8)), trajectory([1.0 + e for e in range(8)]))
    assert rising.turn is None  # never below zero: nothing to memorise
    with pytest.raises(InputError, match="shape"):
        choose_epochs([0, 1], np.zeros((3, 4)))


def test_epochs_spec() -> None:
    assert epochs_spec([3, 4, 5]) == "3:6"
    assert epochs_spec([1, 3]) == "1,3"
