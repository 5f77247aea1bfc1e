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
from types import ModuleType
from typing import NamedTuple

import numpy as np

__all__ = [
    "BlockMargins",
    "RowSignals",
    "block_margins",
    "loaded_torch",
    "margin_values",
    "mask_targets",
    "row_max",
    "row_signals",
    "widen",
]


class BlockMargins(NamedTuple):
    """Per-row results of :func:`block_margins`; every field has shape (B,)."""

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
    than numpy's per-row reduction), many classes through numpy's reduction.
    """
    torch = loaded_torch()
    if torch is not None:
        return torch.from_numpy(x).amax(dim=1).numpy()
    if x.shape[1] > 32 or not len(x):
        return x.max(axis=1)
    out = x[:, 0].copy()
    for k in range(1, x.shape[1]):
        np.maximum(out, x[:, k], out=out)  # NaN propagates
    return out


def margin_values(x: np.ndarray, labels: np.ndarray, stored: str) -> np.ndarray:
    """Just the margins (``float64``, shape (B,)) of a C-contiguous block in its disk dtype.

    The replay's values-only path: the same numbers as :func:`block_margins` in a handful of
    calls, since per-call overhead adds up over thousands of blocks. ``x`` may be used as scratch.
    """
    x = widen(x, stored)
    target_val = mask_targets(x, labels)
    return _difference(target_val, row_max(x), stored)


def block_margins(
    x: np.ndarray, labels: np.ndarray, stored: str, *, with_index: bool = True
) -> BlockMargins:
    """Every field of the margin of each row of a block (see the module docstring).

    Parameters
    ----------
    x
        Logits of shape (B, C), C >= 2, in the disk dtype of ``stored``; used as scratch when
        C-contiguous (its target entries are overwritten with ``-inf``).
    labels
        ``int64`` labels of shape (B,), values in ``[0, C)``.
    stored
        Stored dtype name: ``float16``, ``float32``, ``float64`` or ``bfloat16``.
    with_index
        If False, ``other_logit`` is left empty and ``other_val`` comes from a row maximum,
        which is faster than an argmax; the values are the same.
    """
    x = widen(x, stored)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)  # the flat view in mask_targets must alias x
    labels = labels.reshape(-1).astype(np.int64, copy=False)
    target_val = mask_targets(x, labels)
    if with_index:
        # argmax takes the first of equal maxima and counts NaN as the maximum, as torch.max
        # does; half precision is widened first (exact and order-preserving).
        search = x.astype(np.float32) if x.dtype == np.float16 else x
        other_logit = search.argmax(axis=1).astype(np.int64, copy=False)
        other_val = x[np.arange(len(x)), other_logit]
    else:
        other_logit = np.zeros(0, dtype=np.int64)
        other_val = row_max(x)
    margin = _difference(target_val, other_val, stored)
    return BlockMargins(
        target_val.astype(np.float64), other_logit, other_val.astype(np.float64), margin
    )


def mask_targets(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return each row's target logit and overwrite it with ``-inf`` in ``x`` (C-contiguous)."""
    num_rows, num_classes = x.shape
    flat = x.reshape(-1)  # a view, since x is C-contiguous
    position = np.arange(0, num_rows * num_classes, num_classes) + labels
    target_val = flat[position]
    flat[position] = -np.inf
    return target_val


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


class RowSignals(NamedTuple):
    """Per-row training-dynamics statistics of :func:`row_signals`; every field has shape (B,).

    With z the row's logits widened to float64, y its label and p = softmax(z).
    """

    margin: np.ndarray
    """The AUM margin, exactly as :func:`margin_values` (in the stored dtype)."""
    p_target: np.ndarray
    """p[y]."""
    correct: np.ndarray
    """1.0 where argmax(z) == y (the lowest index among equal maxima), else 0.0; NaN rows NaN."""
    el2n: np.ndarray
    """||p - onehot(y)||_2."""
    loss: np.ndarray
    """logsumexp(z) - z[y]."""


def row_signals(x: np.ndarray, labels: np.ndarray, stored: str) -> RowSignals:
    """Every per-row statistic the dynamics signals need, from one block in its disk dtype.

    A row with a NaN anywhere gives NaN in every field (an inf logit gives NaN or inf where the
    arithmetic does, as a plain loop would).
    """
    z = widen(x, stored).astype(np.float64)  # a copy: ``x`` stays intact for the margin
    labels = labels.reshape(-1).astype(np.int64, copy=False)
    rows = np.arange(len(z))
    margin = margin_values(np.array(x, order="C"), labels, stored)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        top = z.max(axis=1)  # NaN propagates
        shifted = np.exp(z - top[:, None])
        total = shifted.sum(axis=1)
        p = shifted / total[:, None]
        target = z[rows, labels]
        lse = top + np.log(total)
        p_target = p[rows, labels]
        diff = p
        diff[rows, labels] -= 1.0
        el2n = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        loss = lse - target
    bad = np.isnan(top)
    correct = (z.argmax(axis=1) == labels).astype(np.float64)
    correct[bad] = np.nan
    return RowSignals(margin, p_target, correct, el2n, loss)
