"""A training process that dies: every published epoch survives, nothing half-written is final.

Each test runs a small training script in a subprocess (the logger's background thread and the
interpreter's exit are part of what is tested), then inspects the run directory from here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aum_replay
from aum_replay import LogitLogger
from aum_replay.cli import app
from aum_replay.format import ShardReader, list_shards, list_temporaries

pytestmark = pytest.mark.slow

C = 5
BATCH = 16
BATCHES = 4  # rows per epoch: 64

# Shared by the child script and by the checks here, so both derive the same rows.
BATCH_CODE = """
def batch(epoch, b):
    g = torch.Generator().manual_seed(100 * epoch + b)
    logits = torch.randn(BATCH, C, generator=g)
    targets = torch.randint(0, C, (BATCH,), generator=g)
    ids = torch.arange(b * BATCH, (b + 1) * BATCH)
    return logits, targets, ids
"""
namespace: dict[str, object] = {"torch": torch, "BATCH": BATCH, "C": C}
exec(BATCH_CODE, namespace)
batch = namespace["batch"]

TRAIN = (
    f"""
import os, sys, time
import torch
from aum_replay import LogitLogger, format
torch.set_num_threads(1)
BATCH, C, BATCHES = {BATCH}, {C}, {BATCHES}
"""
    + BATCH_CODE
    + """
run_dir, mode = sys.argv[1], sys.argv[2]
logger = LogitLogger(run_dir, chunk_bytes=1024)  # 51 rows per chunk: several chunks per epoch
for epoch in range(3):
    for b in range(BATCHES):
        logger.log(*batch(epoch, b), epoch=epoch)
    logger.end_epoch()
for b in range(BATCHES - 1):  # epoch 3, unfinished
    logger.log(*batch(3, b), epoch=3)
if mode == "kill":
    while not format.list_temporaries(__import__("pathlib").Path(run_dir)):
        time.sleep(0.01)  # the writer thread has opened epoch 3's temporary file
    print("mid-epoch", flush=True)
    time.sleep(600)  # killed here
elif mode == "raise":
    raise RuntimeError("training diverged")
print("script ends without close()", flush=True)
"""
)


def run_training(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(script), str(run_dir), mode]
    if mode != "kill":
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "mid-epoch\n", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, line + out, err)


def assert_epochs_complete(run_dir: Path, epochs: list[int]) -> None:
    """Exactly ``epochs`` are published, each whole and equal to what was logged."""
    shards = list_shards(run_dir)
    assert [(e, r) for e, r, _ in shards] == [(e, 0) for e in epochs]
    for epoch, _, path in shards:
        with ShardReader(path) as reader:
            assert reader.info.num_rows == BATCH * BATCHES
            logits, targets = reader.read_block(0, reader.info.num_rows)
            ids = reader.read_ids()
        parts = [batch(epoch, b) for b in range(BATCHES)]  # type: ignore[operator]
        torch.testing.assert_close(logits, torch.cat([p[0] for p in parts]), rtol=0, atol=0)
        np.testing.assert_array_equal(targets, torch.cat([p[1] for p in parts]).numpy())
        np.testing.assert_array_equal(ids, np.arange(BATCH * BATCHES))


def test_sigkill_mid_epoch_keeps_every_published_epoch(tmp_path: Path) -> None:
    proc = run_training(tmp_path, "kill")
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"

    assert_epochs_complete(run_dir, [0, 1, 2])
    assert not (run_dir / "epoch_00003.rank_000.h5").exists()  # nothing half-written is final
    leftovers = list_temporaries(run_dir)
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith("epoch_00003.rank_000.h5.")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [f"epoch_0000{e}.rank_000.h5" for e in range(3)]
        + [leftovers[0].name, ".rank_000.lock", ".run_id"]
    )

    result = aum_replay.compute(run_dir, tmp_path / "out")
    assert result.epochs == [0, 1, 2]
    assert result.num_measurements == 3 * BATCH * BATCHES
    assert result.temporaries == leftovers
    assert (tmp_path / "out" / "aum_values.csv").is_file()

    info = CliRunner().invoke(app, ["info", str(run_dir)])
    assert info.exit_code == 0, info.output
    assert "leftover" in info.output and leftovers[0].name in info.output
    compute = CliRunner().invoke(app, ["compute", str(run_dir), "-o", str(tmp_path / "out2")])
    assert compute.exit_code == 0, compute.output
    assert leftovers[0].name in compute.output

    # Resuming cleans the dead process's temporary and publishes epoch 3 for real.
    with LogitLogger(run_dir) as logger:
        assert list_temporaries(run_dir) == []
        for b in range(BATCHES):
            logger.log(*batch(3, b), epoch=3)  # type: ignore[operator]
    assert_epochs_complete(run_dir, [0, 1, 2, 3])


@pytest.mark.parametrize(("mode", "returncode"), [("no-close", 0), ("raise", 1)])
def test_script_that_never_closes_exits_cleanly_and_publishes_nothing_unfinished(
    tmp_path: Path, mode: str, returncode: int
) -> None:
    proc = run_training(tmp_path, mode)
    # Before the fix an unclosed logger hung or segfaulted the interpreter at exit.
    assert proc.returncode == returncode, proc.stderr
    assert "not closed: epoch 3 is not published" in proc.stderr
    if mode == "raise":
        assert "RuntimeError: training diverged" in proc.stderr
    run_dir = tmp_path / "run"
    assert_epochs_complete(run_dir, [0, 1, 2])
    assert list_temporaries(run_dir) == []
