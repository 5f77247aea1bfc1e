"""A command's outputs commit as a set (issues 9 and 10), tried with real processes and faults.

Every command that writes into OUT_DIR goes through :class:`aum_replay.outputs.OutputSet`: what
is in the way fails before the work, a full disk is one line, Ctrl-C and SIGKILL leave the old
files, a crash between two renames is rolled forward, and two commands never mix their files.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import LogitLogger, compute
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.outputs import JOURNAL_NAME, LOCK_NAME, OutputSet

runner = CliRunner()
OLD = {VALUES_NAME: b"sample_id,aum\n42,1.0\n", FULL_NAME: b"sample_id,num_measurements\n42,1\n"}


def make_run(run_dir: Path, *, samples: int = 300, classes: int = 5, epochs: int = 3) -> Path:
    rng = np.random.default_rng(1)
    meta = {"sample_ids": list(range(0, samples, 7)), "extra_class": classes - 1}
    with LogitLogger(run_dir, threshold_samples=meta) as logger:
        for epoch in range(epochs):
            ids = rng.permutation(samples)
            logits = torch.from_numpy(rng.normal(size=(samples, classes)).astype(np.float32))
            logger.log(logits, ids % classes, ids, epoch=epoch)
            logger.end_epoch()
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("outputs") / "run")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (a few hundred ms) for a signal to land mid-work."""
    return make_run(tmp_path_factory.mktemp("outputs") / "big", samples=60_000, classes=20)


