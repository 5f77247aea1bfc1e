"""Regenerate the committed format-v1 fixture under ``tests/data/`` (deterministic).

The fixture is a tiny run as ``LogitLogger`` writes it - 2 epochs x 2 ranks, C=3, float32 logits,
int ids - and what the original ``aum`` library (1.0.2) computes from the same rows. It is the
anchor of ``tests/test_format_fixture.py``: once committed, it is never regenerated for a format
change; a new format version adds a new fixture next to it and the old one must still be read.

Usage::

    python tools/make_v1_fixture.py [--out tests/data]

Writes ``v1_run/epoch_0000E.rank_00R.h5`` and ``v1_expected/{all,first}/{aum_values.csv,
full_aum_records.csv}``: ``all`` is the reference fed every row (``duplicates="all"``), ``first``
the reference fed each epoch's first occurrence of an id only (``duplicates="first"``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

WORLD = 2
EPOCHS = 2
C = 3
# 19 samples padded to 20 rows per epoch, as DistributedSampler does: one id twice, on both ranks.
IDS = [-5, 0, 3, 7, 12, 19, 25, 31, 40, 58, 63, 77, 81, 96, 100, 250, 999, 4096, 2**40]
METADATA = {"fixture": "v1", "note": "tiny DDP-like run, one padded duplicate per epoch"}
CREATED = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make_rows() -> list[tuple[int, int, torch.Tensor, torch.Tensor, list[int]]]:
    """``(epoch, rank, logits (10, C) float32, targets (10,), ids)`` in measurement order."""
    out = []
    for epoch in range(EPOCHS):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(IDS), generator=g).tolist()
        order.append(order[0])  # the padding duplicate
        logits = torch.randn(len(order), C, generator=g)
        targets = torch.randint(0, C, (len(order),), generator=g)
        if epoch == 0:
            # Hand-picked rows: a tie between the two other classes (the lowest index wins) and
            # the seed README's 0.3 - 0.1 in float32.
            logits[1] = torch.tensor([1.0, 2.0, 2.0])
            targets[1] = 0
            logits[2] = torch.tensor([0.1, 0.3, -1.0])
            targets[2] = 1
        for rank in range(WORLD):
            rows = slice(rank, None, WORLD)
            out.append((epoch, rank, logits[rows], targets[rows], [IDS[i] for i in order[rows]]))
    return out


class _FixedClock(datetime):
    """Pins the ``created_utc`` attribute so that a regenerated fixture is identical."""

    @classmethod
    def now(cls, tz: Any = None) -> _FixedClock:  # type: ignore[override]
        return cls.fromtimestamp(CREATED.timestamp(), tz)


def write_run(run_dir: Path, **options: Any) -> None:
    """The fixture's rows as ``LogitLogger`` writes them; ``options`` override the v1 ones."""
    from aum_replay import LogitLogger, format

    options = {"metadata": METADATA, "format_version": 1, **options}

    real_clock = format.datetime
    format.datetime = _FixedClock  # type: ignore[misc]
    try:
        for rank in range(WORLD):
            with LogitLogger(
                run_dir,
                rank=rank,
                world_size=WORLD,
                chunk_bytes=1024,
                **options,  # the v1 writer is kept, so this fixture can be remade as-is
            ) as logger:
                for epoch, r, logits, targets, ids in make_rows():
                    if r == rank:
                        logger.log(logits[:6], targets[:6], ids[:6], epoch=epoch)
                        logger.log(logits[6:], targets[6:], ids[6:], epoch=epoch)
    finally:
        format.datetime = real_clock  # type: ignore[misc]


def write_reference(out_dir: Path, *, first_only: bool) -> None:
    from aum import AUMCalculator

    calc = AUMCalculator(str(out_dir), compressed=False)
    seen: dict[int, set[int]] = {}
    for epoch, _, logits, targets, ids in make_rows():
        keep = [i for i, sid in enumerate(ids) if not (first_only and sid in seen.get(epoch, ()))]
        seen.setdefault(epoch, set()).update(ids)
        index = torch.tensor(keep)
        calc.update(logits[index], targets[index], [ids[i] for i in keep])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas FutureWarnings inside the reference
        calc.finalize()


def publish(run_dir: Path, write: Callable[[Path], None]) -> None:
    """Write a fixture run into a scratch directory, then replace ``run_dir`` with it."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / run_dir.name
        write(staged)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(staged, run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "tests/data")
    args = parser.parse_args()
    run_dir = args.out / "v1_run"
    publish(run_dir, write_run)
    for mode in ("all", "first"):
        out = args.out / "v1_expected" / mode
        shutil.rmtree(out, ignore_errors=True)
        write_reference(out, first_only=mode == "first")
    print(f"wrote {run_dir} and {args.out / 'v1_expected'}")


if __name__ == "__main__":
    main()
