"""Evaluation: the confusion-matrix metrics of a model over a loader (``evaluate``, run by the
trainer after each epoch) and of a finished run (``evaluate_checkpoint``: ``metrics.json``,
``confusion.png``, ``predictions.png``), and ``load_run``, a checkpoint's weights and run config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lix.checkpoint import load_checkpoint, load_safetensors
from lix.config import TrainConfig, from_dict
from lix.data import ShardDataset
from lix.inputs import Inputs
from lix.loaders import prepare_batch
from lix.metrics import ConfusionMatrix, plot_confusion
from lix.model_factory import build_model
from lix.runtime import DistInfo, ProgressBar, autocast, resolve_device
from pipeline.atomic import write_json
from pipeline.constants import IGNORE_INDEX
from pipeline.errors import DataError

SCALAR_METRICS = ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc")


def predict_logits(model: nn.Module, inputs: Inputs, batch: dict, resolution: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) logits of ``model`` for ``batch`` at the labels' size (H, W): with
    ``resolution`` != 1 the inputs are first resized by that factor as the training
    augmentation resizes (RGB bilinear, X nearest-exact; both align_corners=False), and the
    logits resized back bilinearly, so the metric is computed against the full-size labels."""
    args = inputs(batch)
    if resolution != 1.0:
        h, w = batch["label"].shape[-2:]
        size = (max(1, round(h * resolution)), max(1, round(w * resolution)))
        rgb, *rest = args
        rgb = torch.nn.functional.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        rest = [x if x is None else torch.nn.functional.interpolate(x, size=size, mode="nearest-exact")
                for x in rest]
        args = (rgb, *rest)
    logits = model(*args)
    if logits.shape[-2:] != batch["label"].shape[-2:]:
        logits = torch.nn.functional.interpolate(logits.float(), size=tuple(batch["label"].shape[-2:]),
                                                 mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, inputs: Inputs, n_classes: int, *, d: DistInfo = DistInfo(),
             amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
             progress: bool = False, resolution: float = 1.0) -> dict:
    """Confusion-matrix metrics (lix.metrics) of ``model`` (the plain, unwrapped model) over
    this rank's slice of ``loader``, reduced over ranks; ``resolution``: see :func:`predict_logits`."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(n_classes, ignore_index=IGNORE_INDEX, device=d.device)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    with ProgressBar("val", total, progress and d.is_main) as bar:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = prepare_batch(batch, d.device, channels_last)
            with autocast(d.device, amp):
                logits = predict_logits(model, inputs, batch, resolution)
            cm.update(logits.float(), batch["label"])
            bar.advance()
    if d.distributed:
        cm.reduce()
    model.train(was_training)
    return cm.compute()


def scalar_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(metrics[k]) for k in SCALAR_METRICS if k in metrics}


def load_run(checkpoint: str | Path) -> tuple[dict, dict]:
    """(state_dict, run config) from a ``.pt`` checkpoint or an exported ``.safetensors``."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".safetensors":
        state, config = load_safetensors(checkpoint)
    else:
        ckpt = load_checkpoint(checkpoint)
        state, config = ckpt["model"], ckpt["config"]
    if "train" not in config or "n_classes" not in config:
        raise DataError(checkpoint, "carries no run config (not written by lix train)")
    return state, config


def evaluate_checkpoint(checkpoint: str | Path, shard_dir: str | Path, out_dir: str | Path, *, rows: int = 4,
                        device: str = "auto", progress: bool = True, verify: str = "size",
                        metrics: dict | None = None) -> dict:
    """Evaluate a trained model on the val split of ``shard_dir``: ``metrics.json`` (scalars and
    per-class IoU/F1 by class name, the confusion matrix), ``confusion.png`` and
    ``predictions.png`` (RGB | ground truth | prediction for the first ``rows`` val samples, in
    the dataset's colours). ``metrics``: :func:`evaluate`'s result for exactly these weights on
    this split (``fit``'s ``best_val``), used instead of a second pass. Returns the metrics written."""
    state, config = load_run(checkpoint)
    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None,
                              device=device, num_workers=0)
    d = DistInfo(device=resolve_device(device))
    val = ShardDataset(shard_dir, "val", augment=None, verify=verify)
    if list(val.class_names) != list(config["class_names"]):
        raise DataError(shard_dir, f"classes {val.class_names} differ from the model's {config['class_names']}")
    model = build_model(cfg, config["n_classes"], config["x"])
    model.load_state_dict(state)
    model.to(d.device).eval()
    inputs = Inputs.from_config(cfg, config["role"])
    if metrics is None:
        loader = DataLoader(val, batch_size=cfg.batch_size, shuffle=False)
        metrics = evaluate(model, loader, inputs, config["n_classes"], d=d, amp=cfg.amp, progress=progress,
                           resolution=cfg.resolution)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(config["class_names"])
    result = {"checkpoint": str(checkpoint), "dataset": config["dataset"], "role": config["role"],
              "model": cfg.model, "x": config["x"], "val_samples": len(val), **scalar_metrics(metrics),
              "per_class_iou": dict(zip(names, _floats(metrics["per_class_iou"]))),
              "per_class_f1": dict(zip(names, _floats(metrics["per_class_f1"]))),
              "matrix": _tolist(metrics["matrix"])}
    write_json(out_dir / "metrics.json", result, sort_keys=False, nan_as_null=True)
    plot_confusion(metrics["matrix"], names, out_dir / "confusion.png")
    write_prediction_grid(model, val, inputs, names, out_dir / "predictions.png", rows, d, cfg.amp, cfg.resolution)
    return result


def _tolist(v):
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _floats(v) -> list[float]:
    return [float(x) for x in _tolist(v)]


@torch.no_grad()
def write_prediction_grid(model: nn.Module, dataset: ShardDataset, inputs: Inputs, class_names: list[str],
                          path: Path, rows: int, d: DistInfo = DistInfo(), amp: bool = False,
                          resolution: float = 1.0) -> Path:
    """RGB | ground truth | prediction (labels over RGB, pipeline.preview's colours), one row
    per val sample, 2 px white gutters."""
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette, label_overlay, with_legend

    pal = class_palette(class_names)
    lines = []
    for i in range(min(rows, len(dataset))):
        item = dataset[i]
        batch = prepare_batch({k: v[None] if torch.is_tensor(v) else v for k, v in item.items()}, d.device)
        with autocast(d.device, amp):
            pred = predict_logits(model, inputs, batch, resolution).argmax(1)[0].to(torch.uint8).cpu().numpy()
        rgb = item["rgb"].permute(1, 2, 0).numpy()
        gt = item["label"].numpy()
        tiles = [rgb, label_overlay(rgb, gt, pal), label_overlay(rgb, pred, pal)]
        gap = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    if not lines:
        raise DataError(path, "no val samples to draw")
    gap = np.full((2, lines[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate(sum(([ln, gap] for ln in lines), [])[:-1], axis=0)
    write_image(path, with_legend(grid, class_names, pal))
    return path
