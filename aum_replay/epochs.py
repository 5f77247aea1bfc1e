"""Epoch selections: which epochs of a run count towards AUM.

A selection is a comma-separated union of terms, applied to the epoch numbers a run has:

=============  ===========================================================================
``all``        every epoch (the default)
``7``          epoch 7
``1:150``      epochs 1 <= e < 150 (a half-open range like a Python slice; either end optional:
               ``10:``, ``:150``)
``skip:K``     all but the first K epochs the run has (the paper's replication skipped epoch 0:
               ``skip:1``)
``first:K``    the first K epochs the run has
``last:K``     the last K epochs the run has
=============  ===========================================================================

Ranges and single numbers are epoch numbers; ``skip``/``first``/``last`` count the epochs
present, in ascending order. The paper's setting, "skip epoch 0 and stop at the first
learning-rate drop at epoch 150", is ``1:150``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from aum_replay.errors import InputError

__all__ = ["EpochSelection", "parse_epochs"]

# ASCII digits only: str.isdigit() and \d accept characters like "²" that int() rejects.
_NUMBER = re.compile(r"^[0-9]+$")
_RANGE = re.compile(r"^([0-9]*):([0-9]*)$")
_COUNT = re.compile(r"^(skip|first|last):([0-9]+)$")


@dataclass(frozen=True)
class EpochSelection:
    """A parsed selection; :meth:`apply` resolves it against a run's epochs."""

    spec: str
    terms: tuple[tuple[str, int | None, int | None], ...]

    def apply(self, available: Iterable[int]) -> list[int]:
        """The selected epochs among ``available``, ascending.

        Raises
        ------
        InputError
            If the selection matches none of the run's epochs.
        """
        epochs = sorted(set(available))
        chosen: set[int] = set()
        for kind, a, b in self.terms:
            if kind == "all":
                chosen.update(epochs)
            elif kind == "range":
                chosen.update(e for e in epochs if (a is None or e >= a) and (b is None or e < b))
            elif kind == "skip":
                chosen.update(epochs[a:])
            elif kind == "first":
                chosen.update(epochs[:a])
            elif kind == "last" and a:
                chosen.update(epochs[-a:])
        if not chosen:
            raise InputError(
                f"epoch selection {self.spec!r} matches none of the run's epochs "
                f"({_describe(epochs)})"
            )
        return sorted(chosen)


def _describe(epochs: list[int]) -> str:
    if not epochs:
        return "the run has no epochs"
    if epochs == list(range(epochs[0], epochs[-1] + 1)) and len(epochs) > 3:
        return f"{epochs[0]}..{epochs[-1]}"
    return ", ".join(map(str, epochs))


def parse_epochs(spec: str | None) -> EpochSelection:
    """Parse a selection such as ``"1:150"``, ``"0,5,10"``, ``"skip:1"`` or ``"last:20"``.

    Raises
    ------
    InputError
        If ``spec`` is malformed; the message shows the accepted forms.
    """
    if spec is None or spec.strip() == "all":
        return EpochSelection("all", (("all", None, None),))
    if not spec.strip() or not spec.replace(",", "").strip():
        raise InputError(
            f"empty epoch selection {spec!r}; leave it out (or say 'all') to count every epoch, "
            "or use N, A:B, A:, :B, skip:K, first:K or last:K"
        )
    terms: list[tuple[str, int | None, int | None]] = []
    for raw in spec.split(","):
        term = raw.strip().replace(" ", "")
        if term == "all":
            terms.append(("all", None, None))
        elif _NUMBER.match(term):
            terms.append(("range", int(term), int(term) + 1))
        elif m := _RANGE.match(term):
            lo = int(m.group(1)) if m.group(1) else None
            hi = int(m.group(2)) if m.group(2) else None
            terms.append(("range", lo, hi))
        elif m := _COUNT.match(term):
            terms.append((m.group(1), int(m.group(2)), None))
        else:
            raise InputError(
                f"bad epoch selection term {raw.strip()!r} in {spec!r}; use N, A:B, A:, :B, "
                "skip:K, first:K, last:K or all, separated by commas"
            )
    return EpochSelection(spec, tuple(terms))
