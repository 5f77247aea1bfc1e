"""The ``aum-replay`` command line: thin commands over the library.

This is the only module that knows about the terminal. Library errors (:class:`AumReplayError`)
become one line on stderr and exit status 1; bad usage is left to Typer (exit status 2).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from aum_replay._version import __version__
from aum_replay.allocator import tune_allocator
from aum_replay.epochs import parse_epochs
from aum_replay.errors import AumReplayError

if TYPE_CHECKING:
    from aum_replay.location import Location
    from aum_replay.replay import ComputeResult

app = typer.Typer(
    name="aum-replay",
    help=(
        "Find mislabeled training samples with the Area Under the Margin (AUM), replayed "
        "offline from logits recorded by aum_replay.LogitLogger."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _check_epochs(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_epochs(value)
        except AumReplayError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


class DuplicatesMode(str, Enum):
    first = "first"
    all = "all"


RunDir = Annotated[
    str,
    typer.Argument(
        metavar="RUN_DIR",
        help=(
            "Run directory written by aum_replay.LogitLogger (epoch_*.rank_*.h5), or an fsspec "
            "URL of one (s3://bucket/run, needs aum-replay[remote])."
        ),
        show_default=False,
    ),
]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        metavar="OUT_DIR",
        help="Directory for the output files (created if missing).",
        show_default=False,
    ),
]
Epochs = Annotated[
    str | None,
    typer.Option(
        "--epochs",
        "-e",
        help=(
            "Epochs that count, a comma-separated union of: N; A:B (half-open, either end "
            "optional: 10:, :150); skip:K (all but the first K); first:K; last:K; all. "
            "The paper's 'skip epoch 0, stop at the LR drop at 150' is 1:150. Default: all."
        ),
        callback=_check_epochs,
        show_default=False,
    ),
]
Duplicates = Annotated[
    DuplicatesMode,
    typer.Option(
        "--duplicates",
        help=(
            "An id seen twice in one epoch (DDP padding, a restarted epoch): 'first' counts the "
            "first row only; 'all' counts every row, as the original aum library did."
        ),
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="Torch device for the margin kernel: cpu, cuda, cuda:1.")
]
Threads = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        help="Torch threads. 1 is fastest on shared machines; more helps only on idle cores.",
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help=(
            "Threads that read blocks and compute their margins side by side (0: all in the "
            "main thread). More than the machine's cores gains nothing."
        ),
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")]
Dask = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help=(
            "Replay on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N "
            "local worker processes. The run directory must be visible to every worker under "
            "the same path; needs pip install 'aum-replay[dask]'. Same results, bit for bit."
        ),
        show_default=False,
    ),
]


@contextmanager
def _dask(address: str | None) -> Iterator[Any]:
    """The Dask client of ``--dask`` (None without it), closed after the command."""
    if address is None:
        yield None
        return
    from aum_replay.distributed import connect

    with connect(address) as client:
        yield client


def _errors_to_exit(func: F) -> F:
    """Turn the library's errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _hang_watchdog():
                return func(*args, **kwargs)
        except AumReplayError as exc:
            err.print(f"aum-replay: error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            # Outputs are committed as a set at the very end: stopping now changes nothing.
            err.print("aum-replay: interrupted; no output was changed", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


SHARD_TIMEOUT_ENV = "AUM_REPLAY_SHARD_TIMEOUT"

# The watchdog's other half, a bare interpreter: it learns which shard is being validated, and
# when anything else arrives (faulthandler's dump, just before the CLI process exits 1), it
# prints the one-line error. End of input without a dump: all went well.
_WATCHER = """
import sys
shard, limit = None, sys.argv[1]
for line in sys.stdin.buffer:
    if line.startswith(b"shard "):
        shard = line[6:].rstrip(b"\\n").decode("utf-8", "replace")
    elif shard is not None:
        sys.stderr.write(f"aum-replay: error: {shard}: HDF5 did not finish reading this shard "
                         f"in {limit} s; it is probably corrupt\\n")
        break
"""


@contextmanager
def _hang_watchdog() -> Iterator[None]:
    """End the process with the usual one-line error if validating one shard never finishes.

    HDF5 loops forever on some corrupt files (a damaged variable-length string attribute) and
    holds the GIL while it does, so no Python thread can step in. ``faulthandler``'s timer runs
    outside the GIL: armed for each shard, it ends the process with status 1 after
    ``AUM_REPLAY_SHARD_TIMEOUT`` seconds (default 60; a shard takes milliseconds), and a small
    watcher process turns that into the one-line error naming the shard. Every command
    validates its shards before it writes anything, so nothing is left half-made.
    """
    from aum_replay import format as shard_format  # here: --help and --version need no h5py

    try:
        limit = float(os.environ.get(SHARD_TIMEOUT_ENV, "60"))
    except ValueError:
        limit = 60.0
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHER, f"{limit:g}"], stdin=subprocess.PIPE
        )
    except OSError:  # no watcher: run without one
        yield
        return
    assert watcher.stdin is not None
    pipe = watcher.stdin

    def hook(path: Location | None) -> None:
        if path is None:
            faulthandler.cancel_dump_traceback_later()
            return
        pipe.write(b"shard " + os.fsencode(str(path)) + b"\n")
        pipe.flush()
        faulthandler.dump_traceback_later(limit, exit=True, file=pipe)

    shard_format.validation_hook = hook
    try:
        yield
    finally:
        shard_format.validation_hook = None
        faulthandler.cancel_dump_traceback_later()
        with suppress(OSError):
            pipe.close()
        with suppress(subprocess.TimeoutExpired):
            watcher.wait(timeout=5)


