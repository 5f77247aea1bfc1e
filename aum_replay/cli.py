"""The ``aum-replay`` command line: thin commands over the library.

This is the only module that knows about the terminal. Library errors (:class:`AumReplayError`)
become one line on stderr and exit status 1; bad usage is left to Typer (exit status 2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

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
from aum_replay.epochs import parse_epochs
from aum_replay.errors import AumReplayError

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
    Path,
    typer.Argument(
        metavar="RUN_DIR",
        help="Run directory written by aum_replay.LogitLogger (epoch_*.rank_*.h5).",
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
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")]


def _errors_to_exit(func: F) -> F:
    """Turn the library's errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AumReplayError as exc:
            err.print(f"aum-replay: error: {exc}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr, shown from the first update (so early errors print one line)."""
    if quiet:
        yield None
        return
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


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
    quiet: Quiet = False,
) -> None:
    """Replay a recorded run into aum_values.csv and full_aum_records.csv.

    Writes the original aum library's two files, for the selected epochs, to OUT_DIR.

    Example: aum-replay compute runs/exp1 -o results/exp1 --epochs 1:150
    """
    from aum_replay.replay import compute as run_compute

    with _progress("replaying", quiet) as progress:
        result = run_compute(
            run_dir,
            out_dir,
            epochs=epochs,
            full=not values_only,
            duplicates=duplicates.value,
            device=device,
            threads=threads,
            progress=progress,
        )
    if quiet:
        return
    for tmp in result.temporaries:
        err.print(f"note: ignored unfinished temporary file {tmp.name}", markup=False)
    epochs_text = _epochs_text(result.epochs)
    out.print(
        f"{result.num_samples:,} samples, {result.num_measurements:,} measurements over "
        f"{len(result.epochs)} epoch(s) ({epochs_text}) from {result.num_shards} shard(s), "
        f"{result.num_classes} classes",
        markup=False,
    )
    if result.duplicates_dropped:
        out.print(
            f"duplicates: {result.duplicates_dropped:,} repeated row(s) inside an epoch dropped "
            "(--duplicates all counts them)",
            markup=False,
        )
    if result.nonfinite_margins:
        out.print(
            f"non-finite: {result.nonfinite_margins:,} margin(s) were NaN or inf; "
            f"{result.nonfinite_samples:,} sample(s) have a non-finite AUM",
            markup=False,
        )
    for path in (result.values_path, result.full_path):
        if path is not None:
            out.print(f"wrote {path}", markup=False)
    out.print(f"done in {result.seconds:.2f} s", markup=False)


def _epochs_text(epochs: list[int]) -> str:
    if len(epochs) > 3 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return ", ".join(map(str, epochs))


@app.command()
@_errors_to_exit
def info(run_dir: RunDir) -> None:
    """Describe a run directory: epochs, ranks, rows, ids, duplicates, gaps, bytes.

    Every shard is opened and validated; a corrupt or foreign file is an error.

    Example: aum-replay info runs/exp1
    """
    from aum_replay.run import describe_run

    summary = describe_run(run_dir)
    run = summary.run
    first = run.shards[0]
    out.print(f"run       {run.run_dir}", markup=False)
    out.print(
        f"shards    {len(run.shards)} (format v{1}, written by aum-replay "
        f"{first.package_version}), {_bytes(summary.nbytes)} on disk",
        markup=False,
    )
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


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def main() -> None:
    """Entry point of the ``aum-replay`` console script."""
    app(prog_name="aum-replay")


if __name__ == "__main__":  # pragma: no cover
    main()
