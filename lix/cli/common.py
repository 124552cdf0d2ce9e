"""What every ``lix`` command module shares: consoles, the dataset choice, common options, and
turning a LixError into one red line."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from pipeline.datasets import DATASETS
from pipeline.errors import LixError

err = Console(stderr=True)
out = Console()


Dataset = Enum("Dataset", {d: d for d in DATASETS}, type=str)  # the registered readers
DatasetOpt = typer.Option(..., "--dataset", "-d", help=f"Which dataset: {', '.join(DATASETS)}.")
ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="The parameter file (params.yaml).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
DeviceOpt = typer.Option("auto", help="auto, cpu or cuda[:N].")
ShardsOpt = typer.Option(None, "--shards", help="Shard directory (default data/shards/<dataset>).")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record comes (a test runner or a
    wrapper may swap it after the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it
        pass


def console_logging() -> None:
    """INFO lines of the project's loggers (``lix``, ``pipeline``: resumes, per-epoch summaries,
    fallbacks) on stderr, once per process, one record per line (never wrapped: DVC and Slurm
    logs are read with grep); a caller's own logging config wins."""
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for name in ("lix", "pipeline"):
        logger = logging.getLogger(name)
        if logger.handlers or logging.getLogger().handlers:
            continue
        handler = _StderrHandler()
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def user_errors(fn):
    """Print a LixError as one red line and exit with status 2 instead of a traceback; Ctrl-C
    (or SIGINT) as one line and status 130. Sets up :func:`console_logging`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        console_logging()
        try:
            return fn(*args, **kwargs)
        except LixError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]", markup=True, highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def command(app: typer.Typer, name: str):
    """``@command(app, "name")``: the Typer command ``name`` of ``app``, behind :func:`user_errors`
    (one line and exit 2 for a LixError, 130 for Ctrl-C), as every ``lix`` command is."""

    def deco(fn):
        return app.command(name)(user_errors(fn))

    return deco


SeedOpt = typer.Option(None, "--seed", help="Random seed of the run (default train.<dataset>.seed).")
EvaluateOpt = typer.Option(True, "--evaluate/--no-evaluate",
                           help="After training, evaluate best.pt on the val split into the run directory "
                                "(metrics.json, confusion.png, predictions.png).")


ResumeOpt = typer.Option(True, "--resume/--no-resume",
                         help="Go on from <out>/last.pt when it exists (refused if the run's config changed; "
                              "--no-resume starts afresh).")
FreshIfChangedOpt = typer.Option(False, "--fresh-if-changed",
                                 help="With --resume: when <out>/last.pt belongs to another config or code, start "
                                      "afresh instead of refusing (the DVC stages: an interrupted run resumes, a "
                                      "changed one retrains).")
VerifyOpt = typer.Option("size", "--verify", help="How the shards are checked before training: size (presence, "
                                                  "bytes, schema) or sha256 (also every byte; reads them all once).")
MetricsOpt = typer.Option(None, "--metrics", help="Also write the run's val scalars (mIoU, mFsc, fwIoU, fwFsc, "
                                                  "best epoch) to this JSON file (DVC's metrics).")


def check_verify(verify: str) -> str:
    """``--verify``: ConfigError unless one of the shard checks (``pipeline.shards.VERIFY_METHODS``)."""
    from pipeline.errors import ConfigError
    from pipeline.shards import VERIFY_METHODS

    if verify not in VERIFY_METHODS:
        raise ConfigError("--verify", f"expected size or sha256, got {verify!r}")
    return verify


def record_failure(out_dir: Path, exc: BaseException) -> None:
    """Leave ``<out_dir>/failed.json`` ({"error", "type"}) so that a sweep's report shows the run
    as failed, with why, instead of as missing; the exception still propagates (the command
    exits non-zero). Written atomically; a run that succeeds later removes it."""
    from pipeline.atomic import write_json

    try:
        write_json(out_dir / "failed.json", {"error": str(exc) or type(exc).__name__, "type": type(exc).__name__},
                   sort_keys=False)
    except OSError:  # the failure itself may be an unwritable directory: keep the original error
        pass


@contextlib.contextmanager
def run_outcome(out_dir: Path):
    """Around a training command: on failure leave ``failed.json`` (:func:`record_failure`) and
    re-raise; on Ctrl-C say what is kept and how to go on (exit 130, no failed.json: nothing
    failed); on success remove a ``failed.json`` an earlier attempt left."""
    try:
        yield
    except KeyboardInterrupt:
        last = out_dir / "last.pt"
        kept = f"{last} holds the last finished epoch; the same command resumes from it" if last.is_file() \
            else "no epoch had finished, nothing to resume"
        err.print(f"[yellow]interrupted:[/] {kept}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except Exception as e:
        record_failure(out_dir, e)
        raise
    (out_dir / "failed.json").unlink(missing_ok=True)


# The scalars `dvc metrics show` lists per run (the stage's --metrics file), and their order.
RUN_METRICS = ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc")


def write_run_metrics(path: Path, metrics: dict, summary: dict) -> None:
    """The run's scalars for DVC (``--metrics``): the val figures of best.pt, the best epoch,
    the epochs run, why it stopped and the last epoch's val mIoU; written atomically."""
    from pipeline.atomic import write_json

    last = summary.get("last") or {}
    data = {k: round(float(metrics[k]), 6) for k in RUN_METRICS if k in metrics}
    data |= {"best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs"),
             "stopped": summary.get("stopped")}
    if "val/miou" in last:
        data["last_miou"] = round(float(last["val/miou"]), 6)
    write_json(path, data, sort_keys=False)
