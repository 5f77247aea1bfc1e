"""Fault injection: reproduce each fault class of issue 10 with real faults. Prints one JSON line.

Real faults only: a small tmpfs that fills up (mounted when this user may; else ``RLIMIT_FSIZE``
with ``SIGXFSZ`` ignored, so ``write()`` fails with ``EFBIG``), real ``SIGKILL`` and ``SIGSTOP``,
real concurrent processes. Every trial runs the library in its own subprocess.

Classes
    ``logger_disk_full``     a training script whose run directory fills up (fill levels swept;
                             ``on_error="raise"`` and ``"stop"``; tmpfs and ``RLIMIT_FSIZE``)
    ``compute_disk_full``    ``aum-replay compute`` into an OUT_DIR that fills up, over old outputs
    ``two_writers``          two loggers on one run directory and rank: started together,
                             staggered, the first one paused (``SIGSTOP``); two ranks side by side
    ``outputs_commit_set``   ``compute`` killed (``SIGKILL``) at each of its renames, then the next
                             command; two computes into one OUT_DIR, one paused (``SIGSTOP``) at a
                             rename
    ``ids_epochs_wrap``      uint64 ids >= 2**63, ints beyond int64, epochs 2**63 / 10**30 / -1,
                             empty batches with float or list targets

Each trial lands in one column:
    ``ok``            the fault did not need an error and the result is right (a valid empty
                      batch; a disk that turned out big enough; a command that waited its turn)
    ``clear_error``   refused or stopped with the project's one clear line (exit 1, or one
                      warning with ``on_error="stop"``), nothing half-written left, earlier data
                      intact
    ``silent_wrong``  exit 0 with a wrong or mixed result, or leftovers (temporary files, scratch
                      directories) that nothing will remove
    ``lost_data``     data published before the fault is gone or changed, or a run that the
                      CLI no longer reads
    ``hang``          ran past ``--timeout``
    ``crash``         killed by a signal it did not get from us (a segfault), or an error that is
                      not the one clear line (a library traceback, a foreign exception)

Goal: 0 in every bad column (``silent_wrong``, ``lost_data``, ``hang``, ``crash``).

Usage::

    python tools/faults.py [--classes logger_disk_full,two_writers] [--trials 1] [--timeout 60]

``--trials K`` repeats every class's sweep K times (default 1: about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CLASSES = (
    "logger_disk_full",
    "compute_disk_full",
    "two_writers",
    "outputs_commit_set",
    "ids_epochs_wrap",
)
COLUMNS = ("tried", "ok", "clear_error", "silent_wrong", "lost_data", "hang", "crash")
BAD = ("silent_wrong", "lost_data", "hang", "crash")
PY = sys.executable
CLI = [PY, "-c", "import sys; from aum_replay.cli import main; sys.argv[0] = 'aum-replay'; main()"]
ENV = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}

# ----------------------------------------------------------------------------- child scripts

TRAIN = """
import sys, time, torch
from aum_replay import LogitLogger
torch.set_num_threads(1)
run_dir, on_error = sys.argv[1], sys.argv[2]
rows, epochs, grow = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0

def batch(epoch, start, n):
    g = torch.Generator().manual_seed(1000 * epoch + start)
    return torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)

options = {} if on_error == "default" else {"on_error": on_error}
with LogitLogger(run_dir, chunk_bytes=64 << 10, **options) as logger:
    for epoch in range(epochs):
        size = rows + grow * epoch
        for start in range(0, size, 500):
            n = min(500, size - start)
            logits, targets = batch(epoch, start, n)
            logger.log(logits, targets, torch.arange(start, start + n), epoch=epoch)
        if logger.end_epoch() is not None:
            print("published", epoch, flush=True)
        time.sleep(pause)
print("trained", flush=True)
"""

WRITER = """
import sys, time, torch
from aum_replay import LogitLogger
run_dir, tag, rank, world, epochs, delay = sys.argv[1:7]
rank, world, epochs, delay = int(rank), int(world), int(epochs), float(delay)
with LogitLogger(run_dir, rank=rank, world_size=world, metadata={"writer": tag}) as logger:
    print("locked", flush=True)
    for epoch in range(epochs):
        logger.log(torch.randn(8, 3), torch.arange(8) % 3, torch.arange(8) + 8 * rank, epoch=epoch)
        logger.end_epoch()
        print("published", epoch, flush=True)
        time.sleep(delay)
