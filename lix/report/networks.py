"""A finished run's network for the pictures: loaded from its checkpoint in eval mode with its
Inputs, and run on single val images of the shards. Torch is imported inside the functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from lix import layout
from pipeline.errors import DataError


def torch_device(device: str):
    """``"cpu"`` / ``"cuda[:N]"`` as a torch.device (lix.runtime.resolve_device: checked, named in errors)."""
    from lix.runtime import resolve_device

    return resolve_device(device, "device")


def load_net(ckpt: dict, path: Path, class_names: Sequence[str], device):
    """(model on ``device`` in eval mode, its Inputs, run config) from a loaded checkpoint.
    DataError when the run's classes are not the shards'."""
    from lix.config import TrainConfig, from_dict
    from lix.inputs import Inputs
    from lix.model_factory import build_model

    config = ckpt["config"]
    if not isinstance(config, dict) or "train" not in config or "n_classes" not in config:
        raise DataError(path, "carries no run config (not written by lix train)")
    if list(config.get("class_names", [])) != list(class_names):
        raise DataError(path, f"classes {config.get('class_names')} differ from the shards' {list(class_names)}")
    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None)
    net = build_model(cfg, config["n_classes"], config["x"])
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval(), Inputs.from_config(cfg, config["role"]), config


def _batch(item: dict, device) -> dict:
    import torch

    from lix.loaders import prepare_batch

    return prepare_batch({k: v[None] if torch.is_tensor(v) else v for k, v in item.items()}, device)


def logits_of(net, inputs, item: dict, device):
    """(1, C, H, W) float32 logits of one ShardDataset item."""
    import torch

    with torch.no_grad():
        return net(*inputs(_batch(item, device))).float()


def val_items(shards_root: str | Path, dataset: str, n_images: int) -> tuple[list[dict], list[str]]:
    """(the first ``n_images`` val items of ``<shards_root>/<dataset>``, its class names); DataError
    when the val split is empty."""
    from lix.data import ShardDataset

    shard_dir = Path(shards_root) / dataset
    ds = ShardDataset(shard_dir, "val", augment=None)
    n = min(int(n_images), len(ds))
    if n < 1:
        raise DataError(shard_dir, "no val samples to draw")
    return [ds[i] for i in range(n)], list(ds.class_names)


def rgb_of(item: dict) -> np.ndarray:
    """A ShardDataset item's RGB (3, H, W) uint8 tensor as an (H, W, 3) uint8 array."""
    return item["rgb"].permute(1, 2, 0).numpy()


def load_teacher(runs_root: str | Path, dataset: str, model: str, seed: int, config: dict,
                 class_names: Sequence[str], device):
    """(network, Inputs) of the teacher a student run distilled from: the matrix's teacher of the
    same seed, else the checkpoint its config recorded; DataError when neither exists."""
    from lix.checkpoint import load_checkpoint

    candidates = [layout.teacher_checkpoint(dataset, model, seed, "best", runs_root)]
    recorded = (config.get("distill") or {}).get("teacher")
    if recorded:
        candidates.append(Path(recorded))
    for p in candidates:
        if p.is_file():
            net, inputs, _ = load_net(load_checkpoint(p, required=("model", "config")), p, class_names, device)
            return net, inputs
    raise DataError(candidates[0], "teacher checkpoint not found (the DWC takes the teacher's softmax)")
