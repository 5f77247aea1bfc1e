"""Format v2: the committed fixture, v1 = v2 on the same rows, checksums, run ids, no vlen strings.

``tests/data/v2_run`` (``tools/make_v2_fixture.py``) holds the v1 fixture's rows in format v2, so
its replay must give the v1 fixture's reference files. Damaged shards are real files with real
flipped bytes; every flip must end in the one-line error naming the shard or in output files
identical to the clean run's.
"""

from __future__ import annotations

import filecmp
import functools
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aum_replay
from aum_replay import FormatError, InputError, LogitLogger, manifest
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.dynamics import dynamics
from aum_replay.format import ChunkMap, ShardReader, list_shards, read_info
from aum_replay.run import open_run

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def write_run(
    run: Path,
    *,
    version: int = 2,
    kind: str = "int",
    dtype: torch.dtype = torch.float32,
    epochs: int = 3,
    n: int = 90,
    c: int = 5,
    seed: int = 0,
    **options: object,
) -> Path:
    """The same rows for any version: a DDP-like padded duplicate, a tie and a NaN included."""
    g = torch.Generator().manual_seed(seed)
    with LogitLogger(run, chunk_bytes=1024, format_version=version, **options) as logger:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g)
            order = torch.cat([order, order[:1]])  # one id twice in the epoch
            logits = torch.randn(len(order), c, generator=g).to(dtype)
            logits[3] = torch.tensor([1.0, 2.0, 2.0] + [0.0] * (c - 3)).to(dtype)  # a tie
            if epoch == 1:
                logits[5, 2] = float("nan")
            for start in range(0, len(order), 13):
                part = order[start : start + 13]
                ids = part if kind == "int" else [f"s-{i}-é" for i in part.tolist()]
                logger.log(logits[start : start + 13], part % c, ids, epoch=epoch)
    return run


def same_files(a: Path, b: Path, names: tuple[str, ...] = (VALUES_NAME, FULL_NAME)) -> bool:
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in names)


def test_the_v2_fixture_replays_to_the_reference_files(tmp_path: Path) -> None:
    run = DATA / "v2_run"
    infos = [read_info(path) for _, _, path in list_shards(run)]
    assert [(i.epoch, i.rank, i.format_version) for i in infos] == [
        (0, 0, 2),
        (0, 1, 2),
        (1, 0, 2),
        (1, 1, 2),
    ]
    assert {i.run_id for i in infos} == {"fixture-v2"} and {i.storage for i in infos} == {"logits"}
    assert infos[0].created_utc == "2025-01-01T00:00:00+00:00"
    # Written before XXH3 was chosen: its groups hold CRC32C, named nowhere, checked all the same.
    assert {i.checksum for i in infos} == {"crc32c"}
    for info in infos:
        with ShardReader(info.path, info=info) as reader:
            assert reader.verify_all() > 0
    for duplicates in ("all", "first"):
        aum_replay.compute(run, tmp_path / duplicates, duplicates=duplicates)
        assert same_files(tmp_path / duplicates, DATA / "v1_expected" / duplicates)
    # ... and its rows are the v1 fixture's, bit for bit.
    for (_, _, v1), (_, _, v2) in zip(list_shards(DATA / "v1_run"), list_shards(run), strict=True):
        with ShardReader(v1) as a, ShardReader(v2) as b:
            for x, y in zip(a.read_arrays(0, 10), b.read_arrays(0, 10), strict=True):
                assert x.tobytes() == y.tobytes()
            assert a.read_ids().tolist() == b.read_ids().tolist()


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("int", torch.float32),
        ("str", torch.float32),
        ("int", torch.bfloat16),
        ("str", torch.float16),
    ],
)
def test_v1_and_v2_of_the_same_logits_replay_to_identical_files(
    tmp_path: Path, kind: str, dtype: torch.dtype
) -> None:
    for version in (1, 2):
        run = write_run(tmp_path / f"v{version}", version=version, kind=kind, dtype=dtype)
        for duplicates in ("first", "all"):
            aum_replay.compute(run, tmp_path / f"out{version}{duplicates}", duplicates=duplicates)
    for duplicates in ("first", "all"):
        assert same_files(tmp_path / f"out1{duplicates}", tmp_path / f"out2{duplicates}")
    one, two = (dynamics(tmp_path / f"v{v}") for v in (1, 2))
    assert one.equals(two, null_equal=True)


