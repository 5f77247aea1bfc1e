"""Runs read from fsspec URLs: the local replay of the same files is the reference, byte for byte.

The remote filesystem is real: a separate HTTP server process with byte ranges
(tests/range_server.py, through fsspec's HTTP filesystem and aiohttp), as an object store
serves a bucket, and fsspec's in-process ``memory://`` filesystem where a test must change a
file between two reads.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from shards import ddp_run, same_files
from typer.testing import CliRunner

from aum_replay import FormatError, InputError, compute, dynamics, flag, plot
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.dynamics import DYNAMICS_NAME
from aum_replay.format import ShardReader, list_shards, read_info
from aum_replay.location import URL, is_url, location
from aum_replay.run import open_run

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem
runner = CliRunner()
DATA = Path(__file__).parent / "data"


#: This module's runs: 3 epochs, 2 repeated ids an epoch, 5 classes.
record = functools.partial(ddp_run, epochs=3, pad=2, classes=5)


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_stats") as response:
        return json.loads(response.read())


def test_what_is_a_url() -> None:
    assert is_url("s3://bucket/run") and is_url("simplecache::s3://bucket/run")
    assert is_url("file:///tmp/run") and is_url(URL("memory://x"))
    assert not is_url("runs/set1") and not is_url("/tmp/a::b") and not is_url(Path("s3:/x"))
    assert location("http://h/run/") == URL("http://h/run")
    assert location("~/run") == Path("~/run").expanduser()
    assert URL("http://h/a/b").name == "b" and URL("http://h/a/b").parent == URL("http://h/a")


def test_an_existing_local_directory_named_like_a_url_stays_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert location("run::2") == URL("run::2")  # nothing of that name here: a chained URL
    record(tmp_path / "run::2", ids=list(range(20)), epochs=1)
    assert location("run::2") == Path("run::2")
    assert open_run("run::2").num_rows == 22


@pytest.mark.parametrize(
    ("ids", "storage"),
    [
        (list(range(0, 600, 2)), "auto"),
        ([f'img_{i:04d},é"q' for i in range(200)], "auto"),
        (list(range(300)), "summary"),
    ],
    ids=["int-ids", "string-ids", "summary-storage"],
)
def test_compute_over_http_is_the_local_replay(
    served: tuple[Path, str], tmp_path: Path, ids: list[Any], storage: str
) -> None:
    root, base = served
    name = f"run-{storage}-{type(ids[0]).__name__}"
    run = record(root / name, ids=ids, storage=storage)
    local = compute(run, tmp_path / "local")
    before = stats(base)
    remote = compute(f"{base}/{name}/", tmp_path / "http")
    after = stats(base)
    same_files(tmp_path / "local", tmp_path / "http", (VALUES_NAME, FULL_NAME))
    assert remote.run_dir == URL(f"{base}/{name}")
    assert remote.num_measurements == local.num_measurements
    assert remote.duplicates_dropped == local.duplicates_dropped > 0
    assert after["ranged"] > before["ranged"]  # read at offsets, not downloaded whole


def test_v1_shards_over_http_go_through_hdf5_file_objects(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    """v1 has no manifest: HDF5 itself reads the attributes and string ids, through h5py's
    file-object driver on fsspec's file."""
    root, base = served
    shutil.copytree(DATA / "v1_run", root / "v1_run")
    compute(DATA / "v1_run", tmp_path / "local")
    compute(f"{base}/v1_run", tmp_path / "http")
    same_files(tmp_path / "local", tmp_path / "http", (VALUES_NAME, FULL_NAME))
    info = read_info(URL(f"{base}/v1_run") / "epoch_00000.rank_000.h5")
    assert info.format_version == 1 and info.num_rows > 0