"""

# Runs the CLI with os.replace/os.rename counted: at the k-th rename into OUT_DIR it sends itself
# a real signal (SIGKILL or SIGSTOP), before or after the rename.
RENAMES = """
import os, signal, sys
out, k, sig, when = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
count = [0]

def counted(real):
    def rename(src, dst, *args, **kwargs):
        inside = os.path.realpath(os.fspath(dst)).startswith(out + os.sep)
        if inside:
            count[0] += 1
            if count[0] == k and when == "before":
                os.kill(os.getpid(), getattr(signal, sig))
        result = real(src, dst, *args, **kwargs)
        if inside and count[0] == k and when == "after":
            os.kill(os.getpid(), getattr(signal, sig))
        return result
    return rename

os.replace, os.rename = counted(os.replace), counted(os.rename)
from aum_replay.cli import main
sys.argv = ["aum-replay", *sys.argv[5:]]
main()
"""

WRAP = """
import json, sys, torch, numpy as np
from pathlib import Path
import aum_replay
from aum_replay import AumReplayError, InputError, LogitLogger
from aum_replay.format import list_temporaries
base = Path(sys.argv[1])
CASES = {
    "uint64 numpy 2**64-1": ("ids", np.array([2**64 - 1, 5], np.uint64), "18446744073709551615"),
    "uint64 torch 2**63": ("ids", torch.tensor([2**63, 5], dtype=torch.uint64), str(2**63)),
    "int 2**64": ("ids", [2**64, 5], "18446744073709551616"),
    "int -2**63-1": ("ids", [-(2**63) - 1, 5], "-9223372036854775809"),
    "epoch 2**63": ("epoch", 2**63, "9223372036854775808"),
    "epoch 10**30": ("epoch", 10**30, str(10**30)),
    "epoch -1": ("epoch", -1, "-1"),
    "empty, targets=[]": ("empty", [], None),
    "empty, float64 targets and ids": ("empty", np.zeros(0), None),
}
for name, (what, value, shown) in CASES.items():
    run = base / str(len(list(base.iterdir())))
    outcome = "ok"
    logger = LogitLogger(run)
    logger.log(torch.randn(2, 3), [0, 1], [-1, 5], epoch=0)  # a real id -1
    try:
        if what == "ids":
            logger.log(torch.randn(2, 3), [0, 1], value, epoch=0)
        elif what == "epoch":
            logger.log(torch.randn(2, 3), [0, 1], [-1, 5], epoch=value)
        else:
            logger.log(torch.zeros(0, 3), value, value, epoch=0)
    except InputError as exc:
        clear = shown is not None and shown in str(exc) and "\\n" not in str(exc)
        outcome = "clear_error" if clear else "crash"
    except Exception as exc:
        outcome = "crash"  # a foreign exception, or a refused empty batch
    try:
        logger.close()
    except Exception:
        outcome = "crash" if outcome == "ok" else outcome
    if outcome == "ok" and shown is not None:
        outcome = "silent_wrong"  # accepted a value that the format cannot hold
    try:
        aum_replay.compute(run, base / f"out-{name}")
        lines = (base / f"out-{name}" / "aum_values.csv").read_text().splitlines()[1:]
        ids = sorted(int(line.split(",")[0]) for line in lines)
        if ids != [-1, 5] or list_temporaries(run):
            outcome = "silent_wrong"
    except AumReplayError:
        outcome = "lost_data"  # the run no longer replays
    print(json.dumps({"case": name, "outcome": outcome}), flush=True)
"""


# ----------------------------------------------------------------------------- helpers


class Tally:
    def __init__(self) -> None:
        self.counts = {c: 0 for c in COLUMNS}
        self.notes: list[str] = []

    def add(self, column: str, note: str = "") -> None:
        self.counts["tried"] += 1
        self.counts[column] += 1
        if column in BAD and note and len(self.notes) < 5:
            self.notes.append(note[:300])


def script(work: Path, name: str, text: str) -> Path:
    path = work / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def run(cmd: list[str], timeout: float, **kwargs: Any) -> tuple[int | None, str, str]:
    """``(returncode or None on timeout, stdout, stderr)``."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs
    ) as proc:
        return wait(proc, timeout)


