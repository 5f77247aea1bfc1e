"""The margin kernel on the host, in numpy: blocks as they lie on disk -> per-row margins.

For one row of logits ``z`` (C values) with assigned label ``y``::

    target_val  = z[y]
    other_logit = argmax_{k != y} z[k]      (lowest index among equal maxima; NaN wins)
    other_val   = z[other_logit]
    margin      = target_val - other_val     (in the stored dtype, then widened to float64)

This is bit-for-bit what the original ``aum`` library computes with torch (gather, scatter
``-inf`` over the target, ``max``). The replay on the CPU needs nothing else, so it never imports
torch (1.5-2 s of every command's start-up); :mod:`aum_replay.margins` is the same kernel for
torch tensors on any device.

Blocks come in their disk dtype: float16, float32, float64, or bfloat16 stored as ``uint16``
bit patterns (numpy has no bfloat16). bfloat16 values are widened to float32 exactly, and the
difference is rounded back to bfloat16 (round to nearest even) before widening, as torch's CPU
arithmetic on bfloat16 does. numpy's float16 arithmetic rounds each result to half precision, as
torch's does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import ModuleType
from typing import NamedTuple

import numpy as np

__all__ = [
    "STATS",
    "BlockMargins",
    "Stats",
    "block_stats",
    "first_max",
    "loaded_torch",
    "margin_values",
    "mask_targets",
    "row_max",
    "widen",
]


class BlockMargins(NamedTuple):
    """The margin's per-row fields (what a full record holds); every field has shape (B,)."""

    target_val: np.ndarray
    """``z[y]``, widened to ``float64`` (exact)."""
    other_logit: np.ndarray
    """Index of the largest non-target logit, ``int64``."""
    other_val: np.ndarray
    """``z[other_logit]``, widened to ``float64`` (exact)."""
    margin: np.ndarray
    """``target_val - other_val`` in the stored dtype, widened to ``float64``."""


#: Whether the kernels may use torch when something else has imported it. Tests turn it off to
#: check the pure-numpy path against the reference in a process that has torch loaded.
USE_LOADED_TORCH = True


def loaded_torch() -> ModuleType | None:
    """torch, if this process has already imported it (and :data:`USE_LOADED_TORCH`), else None.

    The kernels never import torch themselves: it costs 1.5-2 s, more than most replays.
    """
    return sys.modules.get("torch") if USE_LOADED_TORCH else None


def widen(x: np.ndarray, stored: str) -> np.ndarray:
    """A block in a dtype numpy computes in: bfloat16 bit patterns become float32 (exact)."""
    if stored == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x


def row_max(x: np.ndarray) -> np.ndarray:
    """Largest value of each row of a C-contiguous (B, C) float block, NaN winning; shape (B,).

    Where torch is already imported (a notebook, a training process), its ``amax`` is the fastest
    row maximum. Otherwise few classes go column by column (one vectorised pass per class, faster
    than numpy's per-row reduction), many classes through numpy's argmax (faster still).
    """
    torch = loaded_torch()
    if torch is not None:
        return torch.from_numpy(x).amax(dim=1).numpy()
    if not len(x):
        return x.max(axis=1)
    if x.shape[1] > 48:
        if x.dtype == np.float16:
            return x.max(axis=1)
        # numpy's SIMD argmax is 1.5-7x its row max at C >= 64 (0.07 ns a value at C=1000);
        # the first NaN wins, and the value at the first maximum is the maximum.
        return x[np.arange(len(x)), x.argmax(axis=1)]
    out = x[:, 0].copy()
    for k in range(1, x.shape[1]):
        np.maximum(out, x[:, k], out=out)  # NaN propagates
    return out


def margin_values(x: np.ndarray, labels: np.ndarray, stored: str) -> np.ndarray:
    """Just the margins (``float64``, shape (B,)) of a C-contiguous block in its disk dtype.

    The replay's values-only path: the same numbers as :func:`block_stats`' ``margin`` in a
    handful of calls, since per-call overhead adds up over thousands of blocks. ``x`` may be
    used as scratch.
    """
    x = widen(x, stored)
    target_val = mask_targets(x, labels)
    return _difference(target_val, row_max(x), stored)


