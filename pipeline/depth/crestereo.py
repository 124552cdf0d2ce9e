"""CREStereo as a depth backend: the two-pass recipe, disparity -> depth = fx * B / d.

CREStereo is dense by design: it regresses a disparity for every pixel, occluded and
textureless ones included, and has no confidence output. So the only pixels it leaves invalid
(0) are those of base's validity rule: disparity <= 0 and depth beyond ``max_depth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.depth.base import DepthBackend, batches_by_shape, disparity_to_depth, register_backend
from pipeline.depth.crestereo_net import CREStereo, infer_disparity
from pipeline.device import use_device
from pipeline.errors import DataError
from pipeline.sources.base import Frame


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A CREStereo checkpoint as a state dict: safetensors, or a torch file loaded with
    ``weights_only=True`` (never unpickles code). Nested {'state_dict': ...} is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CREStereo weights not found (e.g. crestereo_eth3d.pth from the public PyTorch "
                        "conversion); set depth.kitti.crestereo_weights to its path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file or a pickle that needs code
        raise DataError(path, f"not a loadable weights file ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


@register_backend("crestereo")
class CREStereoBackend(DepthBackend):
    def __init__(self, weights: str | None = None, device: str = "auto", iters: int = 20, batch_size: int = 4,
                 max_depth: float = 250.0, network: CREStereo | None = None, **_):
        self.device = use_device(device, "depth.device")
        if network is None:
            network = CREStereo()
            try:
                network.load_state_dict(load_state_dict(weights or ""), strict=True)
            except RuntimeError as e:
                raise DataError(weights or "", f"does not match the CREStereo architecture: {e}") from None
        self.net = network.to(self.device).eval()
        self.iters, self.batch_size, self.max_depth = iters, batch_size, max_depth

    @classmethod
    def available(cls, cfg, reader, probe_id):
        w = cfg.crestereo_weights
        ok = bool(w) and Path(w).is_file()
        return ok, f"weights {w}" if ok else f"no CREStereo weights (depth.{reader.name}.crestereo_weights={w!r})", {}

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 pairs -> (N, H, W) float32 disparity in pixels."""
        to_t = lambda a: torch.from_numpy(a).to(self.device).permute(0, 3, 1, 2).float()  # noqa: E731
        return infer_disparity(self.net, to_t(left), to_t(right), self.iters).cpu().numpy()

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        """(H, W) float32 metres per frame, 0 = invalid (d <= 0 or beyond max_depth)."""
        for f in frames:
            self.require_stereo(f)
        out: list[np.ndarray | None] = [None] * len(frames)
        for chunk in batches_by_shape([f.rgb.shape for f in frames], self.batch_size):
            group = [frames[i] for i in chunk]
            disp = self.disparity(np.stack([f.rgb for f in group]), np.stack([f.right_rgb for f in group]))
            for i, f, d in zip(chunk, group, disp):
                out[i] = disparity_to_depth(d, f.K[0, 0], f.baseline, self.max_depth)
        return out  # type: ignore[return-value]
