"""Start-up: the replay commands never import torch (1.5-2 s of every call), nor an optional
framework; ``import aum_replay`` loads only what a name needs when it is first used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aum_replay import LogitLogger

HEAVY = (
    "torch", "matplotlib", "lightning", "pytorch_lightning", "transformers", "dask",
    "distributed", "pandas", "fsspec", "aiohttp",
)  # fmt: skip

CHECK = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("loaded:", ",".join(heavy))
"""


def run_python(body: str) -> str:
    code = CHECK.format(body=textwrap.dedent(body), heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("startup") / "run"
    meta = {"sample_ids": [0, 5], "extra_class": 3}
    with LogitLogger(run, threshold_samples=meta) as logger:
        for epoch in range(2):
            logger.log(torch.randn(12, 4), torch.arange(12) % 4, torch.arange(12), epoch=epoch)
            logger.end_epoch()
    return run


def test_import_loads_nothing_heavy() -> None:
    assert run_python("import aum_replay, aum_replay.cli") == "loaded:"
    # the Dask replay's module imports Dask only when a cluster is asked for
    assert run_python("import aum_replay.distributed, aum_replay.dynamics") == "loaded:"


@pytest.mark.parametrize("command", ["compute", "flag", "info"])
def test_replay_commands_never_import_torch(run_dir: Path, tmp_path: Path, command: str) -> None:
    args = [command, str(run_dir)] + ([] if command == "info" else ["-o", str(tmp_path / "o")])
    body = f"""
    from aum_replay.cli import main
    sys.argv = ["aum-replay", *{args!r}]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    """
    assert run_python(body) == "loaded:"


def test_the_library_replay_never_imports_torch(run_dir: Path, tmp_path: Path) -> None:
    body = f"""
    import aum_replay
    result = aum_replay.flag({str(run_dir)!r}, {str(tmp_path / "f")!r})
    assert result.num_scored == 10, result.num_scored
    """
    assert run_python(body) == "loaded:"


def test_plot_imports_matplotlib_but_not_torch(run_dir: Path, tmp_path: Path) -> None:
    body = f"""
    import aum_replay
    aum_replay.plot({str(run_dir)!r}, {str(tmp_path / "p")!r})
    """
    assert run_python(body) == "loaded: matplotlib"


def test_the_training_side_still_works_by_name() -> None:
    body = """
    import aum_replay
    assert aum_replay.LogitLogger.__name__ == "LogitLogger"
    assert aum_replay.ThresholdSampleDataset.__module__ == "aum_replay.threshold_data"
    from aum_replay.threshold import ThresholdSampleDataset  # the old home still works
    import aum_replay.flag
    assert callable(aum_replay.flag) and aum_replay.flag.__name__ == "flag"
    import aum_replay.dynamics
    from aum_replay import dynamics
    assert callable(dynamics) and aum_replay.dynamics is dynamics
    assert dynamics.__module__ == "aum_replay.dynamics"
    """
    assert "torch" in run_python(body)


def test_the_console_script_keeps_one_malloc_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any thread starts (allocator.tune_allocator: memory freed in per-thread arenas
    stays resident); the library leaves the allocator alone."""
    import platform

    from aum_replay import allocator, cli

    calls: list[object] = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(cli, "app", lambda prog_name: calls.append(prog_name))
    cli.main()
    assert calls == ["malloc", "aum-replay"]
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert allocator.limit_arenas(16) is glibc  # 16: glibc's own default on 2 cores
    allocator.release_free_memory()  # a no-op for the answers, wherever it runs


_FAULTS = """
import resource, sys
import numpy as np
from aum_replay.allocator import tune_allocator
tuned = sys.argv[1] == "1" and tune_allocator()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def block():  # a block's temporaries, as a replay makes them: 2 MiB and 1 MiB, then freed
    a = np.ones(1 << 18)
    b = (a * 2).astype(np.float32)
    return float(b[-1])

block()
before = faults()
for _ in range(40):
    block()
print(int(tuned), faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_allocator_reuses_a_blocks_arrays() -> None:
    """tune_allocator fixes glibc's thresholds: arrays freed block after block are reused from
    the heap, not mapped and faulted in again (~768 pages a block with the defaults)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")

    def faults(tuned: bool) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS, str(int(tuned))],
            capture_output=True,
            text=True,
            check=True,
        )
        set_, count = done.stdout.split()
        return int(set_), int(count)

    assert faults(True)[0] == 1
    tuned, default = faults(True)[1], faults(False)[1]
    assert default > 40 * 100  # glibc's defaults: the pages of each block again
    assert tuned < 40 * 4  # a few pages a block at most (Python's own objects)