def wait(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, str, str]:
    """Wait for a started process: ``(returncode or None if it had to be killed, out, err)``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def crashed(rc: int | None) -> bool:
    return rc is not None and (rc < 0 or rc >= 128)


def one_clear_line(err: str, pattern: str) -> bool:
    """stderr ends with one line matching ``pattern`` and holds no library internals."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if not lines or not re.search(pattern, lines[-1]):
        return False
    return not re.search(r"HDF5|h5py|Segmentation|OverflowError|Fatal Python", err)


@contextlib.contextmanager
def small_fs(size_kib: int) -> Iterator[Path | None]:
    """A tmpfs of ``size_kib`` KiB (root only), or None where none can be mounted."""
    mnt = Path(tempfile.mkdtemp(prefix="aum-faults-fs-"))
    ok = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


def fsize_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec; both survive exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def fill(directory: Path, leave: int) -> None:
    """Fill ``directory``'s filesystem so that about ``leave`` bytes stay free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(0, free - leave))


def leftovers(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.endswith(".tmp")
        or (p.name.startswith(".aum-replay-") and p.is_dir())
        or p.name.startswith(".aum-replay-commit")
    )


# ----------------------------------------------------------------------------- logger_disk_full

EPOCH_ROWS, EPOCHS = 4000, 8  # ~200 KiB a shard


def expected_logits(size: int, epoch: int) -> Any:
    import torch

    parts = []
    for start in range(0, size, 500):
        g = torch.Generator().manual_seed(1000 * epoch + start)
        parts.append(torch.randn(min(500, size - start), 10, generator=g))
    return torch.cat(parts)


def judge_logger(
    run_dir: Path, rc: int | None, out: str, err: str, on_error: str, grow: int
) -> tuple[str, str]:
    import torch

    from aum_replay.format import FormatError, ShardReader, list_shards

    if rc is None:
        return "hang", "timeout"
    if crashed(rc):
        return "crash", f"exit {rc}: {err.strip()[-200:]}"
    published = [int(line.split()[1]) for line in out.splitlines() if line.startswith("published")]
    shards = {e: p for e, r, p in list_shards(run_dir)} if run_dir.is_dir() else {}
    for epoch in published:
        if epoch not in shards:
            return "lost_data", f"epoch {epoch} was published and is gone"
        try:
            with ShardReader(shards[epoch]) as reader:
                got, _ = reader.read_block(0, reader.info.num_rows)
        except FormatError as exc:
            return "lost_data", str(exc)
        if not torch.equal(got, expected_logits(EPOCH_ROWS + grow * epoch, epoch)):
            return "lost_data", f"epoch {epoch} changed"
    if leftovers(run_dir):
        return "silent_wrong", f"left {leftovers(run_dir)}"
    complete = len(published) == EPOCHS
    if on_error == "stop":
        if rc != 0 or "trained" not in out:
            return "crash", f"exit {rc} with on_error='stop': {err.strip()[-200:]}"
        warnings = err.count("recording stopped, training goes on")
        if complete and warnings == 0:
            return "ok", ""
        if warnings == 1 and re.search(r"cannot record epoch \d+ rank 0: ", err):
            return "clear_error", ""
        return "silent_wrong", f"{warnings} warnings, published {published}"
    if rc == 0:
        return ("ok", "") if complete else ("silent_wrong", f"exit 0, published {published}")
    pattern = (
        r"^aum_replay\.errors\.RecordingError: cannot record epoch \d+ rank 0: "
        rf".*{re.escape(str(run_dir))}"
    )
    if rc == 1 and one_clear_line(err, pattern):
        return "clear_error", ""
    return "crash", f"exit {rc}: {err.strip()[-300:]}"


def logger_disk_full(work: Path, tally: Tally, timeout: float) -> None:
    train = script(work, "train", TRAIN)
    # (fault, free bytes left on a 3 MiB tmpfs or the file size limit, on_error); the fill levels
    # and limits move the failure through creating, appending to and publishing a shard.
    trials: list[tuple[str, int, str]] = []
    with small_fs(3 << 10) as fs:
        if fs is not None:
            for leave in (0, 8 << 10, 96 << 10, 300 << 10, 700 << 10, 1100 << 10, 1800 << 10):
                trials.append(("tmpfs", leave, "default"))
            trials += [("tmpfs", 500 << 10, "stop"), ("tmpfs", 0, "stop")]
    for limit in (4 << 10, 150 << 10, 300 << 10, 520 << 10):
        trials.append(("fsize", limit, "default"))
    trials.append(("fsize", 300 << 10, "stop"))
    for fault, amount, on_error in trials:
        with small_fs(3 << 10) as fs:
            if fault == "tmpfs":
                assert fs is not None
                base, grow = fs, 0
                fill(base, amount)
                pre = None
            else:  # RLIMIT_FSIZE is per file: epochs grow until one shard is over the limit
                base, grow = Path(tempfile.mkdtemp(dir=work)), EPOCH_ROWS // 2
                pre = fsize_limit(amount)
            run_dir = base / "run"
            cmd = [PY, str(train), str(run_dir), on_error, str(EPOCH_ROWS), str(EPOCHS), str(grow)]
            rc, out, err = run(cmd, timeout, preexec_fn=pre)
            column, note = judge_logger(run_dir, rc, out, err, on_error, grow)
            tally.add(column, f"{fault} {amount} {on_error}: {note}")
    if os.geteuid() == 0:  # a permission error: the run directory turns read-only mid-run
        for on_error in ("default", "stop"):
            tally.add(*permission_trial(work, train, on_error, timeout))


def permission_trial(work: Path, train: Path, on_error: str, timeout: float) -> tuple[str, str]:
    """After epoch 1 the run directory becomes read-only: a read-only bind mount over it (root
    bypasses file modes), so creating epoch 2's shard fails with EROFS."""
    run_dir = Path(tempfile.mkdtemp(dir=work)) / "run"
    cmd = [PY, str(train), str(run_dir), on_error, str(EPOCH_ROWS), str(EPOCHS), "0", "0.3"]
    mounted = False
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    ) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line == "published 1\n":
                mounted = (
                    subprocess.run(["mount", "--bind", str(run_dir), str(run_dir)]).returncode == 0
                )
                if mounted:
                    ro = ["mount", "-o", "remount,bind,ro", str(run_dir)]
                    subprocess.run(ro, check=True)
                break
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return "hang", "read-only run directory"
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(run_dir)], check=False)
    if not mounted:
        return "ok", ""
    out = "".join(lines) + out
    if on_error == "default" and "read-only file system" not in err:
        return "crash", f"exit {proc.returncode}: {err.strip()[-300:]}"
    return judge_logger(run_dir, proc.returncode, out, err, on_error, 0)


