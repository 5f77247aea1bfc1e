"""``aum-replay compute``: options, the summary, and every error as one line with exit status 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aum_replay import LogitLogger, compute
from aum_replay.cli import app
from aum_replay.csvout import FULL_NAME, VALUES_NAME
from aum_replay.format import read_info

runner = CliRunner()
SENTINEL = b"sample_id,aum\n42,1.0\n"


def make_run(
    run_dir: Path,
    *,
    epochs: int = 3,
    num_samples: int = 40,
    num_classes: int = 6,
    seed: int = 0,
    version: int = 2,
) -> Path:
    rng = np.random.default_rng(seed)
    with LogitLogger(run_dir, chunk_bytes=4096, format_version=version) as logger:
        for epoch in range(epochs):
            ids = rng.permutation(num_samples)
            for start in range(0, num_samples, 16):
                chunk = ids[start : start + 16]
                logits = torch.from_numpy(rng.normal(size=(len(chunk), num_classes)))
                logger.log(logits.float(), chunk % num_classes, chunk, epoch=epoch)
            logger.end_epoch()
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("cli") / "run")


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\n{result.output}")
    return result.exit_code, result.stdout, result.stderr


def test_compute_writes_both_files_and_a_summary(run_dir: Path, tmp_path: Path) -> None:
    code, stdout, _ = invoke("compute", run_dir, "-o", tmp_path / "out")
    assert code == 0, stdout
    assert "40 samples, 120 measurements over 3 epoch(s)" in stdout
    assert f"wrote {tmp_path / 'out' / VALUES_NAME}" in stdout
    assert f"wrote {tmp_path / 'out' / FULL_NAME}" in stdout
    compute(run_dir, tmp_path / "lib")
    for name in (VALUES_NAME, FULL_NAME):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [VALUES_NAME, FULL_NAME]


def test_options_reach_the_library(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = invoke(
        "compute", run_dir, "-o", out, "--epochs", "skip:1", "--values-only", "--quiet",
        "--threads", "2", "--duplicates", "all", "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert stdout == ""  # --quiet
    assert [p.name for p in out.iterdir()] == [VALUES_NAME]
    compute(run_dir, tmp_path / "lib", epochs="1:", full=False, duplicates="all")
    assert (out / VALUES_NAME).read_bytes() == (tmp_path / "lib" / VALUES_NAME).read_bytes()


def test_summary_reports_duplicates_and_temporaries(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with LogitLogger(run) as logger:
        logger.log(torch.zeros(4, 3), [0, 1, 2, 0], [1, 2, 1, 3], epoch=0)
    (run / "epoch_00001.rank_000.h5.999999.tmp").write_bytes(b"half")
    code, stdout, stderr = invoke("compute", run, "-o", tmp_path / "out")
    assert code == 0, stdout + stderr
    assert "1 repeated row(s) inside an epoch dropped" in stdout
    assert "ignored unfinished temporary file epoch_00001.rank_000.h5.999999.tmp" in stderr


def expect_error(
    args: list[str | Path], out: Path, *needles: str, code: int = 1
) -> tuple[str, str]:
    """Run with a pre-existing aum_values.csv in ``out``; it must survive unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    (out / VALUES_NAME).write_bytes(SENTINEL)
    got, stdout, stderr = invoke(*args)
    assert got == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    if code == 1:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("aum-replay: error: "), stderr
        for needle in needles:
            assert needle in lines[0]
    assert [p.name for p in out.iterdir()] == [VALUES_NAME]
    assert (out / VALUES_NAME).read_bytes() == SENTINEL
    return stdout, stderr


def test_missing_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect_error(["compute", tmp_path / "nope", "-o", out], out, "nope", "does not exist")


def test_run_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    expect_error(["compute", tmp_path / "file", "-o", out], out, "not a directory")


