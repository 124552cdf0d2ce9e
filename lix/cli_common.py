"""What every ``lix`` command module shares: consoles, the dataset choice, common options, and
turning a LixError into one red line."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from pipeline.errors import LixError
from pipeline.sources import DATASETS

err = Console(stderr=True)
out = Console()


Dataset = Enum("Dataset", {d: d for d in DATASETS}, type=str)  # the registered readers
DatasetOpt = typer.Option(..., "--dataset", "-d", help=f"Which dataset: {', '.join(DATASETS)}.")
ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="The parameter file (params.yaml).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def user_errors(fn):
    """Print a LixError as one red line and exit with status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LixError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


SeedOpt = typer.Option(None, "--seed", help="Random seed of the run (default train.<dataset>.seed).")
EvaluateOpt = typer.Option(True, "--evaluate/--no-evaluate",
                           help="After training, evaluate best.pt on the val split into the run directory "
                                "(metrics.json, confusion.png, predictions.png).")


def record_failure(out_dir: Path, exc: BaseException) -> None:
    """Leave ``<out_dir>/failed.json`` ({"error", "type"}) so that a sweep's report shows the run
    as failed, with why, instead of as missing; the exception still propagates (the command
    exits non-zero). Written atomically; a run that succeeds later removes it."""
    import json

    from pipeline.atomic import atomic_path

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "failed.json") as tmp:
            tmp.write_text(json.dumps({"error": str(exc) or type(exc).__name__, "type": type(exc).__name__},
                                      indent=2) + "\n")
    except OSError:  # the failure itself may be an unwritable directory: keep the original error
        pass
