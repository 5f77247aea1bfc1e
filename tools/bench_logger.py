"""Benchmark: what LogitLogger costs a training loop. Prints one JSON line.

One training loop - an MLP 512-1024-1024-100, batch 256, SGD, synthetic data - is timed with and
without ``logger.log(...)`` in the same process, in alternating blocks of steps (after a warm-up
of both), so drift and noisy neighbours hit both sides alike. The figure that matters is the ratio
of median step times (goal: <= 1.03); a real model's step is far longer than this one, so its
relative overhead is far smaller.

The same model is then trained by each installed framework - a Lightning ``Trainer`` and the
Hugging Face ``Trainer`` - with and without ``aum_replay.integrations``' ``LogitLoggerCallback``,
in alternating fits of ``--steps`` steps (each fit drops its first steps as warm-up). A step is
timed from one batch start to the next, so everything the callback adds (its hooks, the copy) and
everything the framework does (collation, callbacks, the optimizer) is inside; ratios are of
medians, as above.

Extra memory is reported two ways: ``buffer_bytes``, the host buffers the logger may hold at once
(``(max_pending + 1)`` chunk-sized logits buffers plus their targets and ids), and
``rss_peak_growth_bytes``, how much the process's peak resident set (VmHWM) grew once the logger
ran, against the peak of the same loop without it (tracemalloc cannot see torch's allocations).

``--formats`` times the formats instead (issue 13's figures): at C=100 and C=1000 classes, the
same loop (the MLP's last layer has C outputs) runs in alternating blocks without a logger and with
a logger writing format v1, format v2 full logits and format v2 ``storage="summary"`` (a fresh
run directory each), and reports per kind the median step, the median ``log()`` call, the disk
bytes a row, and the ratios against v1 and against v2's full logits.

Usage::

    python tools/bench_logger.py [--threads 1] [--rounds 10] [--steps 20] [--steps-per-epoch 100]
                                 [--frameworks lightning,transformers] [--framework-rounds 4]
    python tools/bench_logger.py --formats [--rounds 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aum_replay import LogitLogger, __version__

IN, HIDDEN, CLASSES, BATCH = 512, 1024, 100, 256
MAX_PENDING = 4  # the logger's default


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM), or -1 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=20, help="steps per block, each way")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps, each way")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=100, help="logged steps per epoch (publishes)"
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--frameworks",
        default="lightning,transformers",
        help="callbacks to time, comma-separated (those not installed are reported as such); "
        "'none' for none",
    )
    parser.add_argument(
        "--framework-rounds", type=int, default=4, help="alternating fits per framework, each way"
    )
    parser.add_argument("--formats", action="store_true", help="time v1, v2 and v2 summary")
    args = parser.parse_args()
    if args.formats:
        torch.set_num_threads(args.threads)
        print(json.dumps(bench_formats(args)))
        return

    torch.set_num_threads(args.threads)
    step = make_step(CLASSES, args.steps_per_epoch)

    with tempfile.TemporaryDirectory(prefix="bench-logger-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        for i in range(args.warmup):
            step(i, None)
        peak_without = peak_rss()
        logger = LogitLogger(run_dir, max_pending=MAX_PENDING)
        logged = 0
        for _ in range(args.warmup):
            step(logged, logger)
            logged += 1

        without: list[float] = []
        with_logger: list[float] = []
        log_calls: list[float] = []
        plain = 0
        for r in range(args.rounds):
            for side in ("without", "with") if r % 2 == 0 else ("with", "without"):
                for _ in range(args.steps):
                    if side == "with":
                        seconds, log_s = step(logged, logger)
                        logged += 1
                        with_logger.append(seconds)
                        log_calls.append(log_s)
                    else:
                        without.append(step(plain, None)[0])
                        plain += 1
        logger.close()
        peak_with = peak_rss()
        shard_bytes = sum(p.stat().st_size for p in Path(run_dir).glob("*.h5"))
        shards = len(list(Path(run_dir).glob("*.h5")))

    # The logger sizes a chunk of rows (float32 logits, int64 target, int64 id) from chunk_bytes
    # and holds at most max_pending + 1 of them: the one being filled and those queued.
    chunk_rows = logger.chunk_bytes // (CLASSES * 4 + 8 + 8)
    buffer_bytes = (MAX_PENDING + 1) * chunk_rows * (CLASSES * 4 + 8 + 8)
    med_without = statistics.median(without)
    med_with = statistics.median(with_logger)
    print(
        json.dumps(
            {
                "bench": "logger",
                "aum_replay": __version__,
                "torch": torch.__version__,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "model": f"MLP {IN}-{HIDDEN}-{HIDDEN}-{CLASSES}, batch {BATCH}, SGD",
                "step_ms_without": round(med_without * 1e3, 3),
                "step_ms_with": round(med_with * 1e3, 3),
                "ratio": round(med_with / med_without, 4),
                "goal_ratio": 1.03,
                "log_call_ms_median": round(statistics.median(log_calls) * 1e3, 3),
                "rounds": args.rounds,
                "steps_per_block": args.steps,
                "steps_timed_each_way": len(without),
                "steps_logged": logged,
                "epochs": shards,
                "shard_bytes": shard_bytes,
                "buffer_bytes": buffer_bytes,
                "rss_peak_growth_bytes": peak_with - peak_without if peak_without >= 0 else None,
                "memory_method": "buffer_bytes = (max_pending+1) x chunk rows x row bytes; "
                "rss_peak_growth_bytes = VmHWM after the logged steps - VmHWM before the logger",
                **bench_frameworks(args),
            }
        )
    )


#: The loggers ``--formats`` compares: name -> LogitLogger options.
FORMATS = {
    "v1": {"format_version": 1},
    "v2_logits": {},
    "v2_summary": {"storage": "summary"},
}


def bench_formats(args: argparse.Namespace) -> dict[str, Any]:
    """Per class count, the loop without a logger and with each of :data:`FORMATS`, alternated."""
    report: dict[str, Any] = {"bench": "logger_formats", "aum_replay": __version__,
                              "torch": torch.__version__, "threads": args.threads,
                              "batch": BATCH, "rounds": args.rounds,
                              "steps_per_block": args.steps}  # fmt: skip
    for classes in (100, 1000):
        step = make_step(classes, args.steps_per_epoch)

        with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
            loggers: dict[str, LogitLogger | None] = {"none": None}
            for name, options in FORMATS.items():
                loggers[name] = LogitLogger(Path(tmp) / name, max_pending=MAX_PENDING, **options)
            steps = dict.fromkeys(loggers, 0)
            times: dict[str, list[float]] = {name: [] for name in loggers}
            calls: dict[str, list[float]] = {name: [] for name in loggers}
            names = list(loggers)
            for name in names:  # warm-up, each way
                for _ in range(args.warmup):
                    step(steps[name], loggers[name])
                    steps[name] += 1
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    for _ in range(args.steps):
                        seconds, log_s = step(steps[name], loggers[name])
                        steps[name] += 1
                        times[name].append(seconds)
                        calls[name].append(log_s)
            rows: dict[str, int] = {}
            for name, logger in loggers.items():
                if logger is not None:
                    logger.close()
                    rows[name] = steps[name] * BATCH
            disk = {
                name: sum(p.stat().st_size for p in (Path(tmp) / name).glob("*.h5"))
                for name in FORMATS
            }
        step_ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        log_ms = {name: statistics.median(c) * 1e3 for name, c in calls.items() if name != "none"}
        report[f"c{classes}"] = {
            "step_ms": {k: round(v, 3) for k, v in step_ms.items()},
            "log_call_ms": {k: round(v, 4) for k, v in log_ms.items()},
            "disk_bytes_per_row": {k: round(disk[k] / rows[k], 1) for k in FORMATS},
            "ratios": {
                **{f"step_{k}_vs_none": round(step_ms[k] / step_ms["none"], 4) for k in FORMATS},
                "log_call_v2_logits_vs_v1": round(log_ms["v2_logits"] / log_ms["v1"], 3),
                "log_call_summary_vs_v2_logits": round(
                    log_ms["v2_summary"] / log_ms["v2_logits"], 3
                ),
                "disk_v1_vs_summary": round(
                    disk["v1"] / rows["v1"] / (disk["v2_summary"] / rows["v2_summary"]), 1
                ),
            },
        }
    report["goals_met"] = {
        # what training feels: the median step with the summary logger against full logits
        "c1000_summary_hook_no_slower": report["c1000"]["step_ms"]["v2_summary"]
        <= report["c1000"]["step_ms"]["v2_logits"],
        "c1000_summary_100x_less_disk": report["c1000"]["ratios"]["disk_v1_vs_summary"] >= 100,
    }
    return report


def make_step(
    classes: int, steps_per_epoch: int
) -> Callable[[int, LogitLogger | None], tuple[float, float]]:
    """One SGD step of :func:`make_mlp` on a pool of 16 batches: ``step(i, logger)`` returns the
    step's seconds and those of its ``logger.log(...)`` call (0 without a logger)."""
    model = make_mlp(classes)  # seeds torch first
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pool = [(torch.randn(BATCH, IN), torch.randint(0, classes, (BATCH,))) for _ in range(16)]

    def step(i: int, logger: LogitLogger | None) -> tuple[float, float]:
        inputs, targets = pool[i % len(pool)]
        start = time.perf_counter()
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log_s = 0.0
        if logger is not None:
            t = time.perf_counter()
            first = (i % steps_per_epoch) * BATCH
            ids = torch.arange(first, first + BATCH)
            logger.log(logits, targets, ids, epoch=i // steps_per_epoch)
            log_s = time.perf_counter() - t
        return time.perf_counter() - start, log_s

    return step


def make_mlp(classes: int = CLASSES) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, classes),
    )