def test_string_ids_read_back_in_any_blocks(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", kind="str", n=200, epochs=1)
    path = list_shards(run)[0][2]
    with ShardReader(path) as reader:
        every = reader.read_ids().tolist()
        assert len(every) == 201 and every[0].startswith("s-") and every[0].endswith("-é")
        for step in (1, 7, 64, 500):  # groups are cut anywhere
            parts = [reader.read_ids(a, b).tolist() for a, b in reader.blocks(step)]
            assert [i for part in parts for i in part] == every
            keys = np.concatenate([reader.read_id_keys(a, b) for a, b in reader.blocks(step)])
            assert [k.decode() for k in keys] == every


def test_a_v2_shard_has_no_variable_length_strings_and_only_two_attributes(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path / "run", kind="str")
    with h5py.File(list_shards(run)[0][2], "r") as f:
        assert sorted(f.attrs) == ["format", "format_version"]
        assert f.attrs["format"] == b"aum-replay-shard" and f.attrs["format_version"] == 2
        for name in f:
            assert h5py.check_string_dtype(f[name].dtype) is None, name
        for key in f.attrs:
            assert h5py.check_string_dtype(f.attrs.get_id(key).dtype) in (None,) or not (
                f.attrs.get_id(key).get_type().is_variable_str()
            )


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("v2flips")
    run = write_run(base / "run", kind="str", epochs=2)
    result = runner.invoke(app, ["compute", str(run), "-o", str(base / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    return run, base / "out"


def test_flipped_bytes_end_in_one_clear_line_or_identical_files(
    clean: tuple[Path, Path], tmp_path: Path
) -> None:
    run, clean_out = clean
    name = list_shards(run)[1][2].name
    size = (run / name).stat().st_size
    rng = np.random.default_rng(13)
    # Offsets spread over the whole file, the manifest and trailer included.
    offsets = sorted({*rng.integers(0, size, 24).tolist(), size - 1, size - 20, size - 300})
    errors = 0
    for k, offset in enumerate(offsets):
        damaged = tmp_path / f"run{k}"
        shutil.copytree(run, damaged)
        data = bytearray((damaged / name).read_bytes())
        data[offset] ^= int(rng.integers(1, 256))
        (damaged / name).write_bytes(bytes(data))
        out = tmp_path / f"out{k}"
        result = runner.invoke(app, ["compute", str(damaged), "-o", str(out), "--quiet"])
        if result.exit_code == 0:
            assert same_files(out, clean_out), f"offset {offset}: a different result"
        else:
            lines = result.stderr.splitlines()
            assert result.exit_code == 1 and len(lines) == 1, (offset, result.output)
            assert lines[0].startswith("aum-replay: error: ") and name in lines[0], lines
            assert not out.exists()
            errors += 1
    assert errors > 0  # the sample did hit bytes the replay uses


def test_info_verify_reads_every_byte_and_names_the_corrupt_shard(
    clean: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = clean
    result = runner.invoke(app, ["info", str(run), "--verify"])
    assert result.exit_code == 0, result.output
    assert "format    v2 (checksummed); run id " in result.output
    assert "storage logits" in result.output and "verified" in result.output
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    path = list_shards(damaged)[0][2]
    at = read_info(path).raw["logits"].offsets[0] + 17  # inside a logit: info alone cannot tell
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    assert runner.invoke(app, ["info", str(damaged)]).exit_code == 0
    result = runner.invoke(app, ["info", str(damaged), "--verify"])
    assert result.exit_code == 1
    rows = read_info(path).group_rows
    assert result.stderr.splitlines() == [
        f"aum-replay: error: {path}: checksum mismatch in logits rows 0:{rows}; "
        "the shard is corrupt"
    ]


def rewrite_manifest(path: Path, change: dict[str, object]) -> None:
    """Replace a v2 shard's manifest with an edited one, checksummed anew."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        found = manifest.read(functools.partial(os.pread, f.fileno()), size)
    assert isinstance(found, tuple)
    record, table, start = found
    data = path.read_bytes()[:start]
    path.write_bytes(data + manifest.pack({**record, **change}, table))


def stored_rows(data: bytes, chunks: ChunkMap, lo: int, hi: int) -> bytes:
    """The bytes of rows ``[lo, hi)`` of a dataset whose chunks lie at ``chunks.offsets``."""
    parts = []
    for row in range(lo, hi):
        chunk, within = divmod(row, chunks.chunk_rows)
        at = chunks.offsets[chunk] + within * chunks.row_bytes
        parts.append(data[at : at + chunks.row_bytes])
    return b"".join(parts)


def test_groups_are_checked_with_the_algorithm_their_manifest_names(tmp_path: Path) -> None:
    """New shards hold XXH3-64; a CRC32C shard (the fixture's kind, no algorithm named) is still
    checked with CRC32C, so its flipped byte is caught; an unknown algorithm is refused."""
    run = write_run(tmp_path / "run", epochs=1)
    path = list_shards(run)[0][2]
    info = read_info(path)
    assert info.checksum == manifest.GROUP_SUM == "xxh3_64"
    logits = info.raw["logits"]
    first = stored_rows(path.read_bytes(), logits, 0, info.group_rows)
    assert int(info.checksums["logits"][0]) == manifest.group_sum(first, "xxh3_64")
    with ShardReader(path) as reader:
        assert reader.verify_all() > 0

    # The same shard as a CRC32C-era writer left it: CRC32C sums, no "checksum" in the manifest.
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        found = manifest.read(functools.partial(os.pread, f.fileno()), size)
    assert isinstance(found, tuple)
    record, table, start = found
    table = table.copy()
    data = path.read_bytes()
    for name, entry in record["datasets"].items():  # int ids: every dataset's chunks are raw
        chunks, (at, count) = info.raw[name], entry["checksums"]
        for g in range(count):
            lo, hi = g * info.group_rows, min((g + 1) * info.group_rows, info.num_rows)
            table[at + g] = manifest.checksum(stored_rows(data, chunks, lo, hi))
    old = {k: v for k, v in record.items() if k != "checksum"}
    path.write_bytes(data[:start] + manifest.pack(old, table))
    assert read_info(path).checksum == "crc32c"
    out = tmp_path / "out"
    aum_replay.compute(run, out)
    clean = tmp_path / "clean"
    aum_replay.compute(write_run(tmp_path / "again", epochs=1), clean)
    assert same_files(out, clean)
    damaged = bytearray(path.read_bytes())
    damaged[logits.offsets[0] + 9] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(FormatError, match="checksum mismatch in logits rows 0:"):
        aum_replay.compute(run, tmp_path / "bad")

    rewrite_manifest(path, {"checksum": "blake3"})
    with pytest.raises(FormatError, match="unknown checksum 'blake3'; upgrade aum-replay"):
        read_info(path)


def test_a_newer_manifest_version_is_refused_with_upgrade_advice(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", epochs=1)
    path = list_shards(run)[0][2]
    rewrite_manifest(path, {"format_version": 3})
    with pytest.raises(FormatError, match=r"version 3 is newer .* upgrade aum-replay") as info:
        read_info(path)
    assert str(path) in str(info.value)
    result = runner.invoke(app, ["info", str(run)])
    assert result.exit_code == 1 and "upgrade aum-replay" in result.stderr


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"num_rows": True}, "num_rows", "int"),  # JSON's true is not a row count
        ({"epoch": 1.0}, "epoch", "int"),
        ({"run_id": None}, "run_id", "str"),
        ({"storage": 7}, "storage", "str"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_refused_naming_it(
    tmp_path: Path, change: dict[str, object], field: str, kind: str
) -> None:
    """A manifest that passed its checksum but was written wrong (a writer's bug): the field is
    named, whatever else is in the record."""
    run = write_run(tmp_path / "run", epochs=1)
    path = list_shards(run)[0][2]
    rewrite_manifest(path, change)
    with pytest.raises(FormatError, match=f"manifest field '{field}' is missing or not {kind}"):
        read_info(path)


def test_an_hdf5_rewrite_that_drops_the_manifest_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", epochs=1)
    path = list_shards(run)[0][2]
    with h5py.File(path, "r+") as f:  # HDF5 truncates the file to its own end on close
        f.attrs["note"] = 1
    with pytest.raises(FormatError, match="manifest at the end of the file is missing"):
        read_info(path)


def test_ranks_share_one_run_id_and_a_resumed_logger_keeps_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    loggers = [LogitLogger(run, rank=r, world_size=2) for r in range(2)]
    for rank, logger in enumerate(loggers):
        logger.log(
            torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4) + 4 * rank, epoch=0
        )
        logger.close()
    ids = {read_info(p).run_id for _, _, p in list_shards(run)}
    assert len(ids) == 1 and (run / ".run_id").read_text().strip() in ids
    (run / ".run_id").unlink()  # the shards alone carry it
    with LogitLogger(run) as logger:
        logger.log(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4), epoch=1)
    assert {read_info(p).run_id for _, _, p in list_shards(run)} == ids
    with pytest.raises(
        InputError, match=f"run_id 'other' was given, but the run already has run id '{ids.pop()}'"
    ):
        LogitLogger(run, run_id="other")


def test_a_shard_copied_in_from_another_run_is_refused_naming_both(tmp_path: Path) -> None:
    one = write_run(tmp_path / "one", epochs=2)
    two = write_run(tmp_path / "two", epochs=3, seed=1)
    shutil.copy(two / "epoch_00002.rank_000.h5", one / "epoch_00002.rank_000.h5")
    ids = [read_info(run / "epoch_00000.rank_000.h5").run_id for run in (one, two)]
    with pytest.raises(FormatError) as info:
        open_run(one)
    message = str(info.value)
    assert "epoch_00002.rank_000.h5: run id" in message and "epoch_00000.rank_000.h5" in message
    assert ids[0] in message and ids[1] in message
    result = runner.invoke(app, ["compute", str(one), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def threshold(set_index: int) -> dict[str, object]:
    return {
        "sample_ids": list(range(set_index, 20, 3)),
        "extra_class": 4,
        "seed": 0,
        "set_index": set_index,
    }


def test_a_v1_shard_of_another_threshold_set_is_refused_too(tmp_path: Path) -> None:
    one = write_run(tmp_path / "one", version=1, epochs=2, threshold_samples=threshold(1))
    two = write_run(tmp_path / "two", version=1, epochs=3, threshold_samples=threshold(2))
    shutil.copy(two / "epoch_00002.rank_000.h5", one / "epoch_00002.rank_000.h5")
    with pytest.raises(FormatError, match=r"threshold samples set 2 .* has set 1"):
        open_run(one)


def test_a_resumed_logger_with_another_threshold_set_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path / "run", epochs=1, threshold_samples=threshold(1))
    with pytest.raises(InputError) as info:
        LogitLogger(run, threshold_samples=threshold(2))
    message = str(info.value)
    assert "threshold samples are set 2" in message and "resumes has set 1" in message
    with pytest.raises(InputError, match="threshold samples are none"):
        LogitLogger(run)
    with LogitLogger(run, threshold_samples=threshold(1)) as logger:  # the same set resumes
        logger.log(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), torch.arange(2), epoch=1)


def test_a_resumed_logger_keeps_the_runs_format_and_refuses_another(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", version=1, epochs=1)
    with LogitLogger(run) as logger:  # a v1 run goes on in v1
        logger.log(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), torch.arange(2), epoch=1)
    assert [read_info(p).format_version for _, _, p in list_shards(run)] == [1, 1]
    with pytest.raises(InputError, match=r"written in format v1 .* not v2"):
        LogitLogger(run, format_version=2)


def test_the_manifest_is_one_json_record_that_validates_fast_enough_to_count(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path / "run", epochs=1, metadata={"lr": 0.1})
    path = list_shards(run)[0][2]
    fd = os.open(path, os.O_RDONLY)
    try:
        found = manifest.read(functools.partial(os.pread, fd), os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert isinstance(found, tuple)
    record, table, start = found
    assert record["metadata"] == {"lr": 0.1} and record["storage"] == "logits"
    assert json.loads(json.dumps(record)) == record
    groups = -(-record["num_rows"] // record["group_rows"])
    assert len(read_info(path).checksums["logits"]) == groups > 1
    assert start + len(manifest.pack(record, table)) == path.stat().st_size
