"""Regenerate the committed format-v2 fixture under ``tests/data/`` (deterministic).

The same rows as the v1 fixture (``tools/make_v1_fixture.py``: 2 epochs x 2 ranks, C=3, float32
logits, int ids, one padded duplicate per epoch), written by ``LogitLogger`` in format v2 with a
pinned run id and clock, so that its replay must give exactly the v1 fixture's reference files
(``tests/data/v1_expected``). Like the v1 fixture it is never regenerated for a format change:
a reader that can no longer read it fails ``tests/test_format_v2.py`` on purpose.

Usage::

    python tools/make_v2_fixture.py [--out tests/data]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

RUN_ID = "fixture-v2"


def v1_tool() -> ModuleType:
    path = Path(__file__).with_name("make_v1_fixture.py")
    spec = importlib.util.spec_from_file_location("make_v1_fixture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path) -> None:
    v1 = v1_tool()
    metadata = {**v1.METADATA, "fixture": "v2"}
    v1.write_run(run_dir, metadata=metadata, format_version=2, run_id=RUN_ID)
    (run_dir / ".run_id").unlink(missing_ok=True)  # the shards carry the run id
    for lock in run_dir.glob(".rank_*.lock"):
        lock.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "tests/data")
    args = parser.parse_args()
    run_dir = args.out / "v2_run"
    v1_tool().publish(run_dir, write_run)
    print(f"wrote {run_dir}")


if __name__ == "__main__":
    main()
