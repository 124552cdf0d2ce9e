"""The network inputs from a ``to_device``'d batch: RGB and the teacher's geometry X.

RGB (``rgb_norm``):
* ``none``: RGB / 255 in 0..1, what the official MFNet and SNE-RoadSeg feed their nets;
* ``imagenet``: (RGB / 255 - mean) / std with torchvision's ImageNet statistics, the input
  ImageNet-initialised encoders were trained on (use it with ``pretrained``).

X = depth, one channel (``x_encoding``; depth in metres, 0 = invalid, always encodes to 0):
* ``inverse`` (default): min(1, d0 / depth), d0 = ``depth_near`` metres. Why the default:
  - inverse depth is proportional to stereo disparity, and stereo depth noise is constant in
    disparity (it grows as depth^2 in metres), so the encoding spends its range where the
    measurement is reliable and flattens the far range where SGBM/CREStereo are noise;
  - near structure (the road at the image bottom, cars, poles), which covers most labelled
    pixels, gets most of the range; 0 means "infinitely far", which is what the sky is, so the
    sky and the invalid pixels (mostly sky) agree;
  - bounded in [0, 1] like RGB / 255: no input scaling surprises for a net without input
    normalisation. d0 = 3 m is about the nearest road point these cameras see (camera ~1.65 m
    high, lower image edge 15-20 deg below the horizon), so valid depths span (0, 1]:
    6 m -> 0.5, 15 m -> 0.2, 60 m -> 0.05.
* ``log``: clamp(log(d_far / depth) / log(d_far / d0), 0, 1): 1 at d0 and nearer, 0 at
  ``depth_far`` and farther; uniform in relative depth error (the error model of monocular
  depth such as Depth Anything).
* ``official``: depth * 256 / 65535, SNE-RoadSeg's depth / 65535 on the 16-bit
  metres * 256 PNG scale (5 m -> 0.02, 80 m -> 0.31): linear in metres, so most of the
  range goes to the far, noisy depths. For loading the official checkpoints.

X = normals: the 3 components (x right, y down, z forward, unit length), invalid 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: the config module is not needed to encode inputs
    from lix.config import TrainConfig

RGB_NORMS = ("none", "imagenet")
X_ENCODINGS = ("inverse", "log", "official")
X_KINDS = ("depth", "normals")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTH_PNG_SCALE = 256.0  # the depth PNGs hold metres * 256 in 16 bits


def x_channels(x: str | None) -> int:
    """Channels of the X input: depth 1, normals 3, no X (the RGB-only student) 0."""
    return {None: 0, "depth": 1, "normals": 3}[x]


def encode_rgb(rgb: torch.Tensor, norm: str = "none") -> torch.Tensor:
    """rgb: (N, 3, H, W) float in 0..1 (``to_device``'s output) -> the net's RGB input."""
    if norm == "none":
        return rgb
    if norm == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return (rgb - mean) / std
    raise ValueError(f"rgb_norm={norm!r}; expected one of {RGB_NORMS}")


def encode_depth(depth: torch.Tensor, valid: torch.Tensor | None = None, encoding: str = "inverse",
                 near: float = 3.0, far: float = 100.0) -> torch.Tensor:
    """depth: (N, 1, H, W) float32 metres, 0 = invalid; valid: (N, H, W) or (N, 1, H, W) bool
    (None: depth > 0). Returns (N, 1, H, W) float32, invalid pixels 0. See the module docstring."""
    valid = depth > 0 if valid is None else valid.view(depth.shape) & (depth > 0)
    safe = torch.where(valid, depth, torch.ones_like(depth))  # no 1/0 or log(0) anywhere
    if encoding == "inverse":
        x = (near / safe).clamp(max=1.0)
    elif encoding == "log":
        x = (torch.log(far / safe) / math.log(far / near)).clamp(0.0, 1.0)
    elif encoding == "official":
        x = safe * (DEPTH_PNG_SCALE / 65535.0)
    else:
        raise ValueError(f"x_encoding={encoding!r}; expected one of {X_ENCODINGS}")
    return torch.where(valid, x, torch.zeros_like(x))


def encode_normals(normals: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """normals: (N, 3, H, W) float unit vectors; valid: (N, H, W) bool. Invalid pixels -> 0."""
    normals = normals.float()
    if valid is None:
        return normals
    return normals * valid.view(normals.shape[0], 1, *normals.shape[-2:]).to(normals.dtype)


def model_inputs(batch: dict, x: str | None, rgb_norm: str = "none", x_encoding: str = "inverse",
                 depth_near: float = 3.0, depth_far: float = 100.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rgb, X) for ``model(rgb, X)`` from a ``to_device``'d batch. ``x``: 'depth', 'normals'
    or None (the RGB-only student: X is None)."""
    rgb = encode_rgb(batch["rgb"], rgb_norm)
    if x is None:
        return rgb, None
    if x == "depth":
        return rgb, encode_depth(batch["depth"], batch.get("depth_valid"), x_encoding, depth_near, depth_far)
    if x == "normals":
        return rgb, encode_normals(batch["normals"], batch.get("normal_valid"))
    raise ValueError(f"x={x!r}; expected one of {X_KINDS} or None")


@dataclass(frozen=True)
class Inputs:
    """What the net sees: RGB normalisation and the X encoding (above); x None = the RGB-only student.
    ``inputs(batch)`` -> (rgb (N, 3, H, W), X (N, x_channels, H, W) or None), as :func:`model_inputs`."""

    x: str | None
    rgb_norm: str = "none"
    x_encoding: str = "inverse"
    depth_near: float = 3.0
    depth_far: float = 100.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, role: str) -> "Inputs":
        return cls(cfg.x if role == "teacher" else None, cfg.rgb_norm, cfg.x_encoding, cfg.depth_near, cfg.depth_far)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model_inputs(batch, self.x, self.rgb_norm, self.x_encoding, self.depth_near, self.depth_far)
