"""Which backend 'auto' means for a dataset, and why.

Order of preference per dataset; the first whose requirements are met is used:

* vkitti2: reference (the rendered depth)
* kitti: crestereo (weights at depth.kitti.crestereo_weights) -> sgbm (needs no weights)
* nuimages: depth_anything (weights in model_path, the Hugging Face cache, or the hub when
  online) -> reference (only where the source carries depth: the synthetic side-car)
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import LixError
from pipeline.sources.base import DatasetReader

AUTO_ORDER = {
    "vkitti2": ("reference",),
    "kitti": ("crestereo", "sgbm"),
    "nuimages": ("depth_anything", "reference"),
}


def hub_weights_available(model: str, model_path: str | None) -> tuple[bool, bool]:
    """(found, local_only): found in model_path or the HF cache (local), or reachable online."""
    if model_path:
        return Path(model_path, "config.json").is_file(), True
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return True, True
    except Exception:  # noqa: BLE001 - a broken cache simply means "not cached"
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, True
    try:
        from huggingface_hub import model_info

        model_info(model, timeout=5)
        return True, False
    except Exception:  # noqa: BLE001 - no network, unknown model, ...
        return False, True


def _available(name: str, cfg, reader: DatasetReader, probe_id: str | None) -> tuple[bool, str, dict]:
    if name == "reference":
        ok = probe_id is not None and reader.reference_depth(probe_id) is not None
        return ok, "the source carries depth" if ok else "the source carries no depth", {}
    if name == "crestereo":
        w = cfg.crestereo_weights
        ok = bool(w) and Path(w).is_file()
        return ok, f"weights {w}" if ok else f"no CREStereo weights (depth.{reader.name}.crestereo_weights={w!r})", {}
    if name == "depth_anything":
        ok, local = hub_weights_available(cfg.model, cfg.model_path)
        where = cfg.model_path or cfg.model
        return ok, f"weights {where}" if ok else f"Depth Anything weights {where!r} not found locally or online", \
            {"local_only": local}
    return True, "needs no weights", {}


def backend_options(name: str, cfg, reader: DatasetReader) -> dict:
    """Constructor options of backend ``name`` from a DepthConfig."""
    common = {"device": cfg.device, "batch_size": cfg.batch_size, "max_depth": cfg.max_depth}
    per = {
        "crestereo": {"weights": cfg.crestereo_weights, "iters": cfg.iters},
        "depth_anything": {"model": cfg.model, "model_path": cfg.model_path, "input_size": cfg.input_size,
                           "alignment": cfg.alignment, "ground_classes": reader.GROUND_CLASSES},
        "sgbm": {"max_disparity": cfg.max_disparity, "block_size": cfg.block_size},
        "reference": {},
    }
    return {**common, **per[name]}


def resolve(dataset: str, cfg, reader: DatasetReader, probe_id: str | None) -> tuple[str, dict, str]:
    """(backend name, constructor options, reason) for ``cfg.backend`` ('auto' resolved)."""
    if cfg.backend != "auto":
        return cfg.backend, backend_options(cfg.backend, cfg, reader), "chosen in params"
    reasons = []
    for name in AUTO_ORDER[dataset]:
        ok, why, extra = _available(name, cfg, reader, probe_id)
        if ok:
            fallback = f" (fallback: {'; '.join(reasons)})" if reasons else ""
            return name, {**backend_options(name, cfg, reader), **extra}, f"auto: {why}{fallback}"
        reasons.append(why)
    hint = {"nuimages": f"put the Depth Anything model in depth.{dataset}.model_path (a directory with "
                        f"config.json and model.safetensors) or in the Hugging Face cache "
                        f"(`huggingface-cli download {cfg.model}`)"}.get(dataset, "")
    raise LixError(f"depth.{dataset}.backend=auto found no usable backend: {'; '.join(reasons)}. {hint}".strip())
