"""The committed format-v1 fixture is read, and replayed to what the original library computed.

``tests/data/v1_run`` was written by ``LogitLogger`` (see ``tools/make_v1_fixture.py``) and is never
regenerated for a format change: a reader that can no longer read it, or reads different numbers,
fails here on purpose. ``tests/data/v1_expected`` holds the ``aum`` 1.0.2 reference's CSV files for
the same rows.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aum_replay
from aum_replay import FormatError
from aum_replay.cli import app
from aum_replay.format import REQUIRED_ATTRS, ShardReader, list_shards, list_temporaries, read_info
from aum_replay.run import open_run

DATA = Path(__file__).parent / "data"
RUN = DATA / "v1_run"
EXPECTED = DATA / "v1_expected"


def load_tool() -> ModuleType:
    path = Path(__file__).parent.parent / "tools" / "make_v1_fixture.py"
    spec = importlib.util.spec_from_file_location("make_v1_fixture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def test_fixture_holds_four_v1_shards() -> None:
    shards = list_shards(RUN)
    assert [(e, r) for e, r, _ in shards] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert list_temporaries(RUN) == []
    for epoch, rank, path in shards:
        with h5py.File(path, "r") as f:
            assert sorted(f) == ["logits", "sample_ids", "targets"]
            assert set(REQUIRED_ATTRS) <= set(f.attrs)
            assert (f.attrs["format"], int(f.attrs["format_version"])) == ("aum-replay-shard", 1)
        info = read_info(path)
        assert (info.epoch, info.rank, info.world_size) == (epoch, rank, 2)
        assert (info.num_classes, info.num_rows) == (3, 10)
        assert (info.logits_dtype, info.stored_dtype, info.id_kind) == ("float32",) * 2 + ("int",)
        assert info.created_utc == "2025-01-01T00:00:00+00:00"
        assert info.metadata == tool.METADATA
        assert info.threshold is None


def test_reader_returns_exactly_the_logged_rows() -> None:
    rows = tool.make_rows()
    shards = list_shards(RUN)
    assert len(rows) == len(shards)
    for (epoch, rank, path), (e, r, logits, targets, ids) in zip(shards, rows, strict=True):
        assert (epoch, rank) == (e, r)
        with ShardReader(path) as reader:
            got_logits, got_targets = reader.read_block(0, reader.info.num_rows)
            got_ids = reader.read_ids()
            # Reading in uneven blocks gives the same rows.
            parts = [reader.read_block(a, b)[0] for a, b in reader.blocks(3)]
        assert got_logits.dtype == torch.float32
        assert torch.equal(got_logits, logits)
        assert torch.equal(torch.cat(parts), logits)
        np.testing.assert_array_equal(got_targets, targets.numpy())
        assert got_ids.dtype == np.int64 and got_ids.tolist() == ids


@pytest.mark.parametrize("duplicates", ["all", "first"])
def test_replay_of_the_fixture_matches_the_reference_files(tmp_path: Path, duplicates: str) -> None:
    result = aum_replay.compute(RUN, tmp_path, duplicates=duplicates)  # type: ignore[arg-type]
    assert result.epochs == [0, 1] and result.num_shards == 4 and result.num_classes == 3
    assert result.num_samples == len(tool.IDS)
    assert result.duplicates_dropped == (2 if duplicates == "first" else 0)
    for name in ("aum_values.csv", "full_aum_records.csv"):
        got = (tmp_path / name).read_text()
        want = (EXPECTED / duplicates / name).read_text()
        assert got == want, name


def test_info_on_the_fixture() -> None:
    result = CliRunner().invoke(app, ["info", str(RUN)])
    assert result.exit_code == 0, result.output
    epochs = [line.split() for line in result.output.splitlines() if line.split()[:1] == ["0"]]
    assert epochs and epochs[0][:6] == ["0", "2", "20", "19", "1", "0"]


def copy_shard(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    path = run / "epoch_00000.rank_000.h5"
    shutil.copyfile(RUN / path.name, path)
    return path


def test_newer_format_version_is_refused_with_upgrade_advice(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    for read in (read_info, ShardReader):
        with pytest.raises(FormatError, match="upgrade") as info:
            read(path)
        assert str(path) in str(info.value) and "version 3" in str(info.value)
    with pytest.raises(FormatError, match="upgrade"):
        aum_replay.compute(path.parent)
    result = CliRunner().invoke(app, ["info", str(path.parent)])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "upgrade" in result.stderr


@pytest.mark.parametrize("key", REQUIRED_ATTRS)
def test_a_missing_attribute_is_refused_naming_the_file(tmp_path: Path, key: str) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs[key]
    with pytest.raises(FormatError, match=f"attribute '{key}' missing") as info:
        read_info(path)
    assert str(path) in str(info.value)
    with pytest.raises(FormatError, match=f"attribute '{key}' missing"):
        aum_replay.compute(path.parent)


def test_an_unfinished_shard_under_a_final_name_is_refused(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["num_rows"] = -1
    with pytest.raises(FormatError, match="never finished") as info:
        read_info(path)
    assert str(path) in str(info.value)


def test_rows_that_disagree_with_num_rows_are_refused(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        f["targets"].resize(9, axis=0)
    with pytest.raises(FormatError, match="'targets' has 9 rows, expected 10"):
        read_info(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_rows", np.arange(3), "attribute 'num_rows' is not a single value"),
        ("epoch", "zero", "attribute 'epoch' is not an integer"),
        ("id_kind", 7, "attribute 'id_kind' is not a string"),
    ],
)
def test_an_attribute_of_the_wrong_shape_or_type_is_refused(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    # An array attribute read into a one-value buffer would overrun it: it must be refused first.
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs[key]
        f.attrs[key] = value
    with pytest.raises(FormatError, match=message) as info:
        read_info(path)
    assert str(path) in str(info.value)
    result = CliRunner().invoke(app, ["compute", str(path.parent), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert message.split(" is ")[0] in result.stderr and not (tmp_path / "out").exists()


def test_a_buffer_too_small_for_the_block_is_an_error_not_a_short_read(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with ShardReader(path) as reader:
        with pytest.raises(FormatError, match="cannot hold rows 0:10"):
            reader.read_block(0, 10, out=np.empty((4, 3), dtype=np.float32))
        with pytest.raises(FormatError, match="cannot hold rows 0:10"):
            reader.read_block(0, 10, out=np.empty((10, 3), dtype=np.float64))
        logits, targets = reader.read_block(0, 10, out=np.empty((12, 3), dtype=np.float32))
        assert logits.shape == (10, 3) and targets.shape == (10,)


def test_uncompressed_shards_are_read_without_hdf5_and_compressed_ones_through_it(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.standard_normal((50, 4), dtype=np.float32))
    targets, ids = rng.integers(0, 4, 50), np.arange(50) * 3
    blocks = {}
    for compression in (None, "gzip"):
        run = tmp_path / str(compression)
        with aum_replay.LogitLogger(run, compression=compression, chunk_bytes=1024) as logger:
            logger.log(logits, targets, ids, epoch=0)
        info = read_info(list_shards(run)[0][2])
        # compression applies to the logits alone: targets and ids stay raw-readable
        raw = {"targets", "sample_ids"} | ({"logits"} if compression is None else set())
        assert set(info.raw) == raw
        with ShardReader(info.path, info=info) as reader:
            parts = [reader.read_block(a, b) for a, b in reader.blocks(7)]
            read_ids = np.concatenate([reader.read_ids(a, b) for a, b in reader.blocks(7)])
            assert (reader._file is None) == (compression is None)  # HDF5 only when needed
        blocks[compression] = (
            torch.cat([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
        assert torch.equal(blocks[compression][0], logits)
        assert np.array_equal(blocks[compression][1], targets) and np.array_equal(read_ids, ids)


def test_a_fixed_length_string_attribute_is_read_as_a_string(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs["created_utc"]
        f.attrs["created_utc"] = np.bytes_("2025-01-01T00:00:00+00:00")
    assert read_info(path).created_utc == "2025-01-01T00:00:00+00:00"


def test_chunk_maps_without_chunk_iter_match_those_with_it(tmp_path: Path) -> None:
    # h5py built against HDF5 < 1.12.3 has no chunk_iter: chunks are then found one by one.
    from aum_replay.format import _chunk_map

    class Older:
        def __init__(self, dataset: h5py.h5d.DatasetID) -> None:
            self._dataset = dataset

        def __getattr__(self, name: str) -> object:
            if name == "chunk_iter":
                raise AttributeError(name)
            return getattr(self._dataset, name)

    run = tmp_path / "run"
    with aum_replay.LogitLogger(run, chunk_bytes=1024) as logger:
        logger.log(torch.randn(70, 4), np.zeros(70, dtype=np.int64), np.arange(70), epoch=0)
    path = list_shards(run)[0][2]
    fid = h5py.h5f.open(bytes(path))
    try:
        for name in ("logits", "targets", "sample_ids"):
            dataset = h5py.h5d.open(fid, name.encode())
            plist = dataset.get_create_plist()
            args = (plist, dataset.shape, plist.get_chunk(), dataset.dtype)
            new = _chunk_map(dataset, *args)
            old = _chunk_map(Older(dataset), *args)  # type: ignore[arg-type]
            assert new is not None and new == old and len(new.offsets) > 1
            assert new == read_info(path).raw[name]
    finally:
        fid.close()


def test_a_fixed_length_utf8_string_attribute_is_read(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs["package_version"]
        value = np.array("0.1.0é".encode(), dtype=h5py.string_dtype("utf-8", 7))
        f.attrs.create("package_version", value)
    assert read_info(path).package_version == "0.1.0é"


def write_one_shard(run: Path, metadata: dict[str, str] | None = None, version: int = 1) -> Path:
    from aum_replay.format import ShardWriter, shard_name

    path = run / shard_name(0, 0)
    writer = ShardWriter(
        path, epoch=0, rank=0, world_size=1, num_classes=3, logits_dtype="float32",
        stored_dtype="float32", id_kind="int", chunk_rows=4, metadata=metadata,
        format_version=version, run_id="r1",
    )  # fmt: skip
    writer.append(np.tile(np.float32([1, 0, 0]), (8, 1)), np.zeros(8, np.int64), np.arange(8))
    return writer.publish()


@pytest.mark.parametrize("version", [1, 2])
def test_a_shard_republished_after_validation_is_refused_not_misread(
    tmp_path: Path, version: int
) -> None:
    # A resumed run republishes shards; bigger attributes move the chunks within the file, so
    # offsets found at validation would read the wrong bytes.
    run = tmp_path / "run"
    run.mkdir()
    write_one_shard(run, version=version)
    opened = open_run(run)
    write_one_shard(run, {"note": "x" * 5000}, version=version)
    with pytest.raises(FormatError, match="changed since it was validated"):
        aum_replay.compute(opened, None)
    assert aum_replay.compute(run, None).aum["aum"].to_list() == [1.0] * 8  # a fresh replay


def test_a_chunk_address_past_the_end_of_the_file_is_a_format_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    path = write_one_shard(run)
    address = read_info(path).raw["targets"].offsets[0]
    data = bytearray(path.read_bytes())
    at = data.find(address.to_bytes(8, "little"))  # the chunk index entry of targets chunk 0
    data[at : at + 8] = (0xD06D_0000_0000_0000).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="lies past the end of the file") as info:
        read_info(path)
    assert str(path) in str(info.value)


def test_rows_outside_the_shard_are_refused(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with ShardReader(path) as reader:
        for start, stop in ((0, 11), (-1, 3), (5, 4)):
            with pytest.raises(aum_replay.InputError, match="outside the shard's 0:10"):
                reader.read_block(start, stop)
            with pytest.raises(aum_replay.InputError, match="outside the shard's 0:10"):
                reader.read_ids(start, stop)


def test_a_shard_that_fails_validation_is_not_left_open(tmp_path: Path) -> None:
    path = copy_shard(tmp_path)
    with h5py.File(path, "r+") as f:
        f["targets"].resize(9, axis=0)
    errors = []
    for _ in range(3):
        with pytest.raises(FormatError) as info:
            read_info(path)
        errors.append(info.value)  # the tracebacks keep the failed validation's frames alive
    fds = Path("/proc/self/fd")
    if fds.is_dir():
        assert not any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
