"""Summary storage: per row, what every replayed signal needs instead of the C logits.

``LogitLogger(run_dir, storage="summary")`` stores, for each row of logits ``z`` (C values) with
label ``y``, computed by the replay's own numpy kernels (:mod:`aum_replay.kernels`) from the exact
logits, in the writer thread:

- ``target_val`` = z[y] and ``other_val`` = the largest other logit, in the logits' dtype, and
  ``other_logit``, its index (SPEC section 1: the lowest index among equal maxima);
- ``argmax`` of z (lowest index among equal maxima; -1 for a row with a NaN);
- ``lse`` = logsumexp(z) and ``el2n`` = ||softmax(z) - onehot(y)||_2, in float64.

About 38 bytes a row at C=1000 (float32), against 4,000 for the logits. The replay turns a block of
them into exactly what the kernels return from full logits (:func:`kernel_output`):

- exact, bit for bit: the margin and every field of the full records, so ``aum_values.csv`` and
  ``full_aum_records.csv``; ``correctness``, ``forgetting_events``, ``never_learned`` (from the
  argmax), ``el2n`` and ``loss`` (``lse - target_val``, the kernel's own formula);
- to float64 rounding: ``confidence``, ``variability`` and ``aleatoric``, from
  p[y] = exp(target_val - lse) where the kernel divides exp(z[y] - max z) by the row's sum.

The trade: a summary run cannot recompute anything else that needs the full row (another
margin definition, top-k, calibration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from aum_replay.format import ARGMAX, EL2N, LSE, OTHER_LOGIT, OTHER_VAL, TARGET_VAL
from aum_replay.kernels import BlockMargins, RowSignals, _difference, block_margins, widen

__all__ = ["SummaryBlock", "kernel_output", "summarize", "with_summaries"]

Kind = Literal["values", "margins", "signals"]


class SummaryBlock(dict[str, np.ndarray]):
    """One block of a summary shard: each summary column (B,) in its disk dtype."""


def summarize(x: np.ndarray, labels: np.ndarray, stored: str) -> dict[str, np.ndarray]:
    """The summary columns (B,) of a block of logits (B, C) in their disk dtype."""
    labels = labels.reshape(-1).astype(np.int64, copy=False)
    m = block_margins(np.array(x, order="C"), labels, stored)  # a copy: x stays intact
    z = widen(x, stored).astype(np.float64)
    rows = np.arange(len(z))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # The same steps, in the same order, as kernels.row_signals: loss and el2n replay exactly.
        top = z.max(axis=1)
        shifted = np.exp(z - top[:, None])
        total = shifted.sum(axis=1)
        p = shifted / total[:, None]
        lse = top + np.log(total)
        diff = p
        diff[rows, labels] -= 1.0
        el2n = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    argmax = z.argmax(axis=1)
    argmax[np.isnan(top)] = -1
    return {
        TARGET_VAL: _narrow(m.target_val, stored),
        OTHER_VAL: _narrow(m.other_val, stored),
        OTHER_LOGIT: m.other_logit,
        ARGMAX: argmax,
        LSE: lse,
        EL2N: el2n,
    }


def _narrow(values: np.ndarray, stored: str) -> np.ndarray:
    """float64 values that came from the stored dtype, back in its disk dtype (exact)."""
    if stored == "bfloat16":
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(stored)


def kernel_output(
    block: SummaryBlock, labels: np.ndarray, stored: str, kind: Kind
) -> tuple[np.ndarray, Any]:
    """What a kernel returns for the logits this summary came from: ``(margin, None)`` for
    ``"values"``, ``(margin, BlockMargins)`` for ``"margins"``, ``(margin, RowSignals)`` for
    ``"signals"``."""
    target = widen(block[TARGET_VAL], stored)
    other = widen(block[OTHER_VAL], stored)
    margin = _difference(target, other, stored)
    if kind == "values":
        return margin, None
    target64 = target.astype(np.float64)
    if kind == "margins":
        index = block[OTHER_LOGIT].astype(np.int64)
        return margin, BlockMargins(target64, index, other.astype(np.float64), margin)
    lse = block[LSE]
    argmax = block[ARGMAX]
    correct = (argmax == labels).astype(np.float64)
    correct[argmax < 0] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        p_target = np.exp(target64 - lse)
        loss = lse - target64
    return margin, RowSignals(margin, p_target, correct, block[EL2N].astype(np.float64), loss)


KernelFn = Callable[[Any, np.ndarray, str], tuple[np.ndarray, Any]]


def with_summaries(kernel: KernelFn, kind: Kind) -> KernelFn:
    """``kernel``, also taking a :class:`SummaryBlock` in place of logits (summary shards)."""

    def either(block: Any, labels: np.ndarray, stored: str) -> tuple[np.ndarray, Any]:
        if isinstance(block, SummaryBlock):
            return kernel_output(block, labels, stored, kind)
        return kernel(block, labels, stored)

    return either
