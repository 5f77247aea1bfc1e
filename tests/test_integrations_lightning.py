"""The Lightning callback with the real framework on CPU: what it records is exactly what the
module computed in its training batches, and AUM from it equals the reference fed those logits."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from aum import AUMCalculator  # noqa: E402
from shards import shard_rows  # noqa: E402

import aum_replay  # noqa: E402
from aum_replay import DatasetWithIndex, InputError  # noqa: E402
from aum_replay.format import ShardReader, list_shards, list_temporaries  # noqa: E402
from aum_replay.integrations.lightning import LogitLoggerCallback  # noqa: E402

N, C, BATCH = 96, 3, 16  # 6 batches an epoch
VAL_IDS = 1000  # validation ids start here: a recorded validation row would show


def dataset(n: int = N, first_id: int = 0, seed: int = 0) -> Any:
    """(x, y, sample_id) items: ``DatasetWithIndex`` for training, ids from ``first_id`` else."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    if first_id == 0:
        return DatasetWithIndex(TensorDataset(x, y))
    return TensorDataset(x, y, torch.arange(first_id, first_id + n))


class Classifier(L.LightningModule):
    """Keeps what every training batch computed, to feed the reference the same logits."""

    def __init__(self, *, return_logits: bool = True, fail_at: tuple[int, int] | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, C)
        )
        self.return_logits = return_logits
        self.fail_at = fail_at
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.val_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y, ids = batch
        if self.fail_at == (self.current_epoch, batch_idx):
            raise RuntimeError("simulated crash")
        logits = self(x)
        self.seen.append((self.current_epoch, logits.detach().clone(), y.clone(), ids.clone()))
        loss = torch.nn.functional.cross_entropy(logits, y)
        return {"loss": loss, "logits": logits} if self.return_logits else loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _, _ = batch
        self.val_batches += 1
        self(x)  # the forward hook must not record this (eval mode, not a training batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def trainer(callback: Any, max_epochs: int = 3, **options: Any) -> Any:
    options.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, *options.pop("callbacks", [])],
        **options,
    )


def loaders() -> tuple[DataLoader, DataLoader]:
    train = DataLoader(
        dataset(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    val = DataLoader(dataset(32, VAL_IDS, seed=2), batch_size=BATCH)
    return train, val


def reference(seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]], out: Path) -> Path:
    calc = AUMCalculator(str(out), compressed=False)
    for _, logits, y, ids in seen:
        calc.update(logits, y, ids.tolist())
    calc.finalize()
    return out


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def assert_same_aum(ours: Path, ref: Path) -> None:
    mine, theirs = read_csv(ours / "aum_values.csv"), read_csv(ref / "aum_values.csv")
    assert mine[0] == theirs[0] and dict(map(tuple, mine[1:])) == dict(map(tuple, theirs[1:]))  # type: ignore[arg-type]
    assert (ours / "full_aum_records.csv").read_bytes() == (
        ref / "full_aum_records.csv"
    ).read_bytes()


@pytest.mark.parametrize(
    ("source", "precision"),
    [("outputs", "32-true"), ("forward", "32-true"), ("outputs", "bf16-mixed")],
)
def test_three_epochs_match_the_reference_with_accumulation_and_validation(
    tmp_path: Path, source: str, precision: str
) -> None:
    run_dir = tmp_path / "run"
    module = Classifier(return_logits=source == "outputs")
    fit = trainer(
        LogitLoggerCallback(run_dir, source=source, metadata={"source": source}),
        precision=precision,
        accumulate_grad_batches=2,
        limit_train_batches=5,  # of 6: the last batch of each epoch never runs
        num_sanity_val_steps=2,
    )
    fit.fit(module, *loaders())
    assert module.val_batches == 2 + 3 * 2  # the sanity check and one validation per epoch ran

    rows = shard_rows(run_dir)
    assert sorted(rows) == [(0, 0), (1, 0), (2, 0)]
    assert list_temporaries(run_dir) == []
    for epoch in range(3):
        seen = [s for s in module.seen if s[0] == epoch]
        assert len(seen) == 5
        logits, ids = rows[(epoch, 0)]
        assert ids == torch.cat([s[3] for s in seen]).tolist()  # training rows only, in order
        assert max(ids) < N
        torch.testing.assert_close(logits, torch.cat([s[1] for s in seen]), rtol=0, atol=0)
        # bf16 logits are stored bit-exact as bf16, and the replay computes margins in bf16
        assert logits.dtype == (torch.bfloat16 if precision == "bf16-mixed" else torch.float32)

    result = aum_replay.compute(run_dir, tmp_path / "ours")
    assert result.num_measurements == 3 * 5 * BATCH
    assert_same_aum(tmp_path / "ours", reference(module.seen, tmp_path / "ref"))


