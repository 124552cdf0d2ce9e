"""``lix train`` and ``lix evaluate``: thin over lix/train.py and lix/evaluate.py (parse, call, report)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from lix import layout
from lix.cli import common
from lix.cli.common import Dataset, command, out

train_app = typer.Typer(help="Training and evaluation of the teacher and the student.")


class Role(str, Enum):
    teacher = "teacher"
    student = "student"


@command(train_app, "train")
def train_cmd(
    dataset: Dataset = common.DatasetOpt,
    out_dir: Path = typer.Option(..., "--out", help="Run directory: checkpoints, dvclive logs, metrics."),
    role: Role = typer.Option(..., "--role", help="teacher (RGB + train.<dataset>.x) or student (RGB only)."),
    model: str = typer.Option(None, "--model", help="A registered model (mfnet, sne_roadseg); "
                                                    "default train.<dataset>.model. arch.<model> applies."),
    seed: int = common.SeedOpt,
    shards: Path = common.ShardsOpt,
    params: Path = common.ParamsOpt,
    resume: bool = common.ResumeOpt,
    fresh_if_changed: bool = common.FreshIfChangedOpt,
    metrics: Path = common.MetricsOpt,
    verify: str = common.VerifyOpt,
    evaluate: bool = common.EvaluateOpt,
    progress: bool = common.ProgressOpt,
):
    """Train the teacher or the student on a dataset's shards (torchrun for several processes)."""
    from lix.config import load_params
    from lix.train import fit
    from lix.validate import check_model_name, check_params

    p = check_params(load_params(params), methods=False)
    d = dataset.value
    if model is not None:
        check_model_name(model, "--model")
    cfg = p.train_config(d, model, seed)
    shard_dir = shards or layout.shards(d)
    common.check_verify(verify)
    with common.run_outcome(out_dir):
        summary = fit(shard_dir, out_dir, cfg, dataset=d, role=role.value, progress=progress, verify=verify,
                      resume="if_same" if fresh_if_changed and resume else resume)
        best = summary["best_miou"]
        out.print(f"[green]{d}[/] {role.value} ({cfg.model}, seed {cfg.seed}): {summary['epochs']} epochs, stopped: "
                  f"{summary['stopped']}, best val mIoU {100 * best:.2f} % at epoch {summary['best_epoch']} "
                  f"-> {out_dir}")
        finish_run(out_dir, shard_dir, summary, evaluate, metrics, progress)


def finish_run(out_dir: Path, shard_dir: Path, summary: dict, evaluate: bool, metrics: Path | None,
               progress: bool) -> None:
    """After lix train / lix distill: evaluate best.pt into the run directory (``--evaluate``) and
    write the scalars DVC lists (``--metrics``, which needs the evaluation)."""
    from pipeline.errors import ConfigError

    if metrics is not None and not evaluate:
        raise ConfigError("--metrics", "needs --evaluate (the figures come from evaluating best.pt)")
    if evaluate:
        m = evaluate_run(out_dir, shard_dir, progress, summary.get("best_val"))
        if metrics is not None and m:
            common.write_run_metrics(metrics, m, summary)


def evaluate_run(out_dir: Path, shard_dir: Path, progress: bool, best_val: dict | None = None) -> dict:
    """Evaluate ``<out_dir>/best.pt`` into ``out_dir`` (lix train/distill --evaluate); rank 0 only.
    ``best_val``: the trainer's own evaluation of those weights (fit's summary), reused."""
    import os

    from lix.evaluate import evaluate_checkpoint

    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    m = evaluate_checkpoint(out_dir / "best.pt", shard_dir, out_dir, progress=progress, metrics=best_val)
    out.print(f"val mIoU {100 * m['miou']:.2f} %, mFsc {100 * m['mfsc']:.2f} % -> {out_dir / 'metrics.json'}")
    return m


@command(train_app, "evaluate")
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="best.pt / last.pt, or an exported model.safetensors."),
    dataset: Dataset = common.DatasetOpt,
    out_dir: Path = typer.Option(..., "--out", help="Where metrics.json, confusion.png, predictions.png go."),
    shards: Path = common.ShardsOpt,
    rows: int = typer.Option(4, help="Val samples in the qualitative grid."),
    device: str = common.DeviceOpt,
    progress: bool = common.ProgressOpt,
):
    """Val metrics of a trained model, its confusion matrix and a qualitative grid."""
    from lix.evaluate import evaluate_checkpoint

    d = dataset.value
    m = evaluate_checkpoint(checkpoint, shards or layout.shards(d), out_dir, rows=rows, device=device,
                            progress=progress)
    out.print(f"[green]{d}[/] {m['role']} ({m['model']}): val mIoU {100 * m['miou']:.2f} %, "
              f"mFsc {100 * m['mfsc']:.2f} %, pixel acc {100 * m['pixel_acc']:.2f} % -> {out_dir}")
