"""Real faults under the logger: a full disk, a second writer, ids and epochs that would wrap.

Each test runs training scripts in subprocesses: a filesystem that fills up (a 1 MiB tmpfs when
this user may mount one, always ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored), two live processes
on one run directory. Before the fixes a full disk segfaulted the process (exit 139) inside
HDF5 and left the temporary shard taking the space; a second writer silently replaced epochs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import InputError, LogitLogger, RunLockedError
from aum_replay.cli import app
from aum_replay.format import ShardReader, list_shards, list_temporaries

pytestmark = pytest.mark.slow

TRAIN = textwrap.dedent(
    """
    import sys, torch
    from aum_replay import LogitLogger
    torch.set_num_threads(1)
    run_dir, on_error, big = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def batch(epoch, start, n):
        g = torch.Generator().manual_seed(1000 * epoch + start)
        return torch.randn(n, 5, generator=g), torch.randint(0, 5, (n,), generator=g)

    options = {} if on_error == "default" else {"on_error": on_error}
    with LogitLogger(run_dir, chunk_bytes=4096, **options) as logger:
        for epoch in range(6):
            rows = 64 if epoch < 3 else big  # epochs 0-2 fit; epoch 3 does not
            for start in range(0, rows, 256):
                n = min(256, rows - start)
                logits, targets = batch(epoch, start, n)
                logger.log(logits, targets, torch.arange(start, start + n), epoch=epoch)
            logger.end_epoch()
            print("epoch", epoch, flush=True)
    print("trained", flush=True)
    """
)


def expected(epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * epoch)
    return torch.randn(64, 5, generator=g)


@contextlib.contextmanager
def small_tmpfs(size: str = "1m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="aum-faults-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)])
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def limit_file_size() -> None:  # runs in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))


def train(run_dir: Path, on_error: str, *, fsize: bool) -> subprocess.CompletedProcess[str]:
    script = run_dir.parent / f"train_{run_dir.name}.py"
    if not fsize:  # the script lives off the small filesystem
        script = Path(tempfile.mkdtemp(prefix="aum-train-")) / "train.py"
    script.write_text(TRAIN)
    return subprocess.run(
        [sys.executable, str(script), str(run_dir), on_error, "200000"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size if fsize else None,
    )


def assert_first_epochs_intact(run_dir: Path) -> None:
    assert [(e, r) for e, r, _ in list_shards(run_dir)] == [(0, 0), (1, 0), (2, 0)]
    for epoch, _, path in list_shards(run_dir):
        with ShardReader(path) as reader:
            logits, _ = reader.read_block(0, reader.info.num_rows)
        torch.testing.assert_close(logits, expected(epoch), rtol=0, atol=0)
    assert list_temporaries(run_dir) == []  # the unfinished shard is gone, with its space


@pytest.mark.parametrize("fault", ["tmpfs", "fsize"])
def test_a_full_disk_is_one_clear_error_not_a_segfault(tmp_path: Path, fault: str) -> None:
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(small_tmpfs()) if fault == "tmpfs" else tmp_path
        run_dir = base / "run"
        proc = train(run_dir, "default", fsize=fault == "fsize")  # on_error="raise"
        # Before: -11 (SIGSEGV) inside HDF5's flush, on the writer thread.
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "epoch 2" in proc.stdout and "epoch 3" not in proc.stdout
        last = proc.stderr.strip().splitlines()[-1]
        words = "disk full" if fault == "tmpfs" else "file size limit exceeded"
        assert last.startswith(
            f"aum_replay.errors.RecordingError: cannot record epoch 3 rank 0: {words}"
        )
        assert str(run_dir / "epoch_00003.rank_000.h5.") in last and "needed at least" in last
        assert "HDF5" not in proc.stderr and "Segmentation" not in proc.stderr
        assert_first_epochs_intact(run_dir)
        if fault == "tmpfs":  # the space of the failed shard is free again
            assert os.statvfs(base).f_bavail * os.statvfs(base).f_frsize > 700 << 10


def test_on_error_stop_keeps_training_with_one_warning(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(run_dir, "stop", fsize=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "trained"  # every epoch ran
    assert proc.stderr.count("RuntimeWarning") == 1
    assert "recording stopped, training goes on (on_error='stop')" in proc.stderr
    assert "cannot record epoch 3 rank 0: file size limit exceeded" in proc.stderr
    assert_first_epochs_intact(run_dir)


HOLD = textwrap.dedent(
    """
    import sys, torch
    from aum_replay import LogitLogger
    run_dir, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    logger = LogitLogger(run_dir, rank=rank, world_size=world)
    logger.log(torch.randn(4, 3), [0, 1, 2, 0], [4 * rank + i for i in range(4)], epoch=0)
    logger.end_epoch()
    print("holding", flush=True)
    sys.stdin.readline()
    logger.close()
    print("closed", flush=True)
    """
)


def hold(tmp_path: Path, run_dir: Path, rank: int = 0, world: int = 1) -> subprocess.Popen[str]:
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(rank), str(world)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "holding\n", proc.stderr.read() if proc.stderr else ""
    return proc


def test_one_writer_per_run_and_rank_across_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = hold(tmp_path, run_dir)
    try:
        # Before: the second logger was accepted and replaced the first one's epochs.
        with pytest.raises(RunLockedError) as refused:
            LogitLogger(run_dir)
        message = str(refused.value)
        assert f"pid {first.pid} on host {socket.gethostname()}" in message
        assert "rank 0" in message and "\n" not in message
        second = hold(tmp_path, run_dir, rank=1, world=2)  # another rank writes side by side
        second.communicate("\n", timeout=60)
        assert second.returncode == 0
        first.communicate("\n", timeout=60)  # closes: the lock is released
        assert first.returncode == 0
    finally:
        first.kill()
    with LogitLogger(run_dir) as logger:  # a resumed logger after the first one closed
        logger.log(torch.randn(4, 3), [0, 1, 2, 0], [0, 1, 2, 3], epoch=1)
    assert [(e, r) for e, r, _ in list_shards(run_dir)] == [(0, 0), (0, 1), (1, 0)]

    killed = hold(tmp_path, run_dir)
    killed.send_signal(signal.SIGKILL)  # dies holding the lock: the OS releases it
    killed.communicate(timeout=60)
    LogitLogger(run_dir).close()


def test_ids_and_epochs_that_would_wrap_are_refused_and_the_run_stays_readable(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    logits, targets = torch.randn(2, 3), [0, 1]
    with LogitLogger(run_dir) as logger:
        logger.log(logits, targets, [-1, 5], epoch=0)  # a real id -1
        bad_ids = [
            np.array([2**64 - 1, 5], dtype=np.uint64),  # wrapped to -1 before
            torch.tensor([2**63, 5], dtype=torch.uint64),
            [2**64, 5],  # a bare OverflowError before
        ]
        for ids in bad_ids:
            with pytest.raises(InputError, match=r"sample id \d+ is outside the int64 range"):
                logger.log(logits, targets, ids, epoch=0)
        for epoch in (2**63, 10**30, -1):  # clipped / "dtype('O')" in the writer before
            with pytest.raises(InputError, match=rf"got {epoch}$"):
                logger.log(logits, targets, [-1, 5], epoch=epoch)
        logger.log(torch.zeros(0, 3), [], [], epoch=0)  # refused as "float64 values" before
    assert list_temporaries(run_dir) == []
    info = CliRunner().invoke(app, ["info", str(run_dir)])
    assert info.exit_code == 0, info.output
    out = tmp_path / "out"
    compute = CliRunner().invoke(app, ["compute", str(run_dir), "-o", str(out)])
    assert compute.exit_code == 0, compute.output
    rows = (out / "aum_values.csv").read_text().splitlines()[1:]
    assert sorted(int(r.split(",")[0]) for r in rows) == [-1, 5]


FORKS = textwrap.dedent(
    """
    import os, sys, time
    from aum_replay import LogitLogger
    logger = LogitLogger(sys.argv[1])
    child = os.fork()  # a DataLoader worker, say
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)  # killed here
    """
)


def test_the_lock_goes_with_the_process_not_with_its_forked_children(tmp_path: Path) -> None:
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    run_dir = tmp_path / "run"
    parent = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        with pytest.raises(RunLockedError, match=f"pid {parent.pid} "):
            LogitLogger(run_dir)
        parent.kill()
        parent.wait(timeout=60)
        os.kill(child, 0)  # the forked child still lives, with the lock file's descriptor closed
        LogitLogger(run_dir).close()
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