# ----------------------------------------------------------------------------- compute helpers


def make_run(run_dir: Path, samples: int, epochs: int, seed: int) -> None:
    import torch

    from aum_replay import LogitLogger

    g = torch.Generator().manual_seed(seed)
    with LogitLogger(run_dir) as logger:
        for epoch in range(epochs):
            logits = torch.randn(samples, 10, generator=g)
            targets = torch.randint(0, 10, (samples,), generator=g)
            logger.log(logits, targets, torch.arange(samples), epoch=epoch)


OUTPUTS = ("aum_values.csv", "full_aum_records.csv")


def pair(out_dir: Path) -> tuple[bytes | None, ...]:
    return tuple((out_dir / n).read_bytes() if (out_dir / n).is_file() else None for n in OUTPUTS)


class Runs:
    """Three runs A, B, C with their reference outputs, computed once."""

    def __init__(self, work: Path, timeout: float) -> None:
        self.dirs: dict[str, Path] = {}
        self.refs: dict[str, tuple[bytes | None, ...]] = {}
        for name, samples, seed in (("A", 2000, 1), ("B", 3000, 2), ("C", 2500, 3)):
            run_dir = work / f"run{name}"
            if not run_dir.exists():
                make_run(run_dir, samples, 4, seed)
            ref = work / f"ref{name}"
            if not ref.exists():
                rc, _, err = run([*CLI, "compute", str(run_dir), "-o", str(ref), "-q"], timeout)
                if rc != 0:
                    raise SystemExit(f"reference compute failed: {err}")
            self.dirs[name], self.refs[name] = run_dir, pair(ref)

    def which(self, out_dir: Path) -> str:
        """'A'/'B'/'C' for a consistent pair, 'none' for no outputs, else 'mixed'."""
        got = pair(out_dir)
        if got == (None, None):
            return "none"
        for name, ref in self.refs.items():
            if got == ref:
                return name
        return "mixed"


