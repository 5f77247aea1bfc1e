"""The margin kernel: hand-computed cases and properties against a plain per-row loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aum_replay import kernels
from aum_replay.margins import margins

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def reference_row(row: torch.Tensor, y: int) -> tuple[float, int, float, float]:
    """One row the slow way: first strictly larger value wins, subtraction in the row's dtype."""
    other, best = -1, None
    for k in range(len(row)):
        if k == y:
            continue
        if best is None or bool(row[k] > best):
            other, best = k, row[k]
    assert best is not None
    margin = (row[y] - best).item()  # 0-d tensors: the subtraction happens in row.dtype
    return row[y].item(), other, best.item(), margin


def test_hand_computed_float32() -> None:
    logits = torch.tensor([[0.3, 0.1, -2.0], [1.0, 5.0, 2.0], [4.0, 4.0, 4.0]])
    m = margins(logits, torch.tensor([0, 2, 1]))
    assert m.target_val.tolist() == pytest.approx([0.3, 2.0, 4.0])
    assert m.other_logit.tolist() == [1, 1, 0]
    assert m.other_val.tolist() == pytest.approx([0.1, 5.0, 4.0])
    assert m.margin.dtype == torch.float64
    # A float32 subtraction, widened afterwards: not 0.2, and not the float64 0.3 - 0.1.
    assert m.margin.tolist() == [0.20000001788139343, -3.0, 0.0]
    assert m.other_logit.dtype == torch.int64


def test_ties_pick_lowest_index() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0], [3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0]])
    m = margins(logits, torch.tensor([3, 0, 0]))
    assert m.other_logit.tolist() == [1, 1, 1]
    assert m.margin.tolist() == [0.0, 0.0, 0.0]


def test_target_is_the_maximum() -> None:
    logits = torch.tensor([[9.0, 1.0, 2.5, 2.5]])
    m = margins(logits, torch.tensor([0]))
    assert m.other_logit.tolist() == [2]
    assert m.margin.tolist() == [6.5]


def test_target_below_every_other_logit() -> None:
    m = margins(torch.tensor([[-7.0, -1.0, -2.0]]), torch.tensor([0]))
    assert (m.other_logit.item(), m.margin.item()) == (1, -6.0)


def test_nan_in_target_gives_nan_margin() -> None:
    m = margins(torch.tensor([[math.nan, 1.0, 2.0]]), torch.tensor([0]))
    assert math.isnan(m.target_val.item())
    assert m.other_logit.item() == 2 and m.other_val.item() == 2.0
    assert math.isnan(m.margin.item())