@contextmanager
def _progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for one long stage, counted in rows."""
    with _stage_progress(quiet, unit="rows") as stage:
        if stage is None:
            yield None
        else:
            yield lambda done, total: stage(description, done, total)


def _version(value: bool) -> None:
    if value:
        out.print(f"aum-replay {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Find mislabeled training samples with the Area Under the Margin (AUM)."""


@app.command()
@_errors_to_exit
def compute(
    run_dir: RunDir,
    out_dir: OutDir,
    epochs: Epochs = None,
    values_only: Annotated[
        bool,
        typer.Option(
            "--values-only",
            help="Write aum_values.csv only (the original library's compressed=True).",
        ),
    ] = False,
    duplicates: Duplicates = DuplicatesMode.first,
    device: Device = "cpu",
    threads: Threads = 1,
    workers: Workers = 2,
    dask: Dask = None,
    quiet: Quiet = False,
) -> None:
    """Replay a recorded run into aum_values.csv and full_aum_records.csv.

    Writes the original aum library's two files, for the selected epochs, to OUT_DIR.

    Example: aum-replay compute runs/exp1 -o results/exp1 --epochs 1:150
    """
    from aum_replay.replay import compute as run_compute

    with _dask(dask) as client, _progress("replaying", quiet) as progress:
        result = run_compute(
            run_dir,
            out_dir,
            epochs=epochs,
            full=not values_only,
            duplicates=duplicates.value,
            device=device,
            threads=threads,
            workers=workers,
            progress=progress,
            client=client,
        )
    if quiet:
        return
    _notes([result])
    epochs_text = _epochs_text(result.epochs)
    out.print(
        f"{result.num_samples:,} samples, {result.num_measurements:,} measurements over "
        f"{len(result.epochs)} epoch(s) ({epochs_text}) from {result.num_shards} shard(s), "
        f"{result.num_classes} classes",
        markup=False,
    )
    dropped = "dropped" if duplicates == DuplicatesMode.first else "kept (--duplicates all)"
    out.print(
        f"duplicates: {result.duplicates_dropped:,} repeated row(s) inside an epoch {dropped}",
        markup=False,
    )
    out.print(
        f"non-finite: {result.nonfinite_margins:,} margin(s) NaN or inf; "
        f"{result.nonfinite_samples:,} sample(s) with a non-finite AUM",
        markup=False,
    )
    for path in (result.values_path, result.full_path):
        if path is not None:
            out.print(f"wrote {path}", markup=False)
    for path in result.removed:
        out.print(f"removed {path}", markup=False)
    out.print(f"done in {result.seconds:.2f} s", markup=False)


def _notes(results: Iterable[ComputeResult]) -> None:
    """Say which files of the run directories were ignored, and why."""
    for result in results:
        for tmp in result.temporaries:
            err.print(
                f"note: ignored unfinished temporary file {tmp.name} in {tmp.parent}", markup=False
            )
        for path in result.lookalikes:
            err.print(
                f"note: ignored {path.name} in {path.parent}: not named like a shard "
                "(epoch_NNNNN.rank_NNN.h5, zero-padded)",
                markup=False,
            )