def test_dynamics_flag_and_info_over_http(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    run = record(root / "dyn", ids=list(range(250)), epochs=4)
    url = f"{base}/dyn"
    dynamics(run, tmp_path / "local")
    dynamics(url, tmp_path / "http", epochs="1:3")
    dynamics(run, tmp_path / "local13", epochs="1:3")
    assert (tmp_path / "http" / DYNAMICS_NAME).read_bytes() == (
        tmp_path / "local13" / DYNAMICS_NAME
    ).read_bytes()
    a = flag(run, tmp_path / "flag-local", fraction=0.1)
    b = flag(url, tmp_path / "flag-http", fraction=0.1)
    assert a.flagged_ids == b.flagged_ids
    summary = json.loads((tmp_path / "flag-http" / "flag_summary.json").read_text())
    assert summary["runs"][0]["run_dir"] == url
    pngs = plot(url, tmp_path / "png", flags=b, lowest=3)
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    result = runner.invoke(app, ["info", url, "--verify"])
    assert result.exit_code == 0, result.output
    assert f"run       {url}" in result.output
    assert "verified" in result.output and "in 8 shards verified" in result.output


def test_validation_reads_the_manifests_not_the_rows(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = served
    run = record(root / "big", ids=list(range(4000)), classes=200, epochs=2)
    size = sum(p.stat().st_size for p in run.iterdir())
    before = stats(base)
    opened = open_run(f"{base}/big")
    assert [s.path.name for s in opened.shards] == [p.name for _, _, p in list_shards(run)]
    moved = stats(base)["bytes"] - before["bytes"]
    assert moved < size / 20, (moved, size)


def test_a_corrupt_byte_over_http_is_one_error_naming_the_shard(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = served
    run = record(root / "corrupt", ids=list(range(200)))
    shard = run / "epoch_00001.rank_001.h5"
    offset = read_info(shard).raw["logits"].offsets[0] + 7
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x04
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "aum_replay.cli", "compute", f"{base}/corrupt", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{base}/corrupt/epoch_00001.rank_001.h5" in lines[0] and "checksum" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_missing_runs_and_unknown_schemes_are_clear_errors(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    _, base = served
    with pytest.raises(FormatError, match="run directory does not exist"):
        open_run(f"{base}/no-such-run")
    with pytest.raises(InputError, match="fsspec cannot open this URL"):
        open_run("nosuchscheme://bucket/run")
    result = runner.invoke(app, ["compute", "nosuchscheme://bucket/run", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "fsspec cannot open" in result.stderr


def test_without_fsspec_a_url_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(InputError, match=r"pip install 'aum-replay\[remote\]'"):
        open_run("s3://bucket/run")


@pytest.fixture
def memory_run(tmp_path: Path) -> tuple[Path, str]:
    """A run written locally and copied into fsspec's in-process memory filesystem."""
    run = record(tmp_path / "run", ids=list(range(120)), epochs=2)
    fs = fsspec.filesystem("memory")
    name = f"/runs/{tmp_path.name}"
    for path in run.iterdir():
        fs.pipe(f"{name}/{path.name}", path.read_bytes())
    yield run, f"memory://{name}"
    fs.rm(name, recursive=True)


def test_memory_filesystem_and_a_shard_replaced_after_validation(
    memory_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, url = memory_run
    compute(run, tmp_path / "local")
    compute(url, tmp_path / "memory")
    same_files(tmp_path / "local", tmp_path / "memory", (VALUES_NAME, FULL_NAME))
    opened = open_run(url)
    shard = opened.shards[-1]
    # republished (a resumed run): same name, same size, a new object
    fs, inner = fsspec.core.url_to_fs(str(shard.path))
    time.sleep(0.01)
    fs.pipe(inner, fs.cat(inner))
    assert fs.info(inner)["size"] == shard.nbytes
    with (
        pytest.raises(FormatError, match="changed since it was validated"),
        ShardReader(shard.path, info=shard) as reader,
    ):
        reader.read_ids()


def test_a_failing_store_is_one_error_naming_the_shard(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    """A 500 from the store (aiohttp's ClientResponseError, not an OSError) is the usual one
    line naming the shard, from the library and from the CLI."""
    root, base = served
    record(root / "failing", ids=list(range(50)), epochs=1)
    flag_file = root / "_fail_ranges"
    flag_file.touch()
    try:
        with pytest.raises(FormatError, match=r"failing/epoch_00000\.rank_000\.h5.*500"):
            compute(f"{base}/failing", tmp_path / "out")
        result = runner.invoke(app, ["compute", f"{base}/failing", "-o", str(tmp_path / "o")])
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert "epoch_00000.rank_000.h5" in result.stderr
    finally:
        flag_file.unlink()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_store_that_gives_no_size_is_refused_and_nothing_stays_open(
    memory_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = memory_run
    fs = fsspec.filesystem("memory")
    info = type(fs).info
    monkeypatch.setattr(
        type(fs), "info", lambda self, p, **kw: {**info(self, p, **kw), "size": None}
    )
    opened: list[Any] = []
    real_open = type(fs).open
    monkeypatch.setattr(
        type(fs),
        "open",
        lambda self, *a, **kw: opened.append(real_open(self, *a, **kw)) or opened[-1],
    )
    with pytest.raises(FormatError, match="does not say the file's size"):
        open_run(url)
    assert opened == []  # refused before anything was opened


def test_two_names_of_one_epoch_and_rank_are_refused(tmp_path: Path) -> None:
    run = record(tmp_path / "run", ids=list(range(30)), epochs=1, world_size=1)
    shutil.copy(run / "epoch_00000.rank_000.h5", run / "epoch_000000.rank_000.h5")
    with pytest.raises(FormatError, match="two shards of epoch 0 rank 0"):
        open_run(run)