def test_nan_among_others_gives_nan_margin() -> None:
    m = margins(torch.tensor([[1.0, math.nan, 5.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 0]))
    assert math.isnan(m.other_val[0].item())
    assert m.other_logit[0].item() == 1
    assert math.isnan(m.margin[0].item())
    assert m.margin[1].item() == -2.0  # a NaN in one row leaves the others alone


def test_infinities() -> None:
    inf = math.inf
    logits = torch.tensor([[inf, 1.0, 2.0], [0.0, inf, 1.0], [inf, inf, 0.0], [-inf, -inf, -inf]])
    m = margins(logits, torch.tensor([0, 0, 0, 2]))
    assert m.margin[0].item() == inf
    assert m.margin[1].item() == -inf
    assert math.isnan(m.margin[2].item())  # inf - inf
    assert math.isnan(m.margin[3].item())  # -inf - -inf; the masked target never wins
    assert m.other_logit[3].item() == 0


@pytest.mark.parametrize(
    ("dtype", "pair", "expected", "widened_first"),
    [
        (torch.float16, [0.3, -0.1], 0.39990234375, 0.4000244140625),
        (torch.bfloat16, [0.3, 0.1], 0.201171875, 0.20068359375),
        (torch.float32, [0.3, 0.1], 0.20000001788139343, 0.20000001043081284),
        (torch.float64, [0.3, 0.1], 0.19999999999999998, 0.19999999999999998),
    ],
)
def test_subtraction_happens_in_the_stored_dtype(
    dtype: torch.dtype, pair: list[float], expected: float, widened_first: float
) -> None:
    logits = torch.tensor([pair], dtype=dtype)
    m = margins(logits, torch.tensor([0]))
    assert m.target_val.dtype == dtype and m.other_val.dtype == dtype
    assert m.margin.dtype == torch.float64
    assert m.margin.item() == expected
    # Widening before subtracting would give another number (float64 aside).
    assert logits[0, 0].item() - logits[0, 1].item() == widened_first


def test_half_precision_subtraction_rounds() -> None:
    # 2048 - (-1) = 2049 is not representable in float16 and rounds to 2048.
    logits = torch.tensor([[2048.0, -1.0]], dtype=torch.float16)
    m = margins(logits, torch.tensor([0]))
    assert m.margin.item() == 2048.0


def test_inplace_uses_logits_as_scratch_and_matches() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    kept = logits.clone()
    a = margins(logits, torch.tensor([2, 1]))
    assert torch.equal(logits, kept)  # not in place: the caller's tensor is untouched
    b = margins(logits, torch.tensor([2, 1]), inplace=True)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert logits[0, 2].item() == -math.inf and logits[1, 1].item() == -math.inf


def test_targets_of_any_integer_dtype_and_shape() -> None:
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    a = margins(logits, torch.tensor([1, 1], dtype=torch.int32))
    b = margins(logits, torch.tensor([[1], [1]]))
    assert a.margin.tolist() == b.margin.tolist() == [1.0, -1.0]


def test_empty_batch() -> None:
    m = margins(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))
    assert m.margin.shape == (0,) and m.other_logit.shape == (0,)


@st.composite
def batches(draw: st.DrawFn, values: st.SearchStrategy[float]) -> tuple[torch.Tensor, list[int]]:
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 12))
    cols = draw(st.integers(2, 7))
    flat = draw(st.lists(values, min_size=rows * cols, max_size=rows * cols))
    targets = draw(st.lists(st.integers(0, cols - 1), min_size=rows, max_size=rows))
    return torch.tensor(flat, dtype=torch.float64).reshape(rows, cols).to(dtype), targets


def check_against_loop(logits: torch.Tensor, targets: list[int]) -> None:
    m = margins(logits, torch.tensor(targets))
    for i, y in enumerate(targets):
        target_val, other, other_val, margin = reference_row(logits[i], y)
        assert m.target_val[i].item() == target_val
        assert m.other_logit[i].item() == other
        assert m.other_val[i].item() == other_val
        assert m.margin[i].item() == margin  # bit for bit, no tolerance


@given(batches(st.integers(-3, 3).map(float)))
def test_integer_logits_with_many_ties_match_loop(batch: tuple[torch.Tensor, list[int]]) -> None:
    check_against_loop(*batch)


@given(batches(st.floats(-1e4, 1e4, allow_nan=False, width=32)))
def test_random_logits_match_loop(batch: tuple[torch.Tensor, list[int]]) -> None:
    check_against_loop(*batch)