def _epochs_text(epochs: list[int]) -> str:
    if len(epochs) > 3 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return ", ".join(map(str, epochs))


@app.command()
@_errors_to_exit
def info(
    run_dir: RunDir,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also read every byte of every shard and check it against its checksum "
            "(format v2; a v1 shard, which has none, is read through).",
        ),
    ] = False,
) -> None:
    """Describe a run directory: format, run id, storage, epochs, ranks, rows, ids, bytes.

    Every shard is opened and validated; a corrupt or foreign file is an error.

    Example: aum-replay info runs/exp1 --verify
    """
    from aum_replay.run import describe_run, verify_run

    summary = describe_run(run_dir)
    run = summary.run
    first = run.shards[0]
    out.print(f"run       {run.run_dir}", markup=False)
    out.print(
        f"shards    {len(run.shards)} (format v{first.format_version}, written by aum-replay "
        f"{first.package_version}), {_bytes(summary.nbytes)} on disk",
        markup=False,
    )
    checks = "checksummed" if first.format_version >= 2 else "no checksums"
    out.print(
        f"format    v{first.format_version} ({checks}); run id {first.run_id or '-'}; "
        f"storage {first.storage}",
        markup=False,
    )
    if verify:
        checked = verify_run(run)
        what = "verified against their checksums" if checks == "checksummed" else "read through"
        out.print(f"verified  {_bytes(checked)} of rows in {len(run.shards)} shards {what}")
    out.print(
        f"classes   {run.num_classes}; logits {first.logits_dtype} stored as "
        f"{first.stored_dtype}; {run.id_kind} sample ids; {summary.num_samples:,} distinct",
        markup=False,
    )
    if run.threshold:
        t = run.threshold
        out.print(
            f"threshold {len(t['sample_ids']):,} threshold samples with extra class "
            f"{t['extra_class']} (set {t.get('set_index')}, seed {t.get('seed')})",
            markup=False,
        )
    if run.metadata:
        out.print(f"metadata  {run.metadata}", markup=False)
    table = Table(box=None, pad_edge=False)
    for col in ("epoch", "ranks", "rows", "ids", "duplicates", "missing", "bytes"):
        table.add_column(col, justify="right")
    for e in summary.epochs:
        table.add_row(
            str(e.epoch),
            str(len(e.ranks)),
            f"{e.rows:,}",
            f"{e.distinct_ids:,}",
            f"{e.duplicate_rows:,}",
            f"{e.missing_ids:,}",
            _bytes(e.nbytes),
        )
    out.print(table)
    if run.temporaries:
        out.print(
            f"leftover  {len(run.temporaries)} unfinished temporary file(s), ignored: "
            + ", ".join(p.name for p in run.temporaries),
            markup=False,
        )
    if run.lookalikes:
        out.print(
            f"ignored   {len(run.lookalikes)} file(s) not named like a shard "
            "(epoch_NNNNN.rank_NNN.h5): " + ", ".join(p.name for p in run.lookalikes),
            markup=False,
        )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


RunDirs = Annotated[
    list[str],
    typer.Argument(
        metavar="RUN_DIR",
        help=(
            "One or more run directories (or fsspec URLs), e.g. threshold set 1 and set 2 of "
            "the same seed. The default rule cuts their combined ranking (mean AUM) once; with "
            "--rule paper or replication, or --alpha/--fraction, a sample is flagged when every "
            "run that scored it flags it."
        ),
        show_default=False,
    ),
]
Percentile = Annotated[
    float,
    typer.Option(
        "--percentile",
        min=0.0,
        max=100.0,
        help="alpha = this percentile of each run's threshold-sample AUMs (the paper: 99).",
    ),
]


def _check_flag_epochs(value: str | None) -> str | None:
    if value is not None and value.strip() == "auto":
        return "auto"
    return _check_epochs(value)


FlagEpochs = Annotated[
    str | None,
    typer.Option(
        "--epochs",
        "-e",
        help=(
            "Epochs that count: 'auto' (per run, up to the epoch where the threshold samples' "
            "margins turn back up: memorisation) or a selection as for compute (1:150, skip:1, "
            "...). Default: auto with the default rule, all with --rule paper/replication, "
            "--alpha or --fraction."
        ),
        callback=_check_flag_epochs,
        show_default=False,
    ),
]


