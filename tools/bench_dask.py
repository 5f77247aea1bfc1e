"""Benchmark the replay on Dask against the single-machine replay of the same run, in one run.

Writes one synthetic run (default: N=50,000 samples, C=100 classes, E=20 epochs of float32
logits, 2 ranks, ~400 MB), then replays it (``compute``, values and full records):

- locally (threads, the default replay);
- on a ``LocalCluster`` of 1 and of 2 worker processes (one thread each).

For each: the wall time (best of ``--repeats``, the cluster already started; the start-up is
reported apart), the bytes the tasks sent back to the client (the pickled payloads: segments and
the id scan's distinct ids) and the id index broadcast to every worker, and the peak RSS of each
worker process and of the client. Every output is checked byte for byte against the local
replay's. Prints ONE JSON line.

On a 2-core machine the honest expectation is parity, not speedup: the client folds every row
and the workers share the same two cores with it.

With ``--http``, the run is also served by a separate HTTP server process with byte ranges
(``tests/range_server.py``, as an object store serves a bucket) and replayed from its URL
through fsspec, locally and on each cluster: the same files, over the network stack.

Usage::

    python tools/bench_dask.py
    python tools/bench_dask.py --http                                   # + fsspec over HTTP
    python tools/bench_dask.py --samples 5000 --epochs 4 --repeats 1     # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from measure import peak_rss_mib


def write_run(run_dir: Path, samples: int, classes: int, epochs: int, ranks: int) -> None:
    # torch is imported here, not at the top: worker processes re-import this module (spawn),
    # and their memory should be the replay's, as under the CLI, which never imports torch.
    import torch

    from aum_replay import LogitLogger

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, size=samples)
    orders = [rng.permutation(samples) for _ in range(epochs)]
    for rank in range(ranks):
        with LogitLogger(run_dir, rank=rank, world_size=ranks) as logger:
            for epoch in range(epochs):
                ids = orders[epoch][rank::ranks]
                logits = rng.standard_normal((len(ids), classes), dtype=np.float32)
                for lo in range(0, len(ids), 1024):
                    part = ids[lo : lo + 1024]
                    chunk = torch.from_numpy(logits[lo : lo + 1024])
                    logger.log(chunk, labels[part], part, epoch=epoch)
                logger.end_epoch()


def payload_bytes(value: Any) -> int:
    from aum_replay.engine import Segment

    if isinstance(value, Segment):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(payload_bytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


def timed(run_dir: Path | str, out: Path, repeats: int, client: Any = None) -> dict[str, Any]:
    from aum_replay import compute
    from aum_replay import distributed as dist

    sent = [0]
    original = dist._result

    def counting(future: Any) -> Any:
        value = original(future)
        sent[0] += payload_bytes(value)
        return value

    dist._result = counting  # type: ignore[assignment]
    try:
        times = []
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            sent[0] = 0
            started = time.perf_counter()
            compute(run_dir, out, client=client, threads=1)
            times.append(time.perf_counter() - started)
    finally:
        dist._result = original  # type: ignore[assignment]
    figures: dict[str, Any] = {"seconds": round(min(times), 3)}
    if client is not None:
        figures["bytes_sent_to_client"] = sent[0]
        figures["worker_peak_rss_mib"] = sorted(
            round(v, 1) for v in client.run(peak_rss_mib).values()
        )
    return figures


def identical(a: Path, b: Path) -> bool:
    names = ("aum_values.csv", "full_aum_records.csv")
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def serve(root: Path, stack: contextlib.ExitStack) -> str:
    """Serve ``root`` from a separate HTTP server process with byte ranges; its base URL."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "tests" / "range_server.py"), str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(server.wait)
    stack.callback(server.kill)
    assert server.stdout is not None
    return f"http://127.0.0.1:{int(server.stdout.readline())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http", action="store_true", help="also replay the run over HTTP")
    args = parser.parse_args()

    import cloudpickle
    import distributed
    import measure

    cloudpickle.register_pickle_by_value(measure)  # workers cannot import tools/measure.py

    from aum_replay.run import IdIndex, open_run, scan_ids

    tmp = Path(tempfile.mkdtemp(prefix="aum-replay-bench-dask-"))
    stack = contextlib.ExitStack()
    report: dict[str, Any] = {"bench": "dask", "samples": args.samples,
                              "classes": args.classes, "epochs": args.epochs,
                              "ranks": args.ranks}  # fmt: skip
    try:
        run_dir = tmp / "run"
        write_run(run_dir, args.samples, args.classes, args.epochs, args.ranks)
        report["run_mb"] = round(sum(p.stat().st_size for p in run_dir.iterdir()) / 1e6, 1)
        run = open_run(run_dir, None)
        universe = scan_ids(run.shards, run.id_kind).universe
        index = IdIndex(universe, run.id_kind)
        report["id_index_bytes_per_worker"] = universe.nbytes + (
            index._lut.nbytes if index._lut is not None else 0
        )
        timed(run_dir, tmp / "warm", 1)  # page cache
        report["local"] = timed(run_dir, tmp / "local", args.repeats)
        url = serve(tmp, stack) + "/run" if args.http else None
        if url:
            report["http_local"] = timed(url, tmp / "http", args.repeats)
            report["http_local"]["identical"] = identical(tmp / "http", tmp / "local")
        for workers in (1, 2):
            started = time.perf_counter()
            with (
                distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=50,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):  # fmt: skip
                up = time.perf_counter() - started
                out = tmp / f"dask{workers}"
                figures = timed(run_dir, out, args.repeats, client)
                figures["cluster_start_s"] = round(up, 2)
                figures["identical"] = identical(out, tmp / "local")
                report[f"dask_{workers}_workers"] = figures
                if url:
                    figures = timed(url, tmp / f"http{workers}", args.repeats, client)
                    figures["identical"] = identical(tmp / f"http{workers}", tmp / "local")
                    report[f"http_dask_{workers}_workers"] = figures
        report["client_peak_rss_mib"] = round(peak_rss_mib(), 1)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    local = report["local"]["seconds"]
    report["ratios"] = {
        f"{key}_vs_local": round(report[key]["seconds"] / local, 2)
        for key in (
            "dask_1_workers", "dask_2_workers", "http_local", "http_dask_1_workers",
            "http_dask_2_workers",
        )
        if key in report
    }  # fmt: skip
    report["machine"] = (
        f"{platform.machine()} {platform.python_version()} "
        f"distributed {distributed.__version__}, {len(__import__('os').sched_getaffinity(0))} cores"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
