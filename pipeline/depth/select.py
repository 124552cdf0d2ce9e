"""Which backend 'auto' means for a dataset, and why.

Order of preference per dataset; the first whose requirements are met is used:

* vkitti2: reference (the rendered depth)
* kitti: crestereo (weights at depth.kitti.crestereo_weights) -> sgbm (needs no weights)
* nuimages: depth_anything (weights in model_path, the Hugging Face cache, or the hub when
  online) -> reference (only where the source carries depth: the synthetic side-car)
"""

from __future__ import annotations

from pipeline.depth.base import BACKENDS
from pipeline.errors import LixError
from pipeline.sources.base import DatasetReader

AUTO_ORDER = {
    "vkitti2": ("ground_truth",),
    "kitti": ("crestereo", "sgbm"),
    "nuimages": ("depth_anything", "ground_truth"),
}


def backend_options(name: str, cfg, reader: DatasetReader) -> dict:
    """Constructor options of backend ``name`` from a DepthConfig."""
    common = {"device": cfg.device, "batch_size": cfg.batch_size, "max_depth": cfg.max_depth}
    per = {
        "crestereo": {"weights": cfg.crestereo_weights, "iters": cfg.iters},
        "depth_anything": {"model": cfg.model, "model_path": cfg.model_path, "input_size": cfg.input_size,
                           "alignment": cfg.alignment, "ground_classes": reader.GROUND_CLASSES},
        "sgbm": {"max_disparity": cfg.max_disparity, "block_size": cfg.block_size},
        "ground_truth": {},
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
    hint = {"nuimages": f"put the Depth Anything model in depth.{dataset}.model_path (a directory with "
                        f"config.json and model.safetensors) or in the Hugging Face cache "
                        f"(`huggingface-cli download {cfg.model}`)"}.get(dataset, "")
    raise LixError(f"depth.{dataset}.backend=auto found no usable backend: {'; '.join(reasons)}. {hint}".strip())
