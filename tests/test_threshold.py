"""Threshold samples: the dataset wrapper, its metadata round trip, and the flagging rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aum_replay import DatasetWithIndex, InputError, LogitLogger, ThresholdSampleDataset, compute
from aum_replay.threshold import (
    ThresholdShareWarning,
    combine_flags,
    flag_run,
    fraction_alpha,
    threshold_alpha,
)


def _base(n: int = 110, num_classes: int = 10) -> TensorDataset:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    y = torch.arange(n) % num_classes
    return TensorDataset(x, y)


# ---------------------------------------------------------------------------- the wrapper
def test_selection_size_is_n_over_c_plus_1_and_configurable() -> None:
    assert len(ThresholdSampleDataset(_base(110), 10).threshold_ids) == 10
    assert len(ThresholdSampleDataset(_base(109), 10).threshold_ids) == 9
    assert len(ThresholdSampleDataset(_base(110), 10, num_threshold=11).threshold_ids) == 11


def test_selection_is_seeded_and_differs_between_seeds() -> None:
    a = ThresholdSampleDataset(_base(), 10, seed=3).threshold_ids
    assert a == ThresholdSampleDataset(_base(), 10, seed=3).threshold_ids
    assert a != ThresholdSampleDataset(_base(), 10, seed=4).threshold_ids
    assert a == sorted(a)


def test_sets_are_consecutive_slices_of_one_permutation() -> None:
    n, m = 110, 10
    s1 = ThresholdSampleDataset(_base(n), 10, set_index=1, seed=5)
    s2 = ThresholdSampleDataset(_base(n), 10, set_index=2, seed=5)
    assert not set(s1.threshold_ids) & set(s2.threshold_ids)
    perm = np.random.default_rng(5).permutation(n)
    assert s1.threshold_ids == sorted(perm[:m].tolist())
    assert s2.threshold_ids == sorted(perm[m : 2 * m].tolist())


def test_relabels_threshold_samples_only_and_keeps_label_type() -> None:
    base = _base()
    data = ThresholdSampleDataset(base, 10, seed=1)
    chosen = set(data.threshold_ids)
    for i in range(len(base)):
        x, y = data[i]
        assert torch.equal(x, base[i][0])
        assert isinstance(y, torch.Tensor) and y.dtype == base[i][1].dtype
        assert int(y) == (10 if i in chosen else int(base[i][1]))
        assert data.is_threshold(i) == (i in chosen)
    with pytest.warns(ThresholdShareWarning):  # every sample is a threshold sample here
        plain = ThresholdSampleDataset([(0.0, 1, "a"), (1.0, 2, "b")], 3, num_threshold=2)
    assert plain[0] == (0.0, 3, "a")


def test_composes_with_dataset_with_index_through_a_dataloader() -> None:
    data = ThresholdSampleDataset(_base(), 10, seed=2)
    loader = DataLoader(DatasetWithIndex(data), batch_size=16, shuffle=True)
    seen = {}
    for x, y, ids in loader:
        assert ids.dtype == torch.int64 and x.shape == (len(ids), 1)
        for xi, yi, i in zip(x[:, 0].tolist(), y.tolist(), ids.tolist(), strict=True):
            assert xi == i  # the index is the sample id
            seen[i] = yi
    assert sorted(seen) == list(range(110))
    assert sorted(i for i, label in seen.items() if label == 10) == data.threshold_ids
    # the other order of wrapping gives the same items
    inner = ThresholdSampleDataset(DatasetWithIndex(_base()), 10, seed=2)
    assert [int(inner[i][1]) for i in range(110)] == [seen[i] for i in range(110)]
    assert [inner[i][2] for i in range(110)] == list(range(110))


def test_custom_sample_ids_are_recorded() -> None:
    names = [f"img{i:03d}" for i in range(22)]
    data = ThresholdSampleDataset(_base(22), 10, sample_ids=names, seed=0)
    assert data.threshold_ids == sorted(names[i] for i in data.threshold_indices)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"set_index": 0}, "set_index counts from 1"),
        ({"set_index": 12}, "threshold set 12"),
        ({"num_threshold": 0}, "no threshold samples"),
        ({"sample_ids": [1, 2]}, "sample_ids has 2 ids"),
    ],
)
def test_bad_options_raise_input_error(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ThresholdSampleDataset(_base(), 10, **kwargs)


def test_metadata_round_trips_through_logger_and_compute(tmp_path) -> None:
    data = ThresholdSampleDataset(_base(), 10, set_index=2, seed=7)
    meta = data.threshold_metadata()
    assert meta["extra_class"] == 10 and meta["set_index"] == 2 and meta["seed"] == 7
    with LogitLogger(tmp_path / "run", threshold_samples=data) as logger:
        for epoch in range(2):
            for _x, y, ids in DataLoader(DatasetWithIndex(data), batch_size=32):
                logger.log(torch.randn(len(ids), 11), y, ids, epoch=epoch)
    result = compute(tmp_path / "run")
    assert result.threshold == meta
    assert result.num_classes == 11
    targets = dict(zip(result.aum["sample_id"], result.aum["target"], strict=True))
    assert sorted(i for i, t in targets.items() if t == 10) == data.threshold_ids


# ---------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("percentile", [0.0, 50.0, 90.0, 99.0, 100.0])
def test_alpha_is_numpy_linear_percentile(percentile: float) -> None:
    values = np.random.default_rng(0).normal(size=37)
    assert threshold_alpha(values, percentile) == np.percentile(values, percentile)


def test_alpha_by_hand_and_ignores_nan() -> None:
    # 99th percentile of [0, 1, 2, 3, 4]: position 0.99 * 4 = 3.96 -> 3 + 0.96 * (4 - 3)
    assert threshold_alpha([4.0, 0.0, 3.0, 1.0, 2.0, np.nan]) == pytest.approx(3.96)
    with pytest.raises(InputError, match="no threshold sample has a finite AUM"):
        threshold_alpha([np.nan])
    with pytest.raises(InputError, match="percentile"):
        threshold_alpha([1.0], 101)


def test_flag_run_uses_less_or_equal_and_never_flags_threshold_samples() -> None:
    aums = np.array([-1.0, 0.5, 0.5000001, -3.0, np.nan])
    is_thr = np.array([False, False, False, True, False])
    assert flag_run(aums, is_thr, 0.5).tolist() == [True, True, False, False, False]


def test_fraction_alpha_flags_the_lowest_fraction_of_eligible() -> None:
    aums = np.array([5.0, -1.0, 3.0, -9.0, 0.0, 2.0])
    eligible = np.array([True, True, True, False, True, True])
    alpha = fraction_alpha(aums, 0.4, eligible=eligible)  # round(0.4 * 5) = 2 -> -1, 0
    assert alpha == 0.0
    assert flag_run(aums, ~eligible, alpha).tolist() == [False, True, False, False, True, False]
    assert fraction_alpha(aums, 0.0) == -np.inf


def test_combine_flags_over_runs() -> None:
    # sample:          0      1      2      3      4      5
    flags = np.array(
        [
            [True, True, False, False, False, False],
            [True, False, False, True, False, False],
        ]
    )
    scored = np.array(
        [
            [True, True, True, False, False, True],  # run 1: 3 and 4 are threshold samples
            [True, True, True, True, False, False],  # run 2: 4 and 5 are threshold samples
        ]
    )
    # 0: flagged in both; 1: flagged in one of two scoring runs; 3: flagged in its only scoring
    # run; 4: never scored; 5: scored once, not flagged
    assert combine_flags(flags, scored).tolist() == [True, False, False, True, False, False]
    assert combine_flags(flags[0], scored[0]).tolist() == [True, True, False, False, False, False]


def test_few_classes_warn_that_the_threshold_share_is_large() -> None:
    import warnings

    from aum_replay.threshold import ThresholdShareWarning

    with pytest.warns(ThresholdShareWarning, match=r"20% of the 100 samples \(4 classes\)"):
        ThresholdSampleDataset(_base(100, 4), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ThresholdSampleDataset(_base(110, 10), 10)  # 9%: quiet
        ThresholdSampleDataset(_base(100, 4), 4, num_threshold=10)  # a smaller set: quiet