class FlagRule(str, Enum):
    f1 = "f1"
    paper = "paper"
    replication = "replication"


_RULE_TEXT = {
    "f1": (
        "two-component mixture of the AUMs (with a uniform background for the tails) fitted to "
        "all runs at once, started at and spread like the threshold samples; one expected-F1 "
        "cut of the runs' combined ranking, never above a run's paper cut"
    ),
    "paper": "SPEC section 5: a percentile of the threshold samples' AUMs",
    "replication": "the replication code's: more than 1% of threshold AUMs strictly greater",
    "alpha": "given alpha",
    "fraction": "given fraction",
}


RuleOption = Annotated[
    FlagRule,
    typer.Option(
        "--rule",
        help=(
            "How alpha comes from the threshold samples: 'f1' (default: a two-component "
            "mixture of each run's AUMs, cut at the best expected F1), 'paper' (SPEC "
            "section 5: the --percentile of the threshold AUMs) or 'replication' (flag when "
            "more than 1% of the threshold AUMs are strictly greater)."
        ),
    ),
]


@app.command("flag")
@_errors_to_exit
def flag_command(
    run_dirs: RunDirs,
    out_dir: OutDir,
    rule: RuleOption = FlagRule.f1,
    percentile: Percentile = 99.0,
    epochs: FlagEpochs = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help=(
                "Fixed cut-off for every run: flag samples with AUM <= VALUE. Needed (or "
                "--fraction) when a run has no threshold samples."
            ),
            show_default=False,
        ),
    ] = None,
    fraction: Annotated[
        float | None,
        typer.Option(
            "--fraction",
            min=0.0,
            max=1.0,
            help="Flag the lowest-AUM fraction F of each run's samples (0..1) instead of alpha.",
            show_default=False,
        ),
    ] = None,
    duplicates: Duplicates = DuplicatesMode.first,
    device: Device = "cpu",
    threads: Threads = 1,
    workers: Workers = 2,
    dask: Dask = None,
    quiet: Quiet = False,
) -> None:
    """Flag mislabeled samples: AUM at or below each run's cut-off.

    The default rule (f1) and epochs (auto) are the best measured (README, "How flag chooses
    the cut-off"); --rule paper reproduces the paper's 99th percentile exactly. Writes
    OUT_DIR/mislabeled.csv (flagged samples, most suspicious first), OUT_DIR/aum_details.csv
    (every sample, every run) and OUT_DIR/flag_summary.json.

    Example: aum-replay flag runs/set1 runs/set2 -o flags
    """
    from aum_replay.flag import MissingThresholdError, flag

    if alpha is not None and fraction is not None:
        raise typer.BadParameter("give --alpha or --fraction, not both", param_hint="--alpha")
    try:
        with _dask(dask) as client, _progress("replaying", quiet) as progress:
            result = flag(
                run_dirs,
                out_dir,
                rule=rule.value,
                percentile=percentile,
                epochs=epochs,
                alpha=alpha,
                fraction=fraction,
                duplicates=duplicates.value,
                device=device,
                threads=threads,
                workers=workers,
                progress=progress,
                client=client,
            )
    except MissingThresholdError as exc:
        err.print(f"aum-replay: error: {exc}", markup=False)
        raise typer.Exit(2) from None
    for warning in result.warnings:
        err.print(f"aum-replay: warning: {warning}", markup=False)
    if quiet:
        return
    _notes(run.result for run in result.runs)
    out.print(
        f"rule {result.rule} ({_RULE_TEXT[result.rule]}); epochs {result.epochs}", markup=False
    )
    for i, run in enumerate(result.runs, start=1):
        if run.alpha_source == "threshold" and run.rule == "paper":
            how = f"{percentile:g}th percentile of {run.num_threshold:,} threshold samples"
        elif run.alpha_source == "threshold" and run.rule == "replication":
            how = f"more than 1% of {run.num_threshold:,} threshold samples above"
        elif run.alpha_source == "threshold":
            how = (
                f"mixture: {100 * (run.noise_estimate or 0.0):.1f}% mislabeled, expected F1 "
                f"{run.expected_f1 or 0.0:.3f}; {run.num_threshold:,} threshold samples"
            )
            if run.capped:
                how += f"; cut capped at the paper rule's ({percentile:g}th percentile)"
        elif run.alpha_source == "fraction":
            how = f"lowest {fraction:g} of the run's samples"
        else:
            how = "given"
        if run.auto is not None:
            turn = (
                f"threshold margins lowest at epoch {run.auto.turn}, climbing by epoch "
                f"{run.epochs[-1]}"
                if run.auto.turn is not None
                else "no memorisation seen"
            )
            counted = f"epochs {_epochs_text(run.epochs)} (auto: {turn})"
        else:
            counted = f"epochs {_epochs_text(run.epochs)}"
        if result.rule == "f1":  # one cut of the runs' combined ranking, not one per run
            line = (
                f"{run.num_flagged:,} of {run.num_scored:,} scored samples flagged, the highest "
                f"at AUM {run.alpha:.6g} ({how})"
            )
        else:
            line = (
                f"alpha {run.alpha:.6g} ({how}); "
                f"{run.num_flagged:,} of {run.num_scored:,} scored samples at or below"
            )
        out.print(f"run{i}  {run.run_dir}: {counted}; {line}", markup=False)
    if result.rule == "f1" and result.mean_aum_cut is not None:
        how_combined = f" - mean AUM over the runs that scored them <= {result.mean_aum_cut:.6g}"
    elif len(result.runs) > 1:
        how_combined = " - flagged in every run that scored them"
    else:
        how_combined = ""
    out.print(
        f"flagged {result.num_flagged:,} of {result.num_scored:,} samples "
        f"({100 * result.fraction_flagged:.1f}%){how_combined}",
        markup=False,
    )
    if result.flagged_per_class:
        table = Table(box=None, pad_edge=False)
        table.add_column("label", justify="right")
        table.add_column("flagged", justify="right")
        for label, count in result.flagged_per_class.items():
            table.add_row(str(label), f"{count:,}")
        out.print(table)
    for path in (result.mislabeled_path, result.details_path, result.summary_path):
        if path is not None:
            out.print(f"wrote {path}", markup=False)