@pytest.fixture(scope="module")
def expected(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("expected")
    compute(run_dir, out)
    return {name: (out / name).read_bytes() for name in (VALUES_NAME, FULL_NAME)}


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\n{result.output}")
    return result.exit_code, result.stdout, result.stderr


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "aum_replay.cli", *map(str, args)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry of ``folder``: file bytes, or None for a directory."""
    if not folder.exists():
        return {}
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.iterdir())}


def seed_old_outputs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in OLD.items():
        (out / name).write_bytes(data)


def one_line_error(code: int, stderr: str) -> None:
    assert code == 1, stderr
    assert stderr.startswith("aum-replay: error: "), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


# --------------------------------------------------------------------- in the way, checked first
@pytest.mark.parametrize("blocked", [VALUES_NAME, FULL_NAME])
def test_a_directory_where_a_compute_output_goes(
    run_dir: Path, tmp_path: Path, blocked: str
) -> None:
    out = tmp_path / "out"
    seed_old_outputs(out)
    (out / blocked).unlink()
    (out / blocked).mkdir()
    before = snapshot(out)
    code, _, stderr = invoke("compute", run_dir, "-o", out)
    one_line_error(code, stderr)
    assert str(out / blocked) in stderr and "directory is in the way" in stderr
    assert snapshot(out) == before  # nothing committed, no temporary left


def test_a_directory_where_a_flag_output_goes(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "flags"
    (out / "aum_details.csv").mkdir(parents=True)
    code, _, stderr = invoke("flag", run_dir, "-o", out)
    one_line_error(code, stderr)
    assert "aum_details.csv" in stderr
    assert snapshot(out) == {"aum_details.csv": None}  # mislabeled.csv was not committed


def test_flag_refuses_a_run_given_twice(run_dir: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke("flag", run_dir, run_dir.parent / "." / "run", "-o", tmp_path / "f")
    one_line_error(code, stderr)
    assert "given twice" in stderr
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("layout", ["dir_is_file", "runs_is_file"])
def test_demo_into_a_file_is_one_line(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "demo"
    if layout == "dir_is_file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        (target / "runs").write_text("not a directory")
    before = snapshot(tmp_path)
    code, _, stderr = invoke("demo", target, "--epochs", "1", "--quiet")
    one_line_error(code, stderr)
    assert "is a file, not a directory" in stderr
    assert snapshot(tmp_path) == before


def test_plot_writes_all_figures_or_none(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    (out / "margins.png").mkdir(parents=True)  # the second figure cannot be written
    code, _, stderr = invoke("plot", run_dir, "-o", out)
    one_line_error(code, stderr)
    assert snapshot(out) == {"margins.png": None}  # no aum_histogram.png left behind


def test_plot_without_threshold_samples_says_why_a_figure_is_missing(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    with LogitLogger(run) as logger:
        logger.log(torch.randn(20, 3), torch.arange(20) % 3, torch.arange(20), epoch=0)
    code, stdout, stderr = invoke("plot", run, "-o", tmp_path / "p")
    assert code == 0, stdout + stderr
    assert "no flagged_per_class.png" in stdout and "--flags" in stdout
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "aum_histogram.png",
        "data_map.png",
        "margins.png",
    ]
    code, stdout, stderr = invoke("plot", run, "-o", tmp_path / "q", "--quiet")
    assert (code, stdout, stderr) == (0, "", "")


# --------------------------------------------------------------------- stale files of the set
def test_values_only_removes_an_older_full_records_file(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seed_old_outputs(out)
    code, stdout, _ = invoke("compute", run_dir, "-o", out, "--values-only")
    assert code == 0, stdout
    assert f"removed {out / FULL_NAME}" in stdout
    assert sorted(p.name for p in out.iterdir()) == [VALUES_NAME]


# --------------------------------------------------------------------- real faults
def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize("limit", [64, 4096, 20_000, 60_000])
def test_compute_into_a_full_filesystem_is_one_line(
    run_dir: Path, tmp_path: Path, expected: dict[str, bytes], limit: int
) -> None:
    """RLIMIT_FSIZE makes every write past ``limit`` bytes fail, as a full disk would."""
    assert len(expected[FULL_NAME]) > limit  # the limit bites somewhere in the outputs
    out = tmp_path / "out"
    seed_old_outputs(out)
    proc = subprocess.run(
        cli("compute", run_dir, "-o", out),
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(limit),
        timeout=120,
    )
    one_line_error(proc.returncode, proc.stderr)
    assert "cannot write" in proc.stderr and "File too large" in proc.stderr
    assert snapshot(out) == {name: data for name, data in OLD.items()}  # old set, no leftovers


@pytest.mark.slow
def test_compute_on_a_tiny_tmpfs_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        proc = subprocess.run(
            cli("compute", run_dir, "-o", mount / "out"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        one_line_error(proc.returncode, proc.stderr)
        assert "No space left on device" in proc.stderr
        assert snapshot(mount / "out") == {}
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _wait_for(
    path: Path, proc: subprocess.Popen[str], timeout: float = 60.0, *, written: bool = False
) -> None:
    """Until ``path`` exists (``written``: and holds something, e.g. a lock's holder)."""
    deadline = time.monotonic() + timeout
    while not path.exists() or (written and not _size(path)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared (exit {proc.returncode})")
        time.sleep(0.001)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_ctrl_c_stops_promptly_and_writes_nothing(big_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seed_old_outputs(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STOP_MID_REPLAY), "compute", str(big_run),
         "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_until_stopped(proc)  # it stopped itself mid-replay, its worker threads mid-block
    os.kill(proc.pid, signal.SIGINT)  # the interrupt lands while the replay is under way
    os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "done" not in stdout and "wrote" not in stdout
    assert stderr.strip() == "aum-replay: interrupted; no output was changed"
    assert snapshot(out) == {name: data for name, data in OLD.items()}


#: The CLI, stopping itself (SIGSTOP) when the third block reaches the fold: a point inside the
#: replay whatever the machine's speed, for a real Ctrl-C from outside to land on.
STOP_MID_REPLAY = """
import os, signal, sys
from aum_replay import engine
real_update = engine.Fold.update
seen = []
def update(self, seg):
    seen.append(1)
    if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGSTOP)
    return real_update(self, seg)
engine.Fold.update = update
from aum_replay.cli import main
sys.argv = ["aum-replay", *sys.argv[1:]]
main()
"""


def _wait_until_stopped(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":  # stopped
            return
        time.sleep(0.01)
    raise AssertionError("the replay never reached its third block")


@pytest.mark.slow
def test_a_second_command_on_one_out_dir_is_refused(big_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = subprocess.Popen(cli("compute", big_run, "-o", out, "--quiet"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(out / LOCK_NAME, first, written=True)  # locked, and its holder written
        os.kill(first.pid, signal.SIGSTOP)  # paused while it holds OUT_DIR
        second = subprocess.run(cli("compute", big_run, "-o", out), capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        one_line_error(second.returncode, second.stderr)
        assert f"another aum-replay command (pid {first.pid} on " in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    reference = tmp_path / "reference"
    compute(big_run, reference)
    assert snapshot(out) == snapshot(reference)


KILL_AFTER_FIRST_RENAME = """
import os, signal, sys
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith(".csv"):  # the first output published: die before the second
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from aum_replay.cli import main
sys.argv = ["aum-replay", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_sigkill_between_the_renames_is_rolled_forward(
    run_dir: Path, tmp_path: Path, expected: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    seed_old_outputs(out)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_AFTER_FIRST_RENAME), "compute", str(run_dir),
         "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = snapshot(out)
    assert JOURNAL_NAME in left  # killed mid-commit: one new file beside one old one
    mixed = [name for name in OLD if left[name] == expected[name]]
    assert len(mixed) == 1
    with OutputSet(out, (VALUES_NAME, FULL_NAME)):  # any next command on OUT_DIR recovers first
        pass
    assert snapshot(out) == expected


@pytest.mark.slow
def test_leftovers_of_a_killed_compute_are_cleaned_by_the_next(
    big_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("compute", big_run, "-o", out, "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(out / LOCK_NAME, proc)
    time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=60)
    junk = out / f".{VALUES_NAME}.{proc.pid}.tmp"
    junk.write_bytes(b"half a file")  # wherever the kill landed, a temporary is left
    (out / ".aum-replay-spill-dead").mkdir(exist_ok=True)
    code, stdout, stderr = invoke("compute", big_run, "-o", out, "--values-only")
    assert code == 0, stdout + stderr
    assert f"removed {junk}" in stdout
    assert sorted(p.name for p in out.iterdir()) == [VALUES_NAME]


# --------------------------------------------------------------------- the terminal
def test_no_stray_line_on_stderr_off_a_terminal(run_dir: Path, tmp_path: Path) -> None:
    for args in (
        ("compute", run_dir, "-o", tmp_path / "c"),
        ("flag", run_dir, "-o", tmp_path / "f"),
    ):
        proc = subprocess.run(cli(*args), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # flag's warnings are meant (random logits: everything flagged looks wrong); nothing else
        stray = [ln for ln in proc.stderr.splitlines() if not ln.startswith("aum-replay: warning:")]
        assert stray == []


def test_an_empty_epoch_selection_is_a_usage_error(run_dir: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke("compute", run_dir, "-o", tmp_path / "out", "--epochs", "")
    assert code == 2 and "empty epoch selection" in stderr
    assert not (tmp_path / "out").exists()


def test_a_file_named_almost_like_a_shard_is_named(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for shard in run_dir.iterdir():
        (run / shard.name).write_bytes(shard.read_bytes())
    (run / "epoch_1.rank_0.h5").write_bytes(b"x")
    code, _, stderr = invoke("compute", run, "-o", tmp_path / "out")
    assert code == 0, stderr
    assert "note: ignored epoch_1.rank_0.h5" in stderr and "not named like a shard" in stderr
    code, stdout, _ = invoke("info", run)
    assert code == 0 and "epoch_1.rank_0.h5" in stdout
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "epoch_1.rank_0.h5").write_bytes(b"x")
    code, _, stderr = invoke("info", lone)
    one_line_error(code, stderr)
    assert "epoch_1.rank_0.h5 looks like a shard" in stderr