def compute_disk_full(work: Path, tally: Tally, timeout: float) -> None:
    runs = Runs(work, timeout)

    def compute(run: str, out_dir: Path) -> list[str]:
        return ["compute", str(runs.dirs[run]), "-o", str(out_dir), "-q"]

    # Run B's outputs are ~600 KB; old outputs of A are there first.
    levels = (0, 4 << 10, 40 << 10, 120 << 10, 300 << 10, 450 << 10, 560 << 10, 2 << 20)
    for leave in levels:
        with small_fs(4 << 10) as fs:
            if fs is None:  # RLIMIT_FSIZE: the limit is the room the new outputs get
                out_dir, pre = work / f"fsize-out-{leave}", fsize_limit(max(leave, 1 << 10))
            else:
                out_dir, pre = fs / "out", None
            rc, _, err = run([*CLI, *compute("A", out_dir)], timeout)
            if rc != 0:
                raise SystemExit(f"compute A failed: {err}")
            if fs is not None:
                fill(fs, leave)
            rc, _, err = run([*CLI, *compute("B", out_dir)], timeout, preexec_fn=pre)
            state = runs.which(out_dir)
            left = leftovers(out_dir)
            if rc is None:
                tally.add("hang", f"leave {leave}")
            elif crashed(rc):
                tally.add("crash", f"leave {leave}: exit {rc}")
            elif state not in ("A", "B"):
                tally.add("lost_data", f"leave {leave}: outputs {state}")
            elif left:
                tally.add("silent_wrong", f"leave {leave}: left {left}")
            elif rc == 0:
                column = "ok" if state == "B" else "silent_wrong"
                tally.add(column, f"leave {leave}: exit 0 with outputs of {state}")
            elif rc == 1 and state == "A" and one_clear_line(err, r"^aum-replay: error: "):
                tally.add("clear_error")
            else:
                lines = len(err.strip().splitlines())
                tally.add("crash", f"leave {leave}: exit {rc}, {lines} lines: {err.strip()[-200:]}")


# ----------------------------------------------------------------------------- two_writers


def writers_of(run_dir: Path) -> dict[tuple[int, int], str]:
    from aum_replay.format import list_shards, read_info

    return {(e, r): read_info(p).metadata.get("writer", "?") for e, r, p in list_shards(run_dir)}


def refused_by(err: str, pid: int) -> bool:
    import socket

    host = re.escape(socket.gethostname())
    pattern = rf"^aum_replay\.errors\.RunLockedError: .* pid {pid} on host {host}"
    return one_clear_line(err, pattern)


