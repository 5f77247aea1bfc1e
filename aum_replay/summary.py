"""Summary storage: per row, what every replayed signal needs instead of the C logits.

``LogitLogger(run_dir, storage="summary")`` stores, for each row of logits ``z`` (C values) with
label ``y``, computed by the replay's own numpy kernels (:mod:`aum_replay.kernels`) from the exact
logits, in the writer thread:

- ``target_val`` = z[y] and ``other_val`` = the largest other logit, in the logits' dtype, and
  ``other_logit``, its index (SPEC section 1: the lowest index among equal maxima);
- ``argmax`` of z (lowest index among equal maxima; -1 for a row with a NaN);
- ``lse`` = logsumexp(z) and ``el2n`` = ||softmax(z) - onehot(y)||_2, in float64.

About 38 bytes a row at C=1000 (float32), against 4,000 for the logits. The replay turns a block of
them into exactly what the kernels return from full logits (:func:`summary_stats`):

- exact, bit for bit: the margin and every field of the full records, so ``aum_values.csv`` and
  ``full_aum_records.csv``; ``correctness``, ``forgetting_events``, ``never_learned`` (from the
  argmax), ``el2n`` and ``loss`` (``lse - target_val``, the kernel's own formula);
- to float64 rounding: ``confidence``, ``variability`` and ``aleatoric``, from
  p[y] = exp(target_val - lse) where the kernel divides exp(z[y] - max z) by the row's sum.

The trade: a summary run cannot recompute anything else that needs the full row (another
margin definition, top-k, calibration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from aum_replay.format import ARGMAX, EL2N, LSE, OTHER_LOGIT, OTHER_VAL, SUMMARY_COLUMNS, TARGET_VAL
from aum_replay.kernels import STATS, Stats, _difference, block_stats, widen

__all__ = [
    "SummaryBlock",
    "SummaryKernel",
    "summarize",
    "summary_columns",
    "summary_stats",
    "with_summaries",
]

#: The kernel statistics a summary is made of (the rest follow from them).
_STORED = frozenset({"target_val", "other_val", "other_logit", "correct", "lse", "el2n"})


class SummaryBlock(dict[str, np.ndarray]):
    """One block of a summary shard: each summary column (B,) in its disk dtype."""


def summarize(x: np.ndarray, labels: np.ndarray, stored: str) -> dict[str, np.ndarray]:
    """The summary columns (B,) of a block of logits (B, C) in their disk dtype.

    The values are the replay kernel's own (:func:`aum_replay.kernels.block_stats`, on a copy:
    ``x`` stays intact), so that a summary replays to the same bits.
    """
    labels = labels.reshape(-1).astype(np.int64, copy=False)
    stats = block_stats(np.array(x, order="C"), labels, stored, _STORED)
    # argmax(z) is y where y is the first maximum, else the first of the other maxima: no
    # second pass over the row. -1 marks a row with a NaN (its correctness is NaN).
    correct = stats["correct"]
    argmax = np.where(correct == 1.0, labels, stats["other_logit"])
    argmax[np.isnan(correct)] = -1
    return {
        TARGET_VAL: _narrow(stats["target_val"], stored),
        OTHER_VAL: _narrow(stats["other_val"], stored),
        OTHER_LOGIT: stats["other_logit"],
        ARGMAX: argmax,
        LSE: stats["lse"],
        EL2N: stats["el2n"],
    }


def _narrow(values: np.ndarray, stored: str) -> np.ndarray:
    """float64 values that came from the stored dtype, back in its disk dtype (exact)."""
    if stored == "bfloat16":
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(stored)


def summary_stats(
    block: SummaryBlock, labels: np.ndarray, stored: str, needs: Iterable[str]
) -> Stats:
    """What :func:`aum_replay.kernels.block_stats` returns for the logits this summary came
    from: bit for bit, but ``p_target`` (to float64 rounding, see the module docstring)."""
    needs = frozenset(needs)
    unknown = needs.difference(STATS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}")
    out: Stats = {}
    if TARGET_VAL in block:
        target = widen(block[TARGET_VAL], stored)
        if needs & {"target_val", "loss", "p_target"}:  # not for the margin alone
            target64 = target.astype(np.float64)
    if "margin" in needs:
        out["margin"] = _difference(target, widen(block[OTHER_VAL], stored), stored)
    if "target_val" in needs:
        out["target_val"] = target64
    if "other_val" in needs:
        out["other_val"] = widen(block[OTHER_VAL], stored).astype(np.float64)
    if "other_logit" in needs:
        out["other_logit"] = block[OTHER_LOGIT].astype(np.int64)
    if "correct" in needs:
        argmax = block[ARGMAX]
        correct = (argmax == labels).astype(np.float64)
        correct[argmax < 0] = np.nan
        out["correct"] = correct
    if "lse" in needs:
        out["lse"] = block[LSE]
    if needs & {"loss", "p_target"}:  # not for the margin alone: errstate costs ~1 us a block
        with np.errstate(invalid="ignore", over="ignore"):
            if "loss" in needs:
                out["loss"] = block[LSE] - target64  # the kernel's (top + log(total)) - z[y]
            if "p_target" in needs:
                out["p_target"] = np.exp(target64 - block[LSE])
    if "el2n" in needs:
        out["el2n"] = block[EL2N].astype(np.float64)
    return out


def summary_columns(needs: Iterable[str]) -> tuple[str, ...]:
    """The summary columns :func:`summary_stats` reads to compute ``needs``: what a replay
    reads (and verifies) of a summary shard; 18 of 38 bytes a row for AUM values alone."""
    needs = frozenset(needs)
    wanted = set()
    if needs & {"margin", "target_val", "loss", "p_target"}:
        wanted.add(TARGET_VAL)
    if needs & {"margin", "other_val"}:
        wanted.add(OTHER_VAL)
    if "other_logit" in needs:
        wanted.add(OTHER_LOGIT)
    if "correct" in needs:
        wanted.add(ARGMAX)
    if needs & {"lse", "loss", "p_target"}:
        wanted.add(LSE)
    if "el2n" in needs:
        wanted.add(EL2N)
    return tuple(name for name in SUMMARY_COLUMNS if name in wanted)


Kernel = Callable[[Any, np.ndarray, str], Stats]


def with_summaries(kernel: Kernel, needs: frozenset[str]) -> SummaryKernel:
    """``kernel``, also taking a :class:`SummaryBlock` in place of logits (summary shards)."""
    return SummaryKernel(kernel, needs)


class SummaryKernel:
    """A kernel that also takes a :class:`SummaryBlock` in place of logits; ``columns``: the
    summary columns such a block must hold for ``needs``."""

    def __init__(self, kernel: Kernel, needs: frozenset[str]) -> None:
        self.kernel = kernel
        self.needs = needs
        self.columns = summary_columns(needs)

    def __call__(self, block: Any, labels: np.ndarray, stored: str) -> Stats:
        if isinstance(block, SummaryBlock):
            return summary_stats(block, labels, stored, self.needs)
        return self.kernel(block, labels, stored)
