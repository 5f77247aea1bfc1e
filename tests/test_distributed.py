"""The replay on a real Dask cluster: the single-machine replay is the reference, byte for byte.

One ``LocalCluster(processes=True, n_workers=2)`` serves the module: real worker processes that
open the shards by path, a real scheduler, real pickling. Tasks are made small
(``TASK_BYTES``), so that every run is many tasks and segments arrive out of order.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shards import ddp_run as record
from shards import same_files
from typer.testing import CliRunner

from aum_replay import AumReplayError, FormatError, compute, dynamics
from aum_replay import distributed as dist
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.dynamics import DYNAMICS_NAME
from aum_replay.format import read_info

distributed = pytest.importorskip("distributed")
runner = CliRunner()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(autouse=True)
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "TASK_BYTES", 3000)  # ~100 rows of 7 float32 logits a task


@pytest.mark.parametrize("duplicates", ["first", "all"])
def test_int_ids_ranks_and_padding_match_the_local_replay(
    client: Any, tmp_path: Path, duplicates: str
) -> None:
    run = record(tmp_path / "run", ids=list(range(0, 900, 3)))
    local = compute(run, tmp_path / "local", duplicates=duplicates)  # type: ignore[arg-type]
    remote = compute(run, tmp_path / "dask", duplicates=duplicates, client=client)  # type: ignore[arg-type]
    same_files(tmp_path / "local", tmp_path / "dask", (VALUES_NAME, FULL_NAME))
    assert remote.duplicates_dropped == local.duplicates_dropped
    assert remote.num_measurements == local.num_measurements
    assert (local.duplicates_dropped > 0) == (duplicates == "first")


def test_string_ids_and_epoch_subsets(client: Any, tmp_path: Path) -> None:
    ids = [f'img_{i:04d},é"q' for i in range(250)]
    run = record(tmp_path / "run", ids=ids, world_size=3, epochs=5)
    for spec in ("1:3", "skip:1", "0,4"):
        compute(run, tmp_path / f"local{spec}", epochs=spec)
        compute(run, tmp_path / f"dask{spec}", epochs=spec, client=client)
        same_files(tmp_path / f"local{spec}", tmp_path / f"dask{spec}", (VALUES_NAME, FULL_NAME))


def test_dynamics_match_the_local_replay(client: Any, tmp_path: Path) -> None:
    run = record(tmp_path / "run", ids=list(range(400)))
    a = dynamics(run, tmp_path / "local")
    b = dynamics(run, tmp_path / "dask", client=client)
    assert a.equals(b)
    same_files(tmp_path / "local", tmp_path / "dask", (DYNAMICS_NAME,))
    c = dynamics(run, tmp_path / "some", metrics=["aum", "el2n"], epochs="2:", client=client)
    assert c.equals(dynamics(run, metrics=["aum", "el2n"], epochs="2:"))


def test_a_worker_killed_mid_replay_changes_nothing(client: Any, tmp_path: Path) -> None:
    """SIGKILL one worker process once the first segment is folded: the scheduler reruns its
    tasks elsewhere (the nanny restarts it) and the files are still the local replay's."""
    run = record(tmp_path / "run", ids=list(range(3000)), epochs=3, pad=0)
    compute(run, tmp_path / "local")
    before = client.run(os.getpid)
    victim = next(iter(before.values()))
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    compute(run, tmp_path / "dask", client=client, progress=progress)
    same_files(tmp_path / "local", tmp_path / "dask", (VALUES_NAME, FULL_NAME))
    assert killed == [victim]
    deadline = time.monotonic() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the nanny brings the worker back for the next tests
    assert victim not in client.run(os.getpid).values()


def test_a_corrupt_shard_is_one_error_naming_it_and_nothing_is_written(
    client: Any, tmp_path: Path
) -> None:
    run = record(tmp_path / "run", ids=list(range(300)))
    shard = run / "epoch_00002.rank_001.h5"
    # One flipped byte inside the logits: only a task reads it, and its checksum fails there.
    offset = read_info(shard).raw["logits"].offsets[0] + 13
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x10]))
    with pytest.raises(FormatError, match=r"epoch_00002\.rank_001\.h5"):
        compute(run, tmp_path / "out", client=client)
    with pytest.raises(FormatError, match=r"epoch_00002\.rank_001\.h5"):
        compute(run, tmp_path / "out")  # the local replay finds the same byte
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_served_over_http_replays_on_the_workers(
    client: Any, served: tuple[Path, str], tmp_path: Path
) -> None:
    """Workers that share no filesystem with the client: each task opens its shard by URL
    (fsspec's HTTP filesystem, ranged reads) on its own worker process."""
    pytest.importorskip("aiohttp")
    root, base = served
    run = record(root / "dask-http", ids=[f"s{i}" for i in range(300)], world_size=3)
    compute(run, tmp_path / "local")
    remote = compute(f"{base}/dask-http", tmp_path / "dask", client=client)
    same_files(tmp_path / "local", tmp_path / "dask", (VALUES_NAME, FULL_NAME))
    assert str(remote.run_dir) == f"{base}/dask-http"
    dynamics(run, tmp_path / "dyn-local")
    dynamics(f"{base}/dask-http", tmp_path / "dyn-dask", client=client)
    same_files(tmp_path / "dyn-local", tmp_path / "dyn-dask", (DYNAMICS_NAME,))


def test_cli_dask_local_cluster(tmp_path: Path) -> None:
    run = record(tmp_path / "run", ids=list(range(200)))
    compute(run, tmp_path / "local")
    result = runner.invoke(app, ["compute", str(run), "-o", str(tmp_path / "d"),
                                 "--dask", "local:2", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    same_files(tmp_path / "local", tmp_path / "d", (VALUES_NAME, FULL_NAME))


def test_cli_errors_without_a_scheduler_or_without_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = record(tmp_path / "run", ids=list(range(50)), epochs=1)
    result = runner.invoke(app, ["compute", str(run), "-o", str(tmp_path / "o"),
                                 "--dask", "tcp://127.0.0.1:9"])  # fmt: skip
    assert result.exit_code == 1
    assert "no Dask scheduler reachable at 'tcp://127.0.0.1:9'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["dynamics", str(run), "-o", str(tmp_path / "o"),
                                 "--dask", "local:zero"])  # fmt: skip
    assert result.exit_code == 1 and "local:N needs a number of workers" in result.stderr
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    result = runner.invoke(app, ["flag", str(run), "-o", str(tmp_path / "o"),
                                 "--alpha", "0", "--dask", "local:1"])  # fmt: skip
    assert result.exit_code == 1
    assert "pip install 'aum-replay[dask]'" in result.stderr
    with pytest.raises(AumReplayError, match="aum-replay\\[dask\\]"), dist.connect("local:1"):
        pass


def test_flag_on_the_cluster_writes_the_local_files(client: Any, tmp_path: Path) -> None:
    from aum_replay import flag

    run = record(tmp_path / "run", ids=list(range(300)))
    local = flag(run, tmp_path / "local", fraction=0.1)
    remote = flag(run, tmp_path / "dask", fraction=0.1, client=client)
    assert remote.num_flagged == local.num_flagged > 0
    names = tuple(p.name for p in (tmp_path / "local").iterdir() if p.suffix == ".csv")
    assert names
    same_files(tmp_path / "local", tmp_path / "dask", names)