def two_writers(work: Path, tally: Tally, timeout: float) -> None:
    writer = script(work, "writer", WRITER)

    def start(
        run_dir: Path, tag: str, rank: int = 0, world: int = 1, epochs: int = 4, delay: float = 0.05
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PY, str(writer), str(run_dir), tag, str(rank), str(world), str(epochs), str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )

    def finish(proc: subprocess.Popen[str]) -> tuple[int | None, str, str]:
        return wait(proc, timeout)

    # Started together (a job submitted twice), three times.
    for trial in range(3):
        run_dir = work / f"together{trial}"
        a, b = start(run_dir, "a", delay=0.6), start(run_dir, "b", delay=0.6)  # 2.4 s each
        (ra, _, ea), (rb, _, eb) = finish(a), finish(b)
        shards = writers_of(run_dir) if run_dir.exists() else {}
        tag_set = set(shards.values())
        if None in (ra, rb):
            tally.add("hang", "together")
        elif crashed(ra) or crashed(rb):
            tally.add("crash", f"together: exit {ra}, {rb}")
        elif ra == 0 and rb == 0:
            tally.add("silent_wrong", f"both recorded; shards by {sorted(tag_set)}")
        elif ra != 0 and rb != 0:
            tally.add("lost_data", f"neither recorded: {ea[-200:]} {eb[-200:]}")
        else:
            winner, lost_err, winner_pid = ("a", eb, a.pid) if ra == 0 else ("b", ea, b.pid)
            ok = tag_set == {winner} and len(shards) == 4
            if ok and refused_by(lost_err, winner_pid):
                tally.add("clear_error")
            else:
                tally.add(
                    "silent_wrong" if not ok else "crash", f"together: {tag_set} {lost_err[-200:]}"
                )

    # Staggered: the second starts while the first is mid-run, twice.
    for trial in range(2):
        run_dir = work / f"staggered{trial}"
        a = start(run_dir, "a", epochs=6, delay=1.0)  # alive for 4 s after epoch 1
        assert a.stdout is not None
        while a.stdout.readline() not in ("published 1\n", ""):
            pass
        rb, _, eb = finish(start(run_dir, "b", epochs=6, delay=0.0))
        ra, _, _ = finish(a)
        tags = writers_of(run_dir)
        if None in (ra, rb):
            tally.add("hang", "staggered")
        elif rb == 0 or set(tags.values()) != {"a"} or len(tags) != 6:
            tally.add("silent_wrong", f"staggered: b exit {rb}, shards {tags}")
        elif refused_by(eb, a.pid):
            tally.add("clear_error")
        else:
            tally.add("crash", f"staggered: {eb[-200:]}")

    # The old process is alive but stopped (SIGSTOP): refused; once it is killed, resume works.
    run_dir = work / "stopped"
    a = start(run_dir, "a", epochs=100, delay=0.05)
    assert a.stdout is not None
    while a.stdout.readline() not in ("published 1\n", ""):
        pass
    a.send_signal(signal.SIGSTOP)
    rb, _, eb = finish(start(run_dir, "b", epochs=3, delay=0.0))
    a.send_signal(signal.SIGKILL)
    a.communicate()
    rc, _, ec = finish(start(run_dir, "c", epochs=3, delay=0.0))
    tags = writers_of(run_dir)
    if None in (rb, rc):
        tally.add("hang", "stopped holder")
    elif rb == 0:
        tally.add("silent_wrong", f"second writer accepted beside a stopped one: {tags}")
    elif rc != 0:
        tally.add("lost_data", f"resume after SIGKILL refused: {ec[-200:]}")
    elif refused_by(eb, a.pid) and all(tags[(e, 0)] == "c" for e in range(3)):
        tally.add("clear_error")
    else:
        tally.add("crash", f"stopped holder: {eb[-200:]} {tags}")

    # Ranks of one run side by side.
    run_dir = work / "ranks"
    r0, r1 = start(run_dir, "r0", 0, 2), start(run_dir, "r1", 1, 2)
    (c0, _, e0), (c1, _, e1) = finish(r0), finish(r1)
    tags = writers_of(run_dir)
    if None in (c0, c1):
        tally.add("hang", "ranks")
    elif c0 == 0 and c1 == 0 and len(tags) == 8:
        tally.add("ok")
    else:
        tally.add("lost_data", f"ranks side by side refused: {e0[-200:]} {e1[-200:]}")


# ----------------------------------------------------------------------------- outputs_commit_set


