"""Depth Anything (V1/V2, relative or metric) through transformers, with our own batched
torch preprocessing (transformers' image processors need torchvision, absent here).

Preprocessing follows the model card: keep the aspect ratio, scale towards ``input_size``
(the side whose scale is closer to 1 decides, as DPT's processor does), round both sides to
multiples of 14, bicubic resampling, ImageNet mean/std. The prediction is resized back to
the input size. Relative predictions (inverse depth up to an affine map) become metric with
:mod:`pipeline.depth.align`; metric variants are used as they are.

Alignment uses only what the frame *measured*: sparse depth from ``Frame.disparity`` and
``Frame.baseline`` (KITTI's LiDAR-derived disparity), or the camera height and orientation
with the driveable-surface pixels. ``Frame.depth`` (dense ground truth: vKITTI2's render, the
synthetic side-car) is never read here; it is what the output is scored against, and fitting
to it would score the ground truth against itself. Output follows the validity rule of
:mod:`pipeline.depth.base`: beyond ``max_depth`` or non-positive (the sky) is 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.depth import align
from pipeline.depth.base import DepthBackend, batches_by_shape, disparity_to_depth, register_backend, valid_depth
from pipeline.device import use_device
from pipeline.errors import DataError, LixError
from pipeline.sources.base import Frame

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def target_size(h: int, w: int, size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Network input size for an (h, w) image, as DPT's 'keep aspect ratio' resize."""
    sh, sw = size / h, size / w
    scale = sw if abs(1 - sw) < abs(1 - sh) else sh
    return (max(multiple, int(round(h * scale / multiple)) * multiple),
            max(multiple, int(round(w * scale / multiple)) * multiple))


def preprocess(images: torch.Tensor, size: int = 518) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, h, w) float normalised network input."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    h, w = target_size(x.shape[2], x.shape[3], size)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def postprocess(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) prediction -> (N, H, W) float32 at the original size."""
    return F.interpolate(pred[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def load_model(model: str, model_path: str | None, local_only: bool):
    """DepthAnythingForDepthEstimation from a local directory or the Hugging Face cache/hub."""
    from transformers import AutoModelForDepthEstimation

    source = model_path or model
    try:
        return AutoModelForDepthEstimation.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise LixError(f"Depth Anything weights not found at {source!r}: {str(e).splitlines()[0]}. "
                       "Download them once (e.g. `huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf`) "
                       "or set depth.<dataset>.model_path to a directory holding config.json and the weights") from None


def hub_weights_available(model: str, model_path: str | None, hub: bool = False) -> tuple[bool, bool]:
    """(found, local_only): found in model_path or the Hugging Face cache (local_only True),
    or, only when ``hub`` is True and HF_HUB_OFFLINE is unset, reachable on the hub (False).

    Without ``hub`` nothing touches the network: a pipeline stage must not depend on (or
    wait for) the hub to decide which backend it runs.
    """
    if model_path:
        return Path(model_path, "config.json").is_file(), True
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return True, True
    except Exception:  # noqa: BLE001 - a broken cache simply means "not cached"
        pass
    if not hub or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, True
    try:
        from huggingface_hub import model_info

        model_info(model, timeout=5)
        return True, False
    except Exception:  # noqa: BLE001 - no network, unknown model, ...
        return False, True


@register_backend("depth_anything")
class DepthAnythingBackend(DepthBackend):
    def __init__(self, model: str = "depth-anything/Depth-Anything-V2-Small-hf", model_path: str | None = None,
                 device: str = "auto", batch_size: int = 4, input_size: int = 518, alignment: str = "auto",
                 max_depth: float = 250.0, ground_classes: tuple[int, ...] = (), local_only: bool = True,
                 network=None, **_):
        self.device = use_device(device, "depth.device")
        self.net = (network if network is not None else load_model(model, model_path, local_only)).to(self.device)
        self.net.eval()
        self.metric = getattr(self.net.config, "depth_estimation_type", "relative") == "metric"
        self.batch_size, self.input_size = batch_size, input_size
        self.alignment, self.max_depth, self.ground_classes = alignment, max_depth, tuple(ground_classes)

    @classmethod
    def available(cls, cfg, reader, probe_id):
        ok, local = hub_weights_available(cfg.model, cfg.model_path, cfg.hub)
        where = cfg.model_path or cfg.model
        if ok:
            return True, f"weights {where}" + ("" if local else " (on the hub)"), {"local_only": local}
        looked = "in model_path" if cfg.model_path else "in the Hugging Face cache" + (
            " or on the hub" if cfg.hub else " (hub: false, so the hub was not asked)")
        return False, f"Depth Anything weights {where!r} not found {looked}", {"local_only": local}

    @torch.inference_mode()
    def raw(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Network output per image at the image's size: relative inverse depth or metres."""
        out: list[np.ndarray | None] = [None] * len(images)
        use_amp = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        for chunk in batches_by_shape([im.shape for im in images], self.batch_size):
            batch = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                pred = self.net(pixel_values=preprocess(batch, self.input_size)).predicted_depth
            res = postprocess(pred, images[chunk[0]].shape[:2]).cpu().numpy()
            for j, i in enumerate(chunk):
                out[i] = res[j]
        return out  # type: ignore[return-value]

    def _metric(self, f: Frame, pred: np.ndarray) -> np.ndarray:
        """(H, W) network output -> (H, W) float32 metres, 0 = invalid (base's validity rule)."""
        if self.metric:
            return valid_depth(pred, self.max_depth)
        # Measured sparse depth only; f.depth is ground truth, kept for scoring (module docstring).
        measured = f.disparity is not None and f.baseline is not None
        mode = self.alignment
        if mode == "auto":
            mode = "sparse" if measured else "ground"
        if mode == "sparse":
            if not measured:
                raise DataError(f.id, "alignment 'sparse' needs measured sparse depth (a sparse disparity map "
                                "and the stereo baseline), which this frame lacks; use alignment 'ground'")
            s, t = align.fit_to_sparse(pred, disparity_to_depth(f.disparity, f.K[0, 0], f.baseline, self.max_depth))
        elif mode == "ground":
            if f.camera_height is None or f.camera_up is None:
                raise DataError(f.id, "alignment 'ground' needs the camera height and orientation")
            s, t = align.fit_to_ground(pred, np.isin(f.label, self.ground_classes), f.K, f.camera_up,
                                       f.camera_height)
        else:
            raise LixError(f"unknown alignment {mode!r}; expected auto, sparse or ground")
        return align.to_metric(pred, s, t, self.max_depth)

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        return [self._metric(f, p) for f, p in zip(frames, self.raw([f.rgb for f in frames]))]
