"""Which backend 'auto' means for a dataset, and why.

Order of preference per dataset; the first whose requirements are met is used:

* vkitti2: ground_truth (the rendered depth). This is the first choice, not a fallback: the
  paper used vKITTI2's rendered depth as its geometry.
* kitti: crestereo (a weights file at depth.kitti.crestereo_weights) -> sgbm (needs no weights)
* nuimages: depth_anything only (weights in depth.nuimages.model_path or the Hugging Face
  cache; the hub is asked only with depth.nuimages.hub: true). Without them 'auto' stops with
  an error: it never falls back to ground truth, because the synthetic side-car is the very
  depth the output is scored against. ``backend: ground_truth`` is the explicit alternative.

'auto' decides from local files only unless ``hub`` is true, so a stage never waits on the
network to pick its backend.
"""

from __future__ import annotations

from pipeline.depth.base import BACKENDS
from pipeline.errors import LixError
from pipeline.sources.base import DatasetReader

AUTO_ORDER = {
    "vkitti2": ("ground_truth",),
    "kitti": ("crestereo", "sgbm"),
    "nuimages": ("depth_anything",),
}


def backend_options(name: str, cfg, reader: DatasetReader) -> dict:
    """Constructor options of backend ``name`` from a DepthConfig."""
    common = {"device": cfg.device, "batch_size": cfg.batch_size, "max_depth": cfg.max_depth}
    per = {
        "crestereo": {"weights": cfg.crestereo_weights, "iters": cfg.iters},
        "depth_anything": {"model": cfg.model, "model_path": cfg.model_path, "input_size": cfg.input_size,
                           "alignment": cfg.alignment, "ground_classes": reader.GROUND_CLASSES,
                           "local_only": not cfg.hub},  # 'auto' overrides it with where it found them
        "sgbm": {"max_disparity": cfg.max_disparity, "block_size": cfg.block_size,
                 "lr_max_diff": cfg.sgbm_lr_max_diff, "smoothing": cfg.sgbm_smoothing,
                 "min_evidence": cfg.sgbm_min_evidence, "fill_max_gap": cfg.sgbm_fill_max_gap,
                 "fill_occluded": cfg.sgbm_fill_occluded},
        "ground_truth": {},  # max_depth from common
    }
    return {**common, **per[name]}


def resolve(dataset: str, cfg, reader: DatasetReader, probe_id: str | None) -> tuple[str, dict, str]:
    """(backend name, constructor options, reason) for ``cfg.backend`` ('auto' resolved)."""
    if cfg.backend != "auto":
        return cfg.backend, backend_options(cfg.backend, cfg, reader), "chosen in params"
    reasons = []
    for name in AUTO_ORDER[dataset]:
        ok, why, extra = BACKENDS[name].available(cfg, reader, probe_id)
        if ok:
            fallback = f" (fallback: {'; '.join(reasons)})" if reasons else ""
            return name, {**backend_options(name, cfg, reader), **extra}, f"auto: {why}{fallback}"
        reasons.append(why)
    hint = {
        "nuimages": f"Put the Depth Anything model in depth.{dataset}.model_path (a directory with config.json "
                    f"and model.safetensors) or in the Hugging Face cache (`huggingface-cli download {cfg.model}`), "
                    f"or set depth.{dataset}.hub: true to let auto fetch it. To use the depth the source "
                    f"carries instead, choose it explicitly with depth.{dataset}.backend: ground_truth (the "
                    f"synthetic side-car is ground truth, which the paper did not have for nuImages).",
        "vkitti2": "auto takes vKITTI2's rendered depth (frames/depth/Camera_0/depth_*.png); check the download.",
    }.get(dataset, "")
    raise LixError(f"depth.{dataset}.backend=auto found no usable backend: {'; '.join(reasons)}. {hint}".strip())