def median_ratio(without: list[float], with_cb: list[float]) -> dict[str, float]:
    a, b = statistics.median(without), statistics.median(with_cb)
    return {
        "step_ms_without": round(a * 1e3, 3),
        "step_ms_with": round(b * 1e3, 3),
        "ratio": round(b / a, 4),
        "steps_timed_each_way": len(without),
    }


def bench_frameworks(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wanted = [] if args.frameworks == "none" else args.frameworks.split(",")
    benches = {"lightning": bench_lightning, "transformers": bench_transformers}
    for name in wanted:
        try:
            out[f"{name}_callback"] = benches[name](args)
        except ImportError as exc:
            out[f"{name}_callback"] = f"not measured: {exc}"
    return out


def alternate(fit: Any, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """``fit(run_dir or None) -> step seconds``, alternated; the first 3 steps of a fit dropped."""
    without: list[float] = []
    with_cb: list[float] = []
    for r in range(args.framework_rounds):
        for side in ("without", "with") if r % 2 == 0 else ("with", "without"):
            if side == "with":
                with_cb += fit(tmp / f"run{r}")[3:]
            else:
                without += fit(None)[3:]
    return median_ratio(without, with_cb)


def bench_lightning(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from aum_replay.integrations.lightning import LogitLoggerCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_mlp()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y, _ = batch
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits}

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *_: Any) -> None:
            self.starts.append(time.perf_counter())

    n = BATCH * (args.steps + 4)
    data = TensorDataset(torch.randn(n, IN), torch.randint(0, CLASSES, (n,)), torch.arange(n))
    module = Module()

    def fit(run_dir: Path | None) -> list[float]:
        timer = Timer()
        callbacks: list[Any] = [timer]
        if run_dir is not None:
            callbacks.insert(0, LogitLoggerCallback(run_dir))
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.fit(module, DataLoader(data, batch_size=BATCH))
        return [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]

    with tempfile.TemporaryDirectory(prefix="bench-lightning-") as tmp:
        return {"lightning": L.__version__, **alternate(fit, args, Path(tmp))}


def bench_transformers(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import transformers
    from transformers.modeling_outputs import SequenceClassifierOutput

    from aum_replay.integrations.transformers import LogitLoggerCallback

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    class Config(transformers.PretrainedConfig):
        model_type = "aum-replay-bench-mlp"

    class Model(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.net = make_mlp()
            self.post_init()

        def _init_weights(self, module: Any) -> None:
            pass

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
            logits = self.net(x)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    class Timer(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.starts.append(time.perf_counter())

    n = BATCH * (args.steps + 4)
    x, y = torch.randn(n, IN), torch.randint(0, CLASSES, (n,))
    # Without the callback the dataset has no id column: a run without aum-replay has none.
    plain_rows = [{"x": x[i], "labels": int(y[i])} for i in range(n)]
    id_rows = [{**row, "sample_id": i} for i, row in enumerate(plain_rows)]
    model = Model(Config())

    def fit(run_dir: Path | None) -> list[float]:
        timer = Timer()
        callbacks: list[Any] = [timer]
        if run_dir is not None:
            callbacks.insert(0, LogitLoggerCallback(run_dir))
        with tempfile.TemporaryDirectory(prefix="bench-hf-out-") as out:
            trainer = transformers.Trainer(
                model=model,
                args=transformers.TrainingArguments(
                    output_dir=out,
                    num_train_epochs=1,
                    per_device_train_batch_size=BATCH,
                    learning_rate=0.01,
                    save_strategy="no",
                    logging_strategy="no",
                    report_to=[],
                    use_cpu=True,
                    disable_tqdm=True,
                    remove_unused_columns=False,
                    dataloader_num_workers=0,
                ),
                train_dataset=id_rows if run_dir is not None else plain_rows,
                callbacks=callbacks,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its metrics
                trainer.train()
            for callback in callbacks:  # the model is reused: take the hooks off
                if isinstance(callback, LogitLoggerCallback):
                    callback.remove_hooks()
        return [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]

    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        return {"transformers": transformers.__version__, **alternate(fit, args, Path(tmp))}


if __name__ == "__main__":
    main()