@app.command("dynamics")
@_errors_to_exit
def dynamics_command(
    run_dir: RunDir,
    out_dir: OutDir,
    epochs: Epochs = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help=(
                "Comma-separated signals to write (default all): aum, confidence, variability, "
                "correctness, forgetting_events, never_learned, el2n, loss, aleatoric."
            ),
            show_default=False,
        ),
    ] = None,
    duplicates: Duplicates = DuplicatesMode.first,
    workers: Workers = 2,
    dask: Dask = None,
    quiet: Quiet = False,
) -> None:
    """Write every sample's training dynamics to OUT_DIR/training_dynamics.csv, in one pass.

    One row per sample, sorted by sample_id: target, num_measurements, AUM (as compute writes
    it), the data map's confidence, variability and correctness, forgetting events and
    never_learned, EL2N, loss and Data-IQ's aleatoric uncertainty (formulas in the README).

    Example: aum-replay dynamics runs/exp1 -o dyn --epochs 1: --metrics aum,confidence,variability
    """
    from aum_replay.dynamics import DYNAMICS_NAME, dynamics

    chosen = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    started = time.perf_counter()
    with _dask(dask) as client, _progress("replaying", quiet) as progress:
        table = dynamics(
            run_dir,
            out_dir,
            epochs=epochs,
            metrics=chosen,
            duplicates=duplicates.value,
            workers=workers,
            progress=progress,
            client=client,
        )
    if quiet:
        return
    summary = f"{table.height:,} samples, {int(table['num_measurements'].sum()):,} measurements"
    if "never_learned" in table.columns:
        summary += f"; never learned: {int(table['never_learned'].sum()):,}"
    if "forgetting_events" in table.columns:
        forgot = int((table["forgetting_events"].fill_null(0) > 0).sum())
        summary += f"; forgotten at least once: {forgot:,}"
    out.print(summary, markup=False)
    out.print(f"wrote {Path(out_dir).expanduser() / DYNAMICS_NAME}", markup=False)
    out.print(f"done in {time.perf_counter() - started:.2f} s", markup=False)


def _split_ids(value: str | None) -> list[str]:
    if value is None:
        return []
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise typer.BadParameter(f"no sample id in {value!r}; use e.g. --ids 3,17")
    return ids