def outputs_commit_set(work: Path, tally: Tally, timeout: float) -> None:
    runs = Runs(work, timeout)
    renames = script(work, "renames", RENAMES)

    def compute(run: str, out_dir: Path) -> list[str]:
        return ["compute", str(runs.dirs[run]), "-o", str(out_dir), "-q"]

    # SIGKILL right before / right after each rename into OUT_DIR, until compute needs no more.
    for when in ("after", "before"):
        for k in range(1, 8):
            out_dir = work / f"kill-{when}-{k}"
            run([*CLI, *compute("A", out_dir)], timeout)
            rc, _, err = run(
                [PY, str(renames), str(out_dir), str(k), "SIGKILL", when, *compute("B", out_dir)],
                timeout,
            )
            if rc is None:
                tally.add("hang", f"kill {when} {k}")
                continue
            finished = rc == 0
            if not finished and rc != -signal.SIGKILL:
                tally.add("crash", f"kill {when} {k}: exit {rc} {err[-200:]}")
                continue
            state = runs.which(out_dir)
            journal = any(n.startswith(".aum-replay-commit") for n in os.listdir(out_dir))
            # The next command: it must finish (or roll back) the killed one and clean up.
            rc2, _, err2 = run([*CLI, *compute("C", out_dir)], timeout)
            after = runs.which(out_dir)
            left = leftovers(out_dir)
            if rc2 is None:
                tally.add("hang", f"next command after kill {when} {k}")
            elif state == "mixed" and not journal:
                tally.add("silent_wrong", f"kill {when} {k}: a mix of two computes, no journal")
            elif state not in ("A", "B", "mixed"):
                tally.add("lost_data", f"kill {when} {k}: outputs {state}")
            elif rc2 != 0 or after != "C" or left:
                tally.add(
                    "silent_wrong",
                    f"kill {when} {k}: next exit {rc2}, {after}, left {left}: {err2[-200:]}",
                )
            elif finished:
                tally.add("ok")
            else:
                tally.add("clear_error")  # a consistent set, recovered by the next command
            if finished:
                break

    # Two computes into one OUT_DIR, the first paused (SIGSTOP) at one of its renames.
    for k in (1, 2):
        out_dir = work / f"pause-{k}"
        run([*CLI, *compute("A", out_dir)], timeout)
        first = subprocess.Popen(
            [PY, str(renames), str(out_dir), str(k), "SIGSTOP", "after", *compute("B", out_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and first.poll() is None and not stopped(first.pid):
            time.sleep(0.02)
        rc2, _, err2 = run([*CLI, *compute("C", out_dir)], 20)
        waited = rc2 is None
        first.send_signal(signal.SIGCONT)
        if waited:  # the second waited for the first: let the first finish, then run it again
            rc2, _, err2 = run([*CLI, *compute("C", out_dir)], timeout)
        try:
            first.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
            tally.add("hang", f"pause {k}: the paused compute never finished")
            continue
        state, left = runs.which(out_dir), leftovers(out_dir)
        if rc2 is None:
            tally.add("hang", f"pause {k}")
        elif crashed(rc2) or crashed(first.returncode):
            tally.add("crash", f"pause {k}: exit {first.returncode}, {rc2}")
        elif state not in ("B", "C"):
            tally.add("silent_wrong", f"pause {k}: outputs {state}")
        elif left:
            tally.add("silent_wrong", f"pause {k}: left {left}")
        elif rc2 == 1 and one_clear_line(err2, r"^aum-replay: error: "):
            tally.add("clear_error")
        elif rc2 == 0:
            tally.add("ok")
        else:
            tally.add("crash", f"pause {k}: {err2[-200:]}")


def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


# ----------------------------------------------------------------------------- ids_epochs_wrap


def ids_epochs_wrap(work: Path, tally: Tally, timeout: float) -> None:
    base = work / "wrap"
    base.mkdir()
    rc, out, err = run([PY, str(script(work, "wrap", WRAP)), str(base)], timeout)
    cases = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for case in cases:
        tally.add(case["outcome"], case["case"])
    missing = 9 - len(cases)
    for _ in range(missing):
        tally.add("hang" if rc is None else "crash", f"exit {rc}: {err.strip()[-300:]}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma-separated")
    parser.add_argument("--trials", type=int, default=1, help="repeat each sweep K times")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--notes", action="store_true", help="add notes on bad trials")
    args = parser.parse_args()
    chosen = [c for c in args.classes.split(",") if c]
    unknown = set(chosen) - set(CLASSES)
    if unknown:
        parser.error(f"unknown classes {sorted(unknown)}; choose from {', '.join(CLASSES)}")
    functions = {name: globals()[name] for name in CLASSES}
    start = time.monotonic()
    with small_fs(64) as probe:
        fault_fs = "tmpfs" if probe is not None else "RLIMIT_FSIZE"
    result: dict[str, Any] = {}
    notes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="aum-faults-") as tmp:
        work = Path(tmp)
        for name in chosen:
            tally = Tally()
            for trial in range(args.trials):
                trial_dir = work / f"{name}-{trial}"
                trial_dir.mkdir()
                functions[name](trial_dir, tally, args.timeout)
            result[name] = tally.counts
            if tally.notes:
                notes[name] = tally.notes
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    line: dict[str, Any] = {
        "tool": "faults",
        "commit": commit,
        "small_fs": fault_fs,
        "classes": result,
        "bad": sum(c[b] for c in result.values() for b in BAD),
        "seconds": round(time.monotonic() - start, 1),
    }
    if args.notes and notes:
        line["notes"] = notes
    print(json.dumps(line))


if __name__ == "__main__":
    main()