def mask_targets(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return each row's target logit and overwrite it with ``-inf`` in ``x`` (C-contiguous)."""
    num_rows, num_classes = x.shape
    flat = x.reshape(-1)  # a view, since x is C-contiguous
    position = np.arange(0, num_rows * num_classes, num_classes) + labels
    target_val = flat[position]
    flat[position] = -np.inf
    return target_val


def first_max(x: np.ndarray) -> np.ndarray:
    """Index (``int64``, shape (B,)) of each row's first maximum, a NaN counting as the maximum,
    as torch.max does; half precision is searched widened to float32 (exact, order-preserving)."""
    search = x.astype(np.float32) if x.dtype == np.float16 else x
    return search.argmax(axis=1).astype(np.int64, copy=False)


def _difference(target_val: np.ndarray, other_val: np.ndarray, stored: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in torch
        diff = target_val - other_val
    if stored == "bfloat16":
        diff = _round_bfloat16(diff)
    return diff.astype(np.float64)


def _round_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32.

    The same rounding as torch's ``c10::BFloat16`` constructor: NaN stays NaN, everything else
    adds the rounding bias to the bit pattern and keeps the top 16 bits.
    """
    bits = values.view(np.uint32)
    bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + bias) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(values), np.float32(np.nan), rounded)


#: Every per-row statistic :func:`block_stats` computes; a reducer names the ones it reads.
STATS = (
    "margin",
    "target_val",
    "other_logit",
    "other_val",
    "correct",
    "p_target",
    "el2n",
    "loss",
    "lse",
)
_SOFTMAX = frozenset({"p_target", "el2n", "loss", "lse"})

Stats = dict[str, np.ndarray]
"""Per-row statistics of one block, by name (see :data:`STATS`); every array has shape (B,)."""


def block_stats(x: np.ndarray, labels: np.ndarray, stored: str, needs: Iterable[str]) -> Stats:
    """The per-row statistics named in ``needs`` of one block in its disk dtype, in one pass.

    With z a row widened to float64, y its label, p = softmax(z):

    - ``margin``, ``target_val``, ``other_logit``, ``other_val``: as in the module docstring
      (``margin`` bit for bit the reference's);
    - ``correct``: 1.0 where argmax(z) == y (numpy's argmax: the lowest index among equal
      maxima), else 0.0; NaN for a row holding a NaN;
    - ``p_target`` = p[y]; ``el2n`` = ||p - onehot(y)||_2; ``loss`` = logsumexp(z) - z[y];
      ``lse`` = logsumexp(z) (what summary storage keeps).

    The work is shared: the target entries are read and masked once, the largest other logit
    found once; ``correct`` follows from comparing the two (an argmax only for tied rows); the
    softmax reuses the masked block, so that ``1 - p[y]`` is a sum of the other probabilities
    rather than a difference (no cancellation when p[y] is close to 1). ``x`` is used as
    scratch. A NaN anywhere in a row makes every float statistic of the row NaN.
    """
    needs = frozenset(needs)
    unknown = needs.difference(STATS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}")
    x = widen(x, stored)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)  # the flat view in mask_targets must alias x
    labels = labels.reshape(-1).astype(np.int64, copy=False)
    target = mask_targets(x, labels)
    other_logit = None
    if "other_logit" in needs:
        other_logit = first_max(x)
        other = x[np.arange(len(x)), other_logit]
    else:
        other = row_max(x)
    out: Stats = {}
    if "margin" in needs:
        out["margin"] = _difference(target, other, stored)
    if "target_val" in needs:
        out["target_val"] = target.astype(np.float64)
    if "other_val" in needs:
        out["other_val"] = other.astype(np.float64)
    if other_logit is not None:
        out["other_logit"] = other_logit
    if "correct" in needs:
        out["correct"] = _correct(target, other, other_logit, x, labels)
    if needs & _SOFTMAX:
        out.update(_softmax_stats(x, target, other, needs))
    return out


def _correct(
    target: np.ndarray,
    other: np.ndarray,
    other_logit: np.ndarray | None,
    masked: np.ndarray,
    labels: np.ndarray,
) -> np.ndarray:
    """argmax(z) == y from the target logit and the largest other one (see block_stats).

    A tie (z[y] equal to the largest other logit) is y's when y comes first: y <= the lowest
    index among the other maxima (equal when every other logit is -inf, masked like y's).
    """
    correct = (target > other).astype(np.float64)
    tied = np.flatnonzero(target == other)
    if len(tied):
        first = other_logit[tied] if other_logit is not None else first_max(masked[tied])
        correct[tied] = labels[tied] <= first
    correct[np.isnan(target) | np.isnan(other)] = np.nan
    return correct


def _softmax_stats(
    masked: np.ndarray, target: np.ndarray, other: np.ndarray, needs: frozenset[str]
) -> Stats:
    """p[y], EL2N and loss from the block whose target entries hold -inf (see block_stats)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        t = target.astype(np.float64)
        top = np.maximum(t, other.astype(np.float64))  # the row maximum; NaN propagates
        shifted = masked.astype(np.float64)  # then in place: faster than a casting subtract
        shifted -= top[:, None]
        np.exp(shifted, out=shifted)  # exp(z_k - top) for k != y, 0 at y
        rest = np.einsum("ij->i", shifted)  # sum over the other classes
        mine = np.exp(t - top)
        total = rest + mine
        out: Stats = {}
        if "p_target" in needs:
            out["p_target"] = mine / total
        lse = top + np.log(total)
        if "lse" in needs:
            out["lse"] = lse
        if "loss" in needs:
            out["loss"] = lse - t
        if "el2n" in needs:
            squares = np.einsum("ij,ij->i", shifted, shifted)
            out["el2n"] = np.sqrt(squares / (total * total) + (rest / total) ** 2)
    return out