@app.command("plot")
@_errors_to_exit
def plot_command(
    run_dir: RunDir,
    out_dir: OutDir,
    ids: Annotated[
        str | None,
        typer.Option(
            "--ids",
            help="Comma-separated sample ids whose margin-over-epochs curves to draw, e.g. 3,17.",
            show_default=False,
        ),
    ] = None,
    lowest: Annotated[
        int,
        typer.Option("--lowest", min=0, help="Also draw the margins of the N lowest-AUM samples."),
    ] = 10,
    flags: Annotated[
        Path | None,
        typer.Option(
            "--flags",
            metavar="FLAG_DIR",
            help=(
                "OUT_DIR of 'aum-replay flag': alpha and the flagged-per-class counts come from "
                "it. Default: flag this run on its own when it has threshold samples."
            ),
            show_default=False,
        ),
    ] = None,
    epochs: Epochs = None,
    rule: RuleOption = FlagRule.f1,
    percentile: Percentile = 99.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Draw PNGs: the AUM histogram, margin-over-epochs curves and flagged counts per class.

    The per-class figure needs flags: from --flags, or from the run's own threshold samples.
    The figures are written together or not at all.

    Example: aum-replay plot runs/set1 -o plots --ids 3,17 --flags flags
    """
    from aum_replay.plots import FLAGGED_PNG, plot

    paths = plot(
        run_dir,
        out_dir,
        ids=_split_ids(ids),
        lowest=lowest,
        flags=flags,
        epochs=epochs,
        rule=rule.value,
        percentile=percentile,
    )
    if quiet:
        return
    for path in paths:
        out.print(f"wrote {path}", markup=False)
    if FLAGGED_PNG not in {p.name for p in paths}:
        out.print(
            f"no {FLAGGED_PNG}: the run has no threshold samples; give --flags FLAG_DIR "
            "(the OUT_DIR of 'aum-replay flag') to draw it",
            markup=False,
        )


@app.command("demo")
@_errors_to_exit
def demo_command(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="[DIR]",
            help="Where the demo writes its runs, CSV files and plots (created if missing).",
        ),
    ] = Path("aum-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise, sets and training.")] = 0,
    noise: Annotated[
        float,
        typer.Option("--noise", min=0.0, max=0.9, help="Fraction of labels flipped uniformly."),
    ] = 0.2,
    train_epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Training epochs of each of the two runs.")
    ] = 30,
    quiet: Quiet = False,
) -> None:
    """Find flipped labels in scikit-learn's digits, end to end, and score the result.

    Flips a seeded 20% of the labels, trains a small MLP twice (threshold sets 1 and 2) while
    LogitLogger records the logits, then runs compute, flag and plot, and prints precision,
    recall and F1 of the flagged samples against the flips. About 15 s on 2 CPU cores.

    Example: aum-replay demo aum-demo
    """
    from aum_replay.demo import DemoConfig, run_demo

    with _stage_progress(quiet) as progress:
        result = run_demo(
            directory,
            seed=seed,
            noise=noise,
            config=DemoConfig(epochs=train_epochs),
            progress=progress,
        )
    out.print(
        f"precision {result.precision:.3f}  recall {result.recall:.3f}  F1 {result.f1:.3f}  "
        f"({result.true_positives:,} of the {result.num_flagged:,} flagged samples are among the "
        f"{result.num_flipped:,} flipped labels of {result.num_samples:,})",
        markup=False,
    )
    if quiet:
        return
    rows = [
        ("runs", ", ".join(str(p) for p in result.run_dirs)),
        ("aum", ", ".join(str(p) for p in result.aum_dirs)),
        ("flags", str(result.flag_dir / "mislabeled.csv")),
        ("plots", ", ".join(str(p) for p in result.plot_paths)),
        ("labels", f"{result.labels_path} (given, true, flipped)"),
    ]
    for name, text in rows:
        out.print(f"{name:<7}{text}", markup=False)
    out.print(f"done in {result.seconds:.1f} s", markup=False)


@contextmanager
def _stage_progress(
    quiet: bool, unit: str = ""
) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr whose description follows the stages of a long job.

    It appears at the first update, so an error before any work prints one line only, and only
    on a terminal: a log file gets no bar (and no stray line where it was).
    """
    if quiet or not err.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("starting", total=None)

    def update(stage: str, done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, description=stage, completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def main() -> None:
    """Entry point of the ``aum-replay`` console script."""
    tune_allocator()  # one malloc arena, fixed thresholds, before any thread starts
    app(prog_name="aum-replay")


if __name__ == "__main__":  # pragma: no cover
    main()