def special_block(
    rows: int, num_classes: int, dtype: torch.dtype, shares: tuple[float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integer logits (ties) with NaN, +inf and -inf mixed in at cumulative ``shares``."""
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randint(-3, 4, (rows, num_classes), generator=gen).to(torch.float64)
    noise = torch.rand(logits.shape, generator=gen)
    nan, inf, neg = shares
    logits[noise < nan] = math.nan
    logits[(noise >= nan) & (noise < inf)] = math.inf
    logits[(noise >= inf) & (noise < neg)] = -math.inf
    return logits.to(dtype), torch.randint(0, num_classes, (rows,), generator=gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_large_blocks_agree_with_torch_max(dtype: torch.dtype, num_classes: int) -> None:
    # The reference's own operation is masked.max(dim=1); the kernel must give the same indices
    # and values on big blocks too, with NaN, +-inf and ties mixed in.
    logits, targets = special_block(3000, num_classes, dtype, (0.02, 0.04, 0.1))
    masked = logits.scatter(1, targets.view(-1, 1), float("-inf"))
    ref_val, ref_idx = masked.max(dim=1)
    m = margins(logits, targets)
    assert torch.equal(m.other_logit, ref_idx)
    assert torch.allclose(m.other_val.double(), ref_val.double(), rtol=0, atol=0, equal_nan=True)
    ref_margin = (logits.gather(1, targets.view(-1, 1)).squeeze(1) - ref_val).double()
    assert torch.allclose(m.margin, ref_margin, rtol=0, atol=0, equal_nan=True)


def test_logits_that_require_grad() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    m = margins(logits, torch.tensor([0]))
    assert m.other_logit.tolist() == [1] and m.margin.tolist() == [-2.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), cols=st.integers(2, 9))
def test_every_kernel_path_gives_the_same_bits(
    dtype: torch.dtype, seed: int, rows: int, cols: int
) -> None:
    """numpy (CPU, with index), torch argmax (bfloat16) and amax (no index) agree bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 4, (rows, cols), generator=gen).to(torch.float32)
    special = torch.rand(rows, cols, generator=gen)
    logits[special < 0.05] = float("nan")
    logits[(special >= 0.05) & (special < 0.1)] = float("inf")
    logits[(special >= 0.1) & (special < 0.15)] = float("-inf")
    logits = logits.to(dtype)
    targets = torch.randint(0, cols, (rows,), generator=gen)
    full = margins(logits, targets)
    fast = margins(logits.clone(), targets, inplace=True, with_index=False)
    assert fast.other_logit is None
    for a, b in ((full.margin, fast.margin), (full.other_val, fast.other_val)):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    reference = torch.scatter(logits, 1, targets.view(-1, 1), float("-inf")).max(dim=1)
    assert torch.equal(full.other_logit, reference.indices)


@pytest.mark.parametrize("with_index", [True, False])
def test_non_contiguous_logits(with_index: bool) -> None:
    """A transposed or strided view gives the same margins as its contiguous copy."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(7, 12, generator=gen)
    view = base.t()[:, ::2]  # (12, 4), non-contiguous
    assert not view.is_contiguous()
    targets = torch.randint(0, 4, (12,), generator=gen)
    expected = margins(view.contiguous(), targets)
    for inplace in (False, True):
        got = margins(
            view.clone().t().contiguous().t() if inplace else view,
            targets,
            inplace=inplace,
            with_index=with_index,
        )
        assert torch.equal(got.margin, expected.margin)
        assert torch.equal(got.other_val, expected.other_val)
    before = base.clone()
    margins(view, targets, with_index=with_index)
    assert torch.equal(base, before)  # not inplace: the caller's tensor is untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 10, 47, 48, 49, 64, 100, 257])
def test_numpy_kernels_agree_with_torch_max_at_every_class_count(
    dtype: torch.dtype, num_classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's numpy row maximum changes method with C (columns, argmax); the margins are
    the reference's whatever C, with NaN, +-inf and ties mixed in."""
    monkeypatch.setattr(kernels, "USE_LOADED_TORCH", False)
    logits, targets = special_block(2000, num_classes, dtype, (0.01, 0.03, 0.08))
    want = margins(logits, targets).margin.numpy()
    if dtype == torch.bfloat16:
        stored, disk = "bfloat16", logits.view(torch.int16).numpy().view(np.uint16)
    else:
        stored, disk = str(dtype).removeprefix("torch."), logits.numpy()
    labels = targets.numpy()
    got = {
        "margin_values": kernels.margin_values(disk.copy(), labels, stored),
        "block_stats": kernels.block_stats(disk.copy(), labels, stored, ["margin"])["margin"],
        "with index": kernels.block_stats(disk.copy(), labels, stored, ["margin", "other_logit"])[
            "margin"
        ],
    }
    for name, margin in got.items():
        assert np.array_equal(np.isnan(margin), np.isnan(want)), name
        assert np.array_equal(np.nan_to_num(margin), np.nan_to_num(want)), name