def test_empty_run_dir(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    out = tmp_path / "out"
    expect_error(["compute", tmp_path / "run", "-o", out], out, "no shards")


def test_only_temporary_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch_00000.rank_000.h5.1234.tmp").write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    expect_error(["compute", run, "-o", out], out, "no shards", "temporary")


def test_mismatched_number_of_classes(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", epochs=2, num_classes=6)
    other = make_run(tmp_path / "other", epochs=3, num_classes=5)
    shutil.copy(other / "epoch_00002.rank_000.h5", run / "epoch_00002.rank_000.h5")
    out = tmp_path / "out"
    expect_error(["compute", run, "-o", out], out, "epoch_00002.rank_000.h5", "5 classes")
    # The epoch that disagrees can be left out.
    assert invoke("compute", run, "-o", tmp_path / "ok", "--epochs", ":2", "-q")[0] == 0


def test_unknown_format_version(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with h5py.File(run / "epoch_00001.rank_000.h5", "r+") as f:
        f.attrs["format_version"] = 99
    out = tmp_path / "out"
    expect_error(["compute", run, "-o", out], out, "epoch_00001.rank_000.h5", "version 99")


def test_foreign_hdf5_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with h5py.File(run / "epoch_00000.rank_000.h5", "w") as f:
        f["logits"] = np.zeros((2, 2))
    out = tmp_path / "out"
    expect_error(["compute", run, "-o", out], out, "epoch_00000.rank_000.h5", "not an aum-replay")


def test_not_hdf5_at_all(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch_00000.rank_000.h5").write_text("sample_id,aum\n")
    out = tmp_path / "out"
    expect_error(["compute", run, "-o", out], out, "epoch_00000.rank_000.h5")


def test_unwritable_output_dir(run_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, stdout, stderr = invoke("compute", run_dir, "-o", blocker / "out")
    assert code == 1, stdout + stderr
    assert stderr.startswith("aum-replay: error: ") and len(stderr.splitlines()) == 1
    assert "is a file, not a directory" in stderr and str(blocker) in stderr
    assert blocker.read_text() == "x"


def test_read_only_output_dir(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / VALUES_NAME).write_bytes(SENTINEL)
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user who can write into a 0o500 directory (root)")
        code, _, stderr = invoke("compute", run_dir, "-o", out)
        assert code == 1 and stderr.startswith("aum-replay: error: ")
        assert (out / VALUES_NAME).read_bytes() == SENTINEL
    finally:
        out.chmod(0o700)


def test_selection_matching_nothing_exits_1(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect_error(["compute", run_dir, "-o", out, "--epochs", "7:9"], out, "'7:9'", "0, 1, 2")


@pytest.mark.parametrize("spec", ["x", "1:2:3", "skip:", "²"])
def test_bad_epochs_is_usage_error(run_dir: Path, tmp_path: Path, spec: str) -> None:
    out = tmp_path / "out"
    _, stderr = expect_error(["compute", run_dir, "-o", out, "--epochs", spec], out, code=2)
    assert "--epochs" in stderr


@pytest.mark.parametrize(
    "args",
    [["--duplicates", "some"], ["--threads", "0"], ["--workers", "-1"], ["--bogus"], ["-o"]],
    ids=str,
)
def test_bad_usage_exits_2(run_dir: Path, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    expect_error(["compute", run_dir, "-o", out, *args], out, code=2)


def test_missing_out_option_exits_2(run_dir: Path) -> None:
    assert invoke("compute", run_dir)[0] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect_error(["compute", run_dir, "-o", out, "--device", "cuda"], out, "CUDA")


def test_unknown_device_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect_error(["compute", run_dir, "-o", out, "--device", "toaster"], out, "toaster")


def test_installed_entry_point(run_dir: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("aum-replay")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "aum_replay.cli"]
    ok = subprocess.run(
        [*command, "compute", str(run_dir), "-o", str(tmp_path / "out"), "--epochs", "1:3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "80 measurements over 2 epoch(s)" in ok.stdout
    compute(run_dir, tmp_path / "lib", epochs="1:3")
    for name in (VALUES_NAME, FULL_NAME):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    bad = subprocess.run(
        [*command, "compute", str(tmp_path / "missing"), "-o", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.startswith("aum-replay: error: ") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("version", [1, 2])
def test_a_failure_mid_stream_leaves_no_new_output_dir(tmp_path: Path, version: int) -> None:
    run = make_run(tmp_path / "run", version=version)
    shard = run / "epoch_00002.rank_000.h5"
    if version == 1:
        with h5py.File(shard, "r+") as f:
            f["targets"][5] = 99  # outside [0, 6): found only while streaming the last epoch
        expected = "target 99"
    else:  # the same bytes changed in place: the checksum of that group no longer matches
        at = read_info(shard).raw["targets"].offsets[0] + 5 * 8
        with open(shard, "r+b") as f:
            f.seek(at)
            f.write((99).to_bytes(8, "little"))
        expected = "checksum mismatch in targets rows"
    out = tmp_path / "fresh" / "out"
    got, _, stderr = invoke("compute", run, "-o", out)
    assert got == 1 and expected in stderr and "epoch_00002.rank_000.h5" in stderr
    assert not out.exists()
