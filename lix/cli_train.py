"""``lix train`` and ``lix evaluate``: thin over lix/train.py (parse, call, report)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from lix.cli_common import (Dataset, DatasetOpt, EvaluateOpt, ParamsOpt, ProgressOpt, SeedOpt, out, record_failure,
                            user_errors)

train_app = typer.Typer(help="Training and evaluation of the teacher and the student.")


class Role(str, Enum):
    teacher = "teacher"
    student = "student"


@train_app.command("train")
@user_errors
def train_cmd(
    dataset: Dataset = DatasetOpt,
    out_dir: Path = typer.Option(..., "--out", help="Run directory: checkpoints, dvclive logs, metrics."),
    role: Role = typer.Option(..., "--role", help="teacher (RGB + train.<dataset>.x) or student (RGB only)."),
    model: str = typer.Option(None, "--model", help="A registered model (mfnet, sne_roadseg); "
                                                    "default train.<dataset>.model. arch.<model> applies."),
    seed: int = SeedOpt,
    shards: Path = typer.Option(None, "--shards", help="Shard directory (default data/shards/<dataset>)."),
    params: Path = ParamsOpt,
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Go on from <out>/last.pt when it exists (refused if the config changed)."),
    evaluate: bool = EvaluateOpt,
    progress: bool = ProgressOpt,
):
    """Train the teacher or the student on a dataset's shards (torchrun for several processes)."""
    from lix.config import load_params
    from lix.train import fit

    p = load_params(params)
    d = dataset.value
    cfg = p.train_config(d, model, seed)
    shard_dir = shards or Path("data/shards") / d
    try:
        summary = fit(shard_dir, out_dir, cfg, dataset=d, role=role.value, resume=resume, progress=progress)
        best = summary["best_miou"]
        out.print(f"[green]{d}[/] {role.value} ({cfg.model}, seed {cfg.seed}): {summary['epochs']} epochs, stopped: "
                  f"{summary['stopped']}, best val mIoU {100 * best:.2f} % at epoch {summary['best_epoch']} -> {out_dir}")
        if evaluate:
            evaluate_run(out_dir, shard_dir, progress, summary.get("best_val"))
    except Exception as e:
        record_failure(out_dir, e)
        raise


def evaluate_run(out_dir: Path, shard_dir: Path, progress: bool, best_val: dict | None = None) -> dict:
    """Evaluate ``<out_dir>/best.pt`` into ``out_dir`` (lix train/distill --evaluate); rank 0 only.
    ``best_val``: the trainer's own evaluation of those weights (fit's summary), reused."""
    import os

    from lix.train import evaluate_checkpoint

    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    m = evaluate_checkpoint(out_dir / "best.pt", shard_dir, out_dir, progress=progress, metrics=best_val)
    out.print(f"val mIoU {100 * m['miou']:.2f} %, mFsc {100 * m['mfsc']:.2f} % -> {out_dir / 'metrics.json'}")
    return m


@train_app.command("evaluate")
@user_errors
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="best.pt / last.pt, or an exported model.safetensors."),
    dataset: Dataset = DatasetOpt,
    out_dir: Path = typer.Option(..., "--out", help="Where metrics.json, confusion.png, predictions.png go."),
    shards: Path = typer.Option(None, "--shards", help="Shard directory (default data/shards/<dataset>)."),
    rows: int = typer.Option(4, help="Val samples in the qualitative grid."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    progress: bool = ProgressOpt,
):
    """Val metrics of a trained model, its confusion matrix and a qualitative grid."""
    from lix.train import evaluate_checkpoint

    d = dataset.value
    m = evaluate_checkpoint(checkpoint, shards or Path("data/shards") / d, out_dir, rows=rows, device=device,
                            progress=progress)
    out.print(f"[green]{d}[/] {m['role']} ({m['model']}): val mIoU {100 * m['miou']:.2f} %, "
              f"mFsc {100 * m['mfsc']:.2f} %, pixel acc {100 * m['pixel_acc']:.2f} % -> {out_dir}")


@train_app.command("predict")
@user_errors
def predict_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An RGB-only student: best.pt / last.pt / "
                                                              "model.safetensors of lix train or lix distill."),
    input_dir: Path = typer.Option(..., "--input", help="Folder of images (png, jpg, jpeg, bmp; any size)."),
    output_dir: Path = typer.Option(..., "--output", help="Where <name>_label.png, _colour.png, _overlay.png go."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass (images of one size)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    progress: bool = ProgressOpt,
):
    """Segment a folder of RGB images with a trained student: label maps, colours, overlays."""
    from lix.predict import predict_folder

    r = predict_folder(checkpoint, input_dir, output_dir, batch_size=batch_size, device=device, progress=progress)
    out.print(f"[green]{len(r['written'])}[/] image(s) segmented -> {output_dir}")
    for path, reason in r["skipped"]:
        out.print(f"[yellow]skipped[/] {path}: {reason}")