def test_dict_batches_with_an_id_key(tmp_path: Path) -> None:
    class DictBatches(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return super().training_step((batch["x"], batch["labels"], batch["idx"]), batch_idx)

    base = dataset(32)
    items = [{"x": x, "labels": y, "idx": i} for x, y, i in base]
    module = DictBatches(return_logits=False)
    callback = LogitLoggerCallback(tmp_path / "run", source="forward", id_key="idx")
    trainer(callback, max_epochs=1).fit(module, DataLoader(items, batch_size=8))  # type: ignore[arg-type]
    ((_, ids),) = shard_rows(tmp_path / "run").values()
    assert ids == list(range(32))


def test_resume_from_a_checkpoint_replaces_the_retrained_epoch(tmp_path: Path) -> None:
    run_dir, ckpts = tmp_path / "run", tmp_path / "ckpt"
    save = L.pytorch.callbacks.ModelCheckpoint(ckpts, filename="{epoch}", save_top_k=-1)
    crashed = Classifier(fail_at=(2, 3))
    with (
        pytest.raises(RuntimeError, match="simulated crash"),
        pytest.warns(UserWarning, match="not published"),
    ):
        trainer(LogitLoggerCallback(run_dir), callbacks=[save], enable_checkpointing=True).fit(
            crashed, *loaders()
        )
    assert sorted(shard_rows(run_dir)) == [(0, 0), (1, 0)]  # epoch 2 was discarded
    assert list_temporaries(run_dir) == []

    resumed = Classifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(LogitLoggerCallback(run_dir)).fit(
            resumed, *loaders(), ckpt_path=str(ckpts / "epoch=0.ckpt")
        )
    assert any("already published" in str(w.message) for w in caught)  # epoch 1, replaced
    assert [s[0] for s in resumed.seen] == [1] * 6 + [2] * 6

    rows = shard_rows(run_dir)
    assert sorted(rows) == [(0, 0), (1, 0), (2, 0)]
    for epoch in (1, 2):  # what the resumed run computed, not the crashed one
        logits, ids = rows[(epoch, 0)]
        seen = [s for s in resumed.seen if s[0] == epoch]
        assert ids == torch.cat([s[3] for s in seen]).tolist()
        torch.testing.assert_close(logits, torch.cat([s[1] for s in seen]), rtol=0, atol=0)
    result = aum_replay.compute(run_dir)
    assert result.num_measurements == 3 * N  # never doubled
    assert set(result.aum["num_measurements"].to_list()) == {3}
    first_epoch = [s for s in crashed.seen if s[0] == 0]
    assert rows[(0, 0)][1] == torch.cat([s[3] for s in first_epoch]).tolist()


def test_training_step_without_logits_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match='source="forward"'):
        trainer(LogitLoggerCallback(tmp_path / "run")).fit(
            Classifier(return_logits=False), loaders()[0]
        )
    assert list_shards(tmp_path / "run") == [] and list_temporaries(tmp_path / "run") == []


def test_options_are_checked_in_init(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="source"):
        LogitLoggerCallback(tmp_path, source="magic")
    with pytest.raises(InputError, match="from the trainer"):
        LogitLoggerCallback(tmp_path, rank=1)
    with pytest.raises(InputError, match="unknown LogitLogger option"):
        LogitLoggerCallback(tmp_path, compresion="lzf")
    with pytest.raises(InputError, match="storage"):
        LogitLoggerCallback(tmp_path, storage="int8")
    assert not tmp_path.joinpath("epoch_00000.rank_000.h5").exists()


DDP = """
import sys
import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset
from aum_replay.integrations.lightning import LogitLoggerCallback

torch.set_num_threads(1)


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        logits = self.net(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(101, 8, generator=g), torch.randint(0, 3, (101,), generator=g),
                         torch.arange(101))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[LogitLoggerCallback(sys.argv[1])])
    trainer.fit(Classifier(), DataLoader(data, batch_size=16))
    # One write: the ranks share the pipe, and print() writes its pieces one by one.
    sys.stdout.write(f"rank {trainer.global_rank} done\\n")
    sys.stdout.flush()
    if torch.distributed.is_initialized():  # a gloo group left to exit can abort the process
        torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_processes_write_one_shard_per_rank_per_epoch(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(DDP))
    run_dir = tmp_path / "run"
    env = {"PL_DISABLE_FORK": "1", "MASTER_PORT": str(29500 + (hash(str(tmp_path)) % 2000))}
    proc = subprocess.run(
        [sys.executable, str(script), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 done" in proc.stdout
    shards = list_shards(run_dir)
    assert [(e, r) for e, r, _ in shards] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for _, rank, path in shards:
        with ShardReader(path) as reader:
            assert (reader.info.rank, reader.info.world_size, reader.info.num_rows) == (rank, 2, 51)
    # DistributedSampler pads 101 samples to 102: the replay counts the repeated id once.
    result = aum_replay.compute(run_dir)
    assert result.num_measurements == 2 * 101 and result.duplicates_dropped == 2
