"""The id scan of string ids runs beside the reading of the logits (replay.scan_and_stream):
the same files whatever the timing, and an error on either side stops the other."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aum_replay import LogitLogger, compute, dynamics, replay
from aum_replay.errors import FormatError
from aum_replay.run import ScanStopped, scan_ids


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overlap") / "run"
    rng = np.random.default_rng(5)
    names = [f"img_{i:05d}.png" for i in range(900)]
    with LogitLogger(path, rank=0, world_size=1) as logger:
        for epoch in range(4):
            order = rng.permutation(900 - 50 * (epoch == 0))  # epoch 1 brings 50 new ids
            for lo in range(0, len(order), 64):
                part = order[lo : lo + 64]
                logits = torch.from_numpy(rng.standard_normal((len(part), 7)).astype(np.float32))
                logger.log(logits, part % 7, [names[i] for i in part], epoch=epoch)
            logger.end_epoch()
    return path


@pytest.fixture
def threads_left() -> Any:
    """Threads started since the test began that are still alive (by name)."""
    before = set(threading.enumerate())
    return lambda: [t.name for t in threading.enumerate() if t not in before]


@pytest.fixture
def sequential(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The replay with the scan first, nothing beside it."""
    out = tmp_path_factory.mktemp("sequential") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay, "resolves_rows", lambda shards, kind: False)
        compute(run, out, block_bytes=4096)
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("ahead", [0, 1 << 20])
def test_blocks_computed_before_the_scan_ends_give_the_same_files(
    run: Path,
    sequential: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    ahead: int,
    threads_left: Any,
) -> None:
    computed = threading.Semaphore(0)
    real_read, real_scan = replay.read_segment, replay.scan_ids
    waited: list[int] = []

    def read_segment(*args: Any) -> Any:
        segment = real_read(*args)
        computed.release()
        return segment

    def slow_scan(*args: Any) -> Any:  # holds back until the workers got ahead of it
        got = sum(computed.acquire(timeout=0.5) for _ in range(6 if workers else 0))
        waited.append(got)
        return real_scan(*args)

    monkeypatch.setattr(replay, "read_segment", read_segment)
    monkeypatch.setattr(replay, "scan_ids", slow_scan)
    monkeypatch.setattr(replay, "AHEAD_BYTES", ahead)
    out = tmp_path / "out"
    compute(run, out, block_bytes=4096, workers=workers)
    assert same_files(out, sequential)
    if workers:  # blocks read and through the kernel before the scan ran: six held, or as
        assert waited == [6 if ahead else 2 * workers]  # many as the workers have in flight
    assert threads_left() == []
    with monkeypatch.context() as patch:
        patch.setattr(replay, "resolves_rows", lambda shards, kind: False)
        before = dynamics(run, block_bytes=4096)
    assert dynamics(run, block_bytes=4096, workers=workers).equals(before, null_equal=True)


def test_a_block_that_fails_while_the_scan_runs_stops_the_scan(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads_left: Any
) -> None:
    real_read = replay.read_segment
    stopped: list[bool] = []

    def read_segment(*args: Any) -> Any:
        if args[1] > 0:  # a block after the first of its shard
            raise FormatError("block 2 is corrupt")
        return real_read(*args)

    def waiting_scan(shards: Any, kind: str, stop: threading.Event) -> Any:
        stopped.append(stop.wait(timeout=30))  # until the replay gives up
        return scan_ids(shards, kind, stop)  # raises ScanStopped before its first shard

    monkeypatch.setattr(replay, "read_segment", read_segment)
    monkeypatch.setattr(replay, "scan_ids", waiting_scan)
    with pytest.raises(FormatError, match="block 2 is corrupt"):
        compute(run, tmp_path / "out", block_bytes=4096)
    assert stopped == [True] and threads_left() == []
    assert not (tmp_path / "out").exists()


def test_a_scan_that_fails_stops_the_blocks(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads_left: Any
) -> None:
    started = threading.Event()
    real_read = replay.read_segment

    def read_segment(*args: Any) -> Any:
        started.set()
        return real_read(*args)

    def failing_scan(*args: Any) -> Any:
        started.wait(timeout=30)
        raise FormatError("an id blob is corrupt")

    monkeypatch.setattr(replay, "read_segment", read_segment)
    monkeypatch.setattr(replay, "scan_ids", failing_scan)
    with pytest.raises(FormatError, match="an id blob is corrupt"):
        compute(run, tmp_path / "out", block_bytes=4096)
    assert threads_left() == []
    assert not (tmp_path / "out").exists()


def test_a_stopped_scan_reads_no_further_shard(run: Path) -> None:
    from aum_replay.run import open_run

    stop = threading.Event()
    stop.set()
    with pytest.raises(ScanStopped):
        scan_ids(open_run(run, None).shards, "str", stop)
