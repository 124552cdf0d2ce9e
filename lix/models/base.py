"""The RGB + X contract every segmentation model of the registry keeps.

A model is a teacher (``x_channels`` >= 1: RGB and an X image, e.g. depth or normals, fused inside
the net) or the RGB-only student of the same family (``x_channels = 0``, which ignores ``x``).

* ``forward(rgb, x=None)``: rgb (N, 3, H, W) float in [0, 1] (or normalised), x (N, x_channels, H, W)
  float or None -> logits (N, n_classes, H, W), for any H, W: the inputs are padded bottom/right to
  multiples of ``stride`` by *replicating* the last row/column (zero is black in RGB and "no
  measurement" in X: an artificial edge both streams would react to), the subclass's
  ``forward_aligned`` runs on the padded inputs, and the logits are cropped back to H x W.
  Bottom/right only, so the real pixels keep their place on the pooling grid; inputs already
  divisible by ``stride`` are not touched.
* ``feature_taps``: tap name -> module path a distiller may hook (lix/models/taps.py);
  ``feature_channels``: tap name -> (channels, stride w.r.t. the input); ``default_taps``: the taps a
  feature method reads when it is not told.

The base holds no parameters or buffers, so the subclasses' state-dict keys are their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError


class SegmentationNet(nn.Module):
    """Base of the RGB + X segmentation models. Subclasses set ``name`` (the registry name, used in
    error messages), ``stride`` (H and W must be multiples of it inside the net) and
    ``default_taps``, and implement ``forward_aligned``, ``feature_taps`` and ``feature_channels``."""

    name: str = "model"
    stride: int = 1
    default_taps: tuple[str, ...] = ()

    def __init__(self, n_classes: int, x_channels: int):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError("n_classes", f"expected a positive integer, got {n_classes!r}")
        self.n_classes, self.x_channels = n_classes, x_channels

    @property
    def feature_taps(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def feature_channels(self) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    def forward_aligned(self, rgb: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The network on inputs whose H, W are multiples of ``stride``; ``x`` None in the student."""
        raise NotImplementedError

    def check_inputs(self, rgb: torch.Tensor, x: torch.Tensor | None) -> None:
        """ValueError naming the model unless rgb is a non-empty (N, 3, H, W) float tensor and, in a
        teacher, x a (N, x_channels, H, W) float tensor of rgb's N, H and W."""
        if not isinstance(rgb, torch.Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"{self.name}: rgb must be (N, 3, H, W), got "
                             f"{tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__}")
        if not rgb.is_floating_point():
            raise ValueError(f"{self.name}: rgb must be floating point in [0, 1] (image / 255), got {rgb.dtype}")
        if rgb.shape[0] == 0 or rgb.shape[2] == 0 or rgb.shape[3] == 0:
            raise ValueError(f"{self.name}: empty input {tuple(rgb.shape)}")
        if not self.x_channels:
            return
        if x is None:
            raise ValueError(f"{self.name} teacher (x_channels={self.x_channels}) needs x, got None")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.x_channels \
                or x.shape[0] != rgb.shape[0] or x.shape[2:] != rgb.shape[2:]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: x must be (N, {self.x_channels}, H, W) matching rgb "
                             f"{tuple(rgb.shape)}, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be floating point, got {x.dtype}")

    def pad_to_stride(self, t: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H', W'), H' and W' the next multiples of ``stride``, the last
        row/column replicated; ``t`` itself when already aligned."""
        ph, pw = -t.shape[-2] % self.stride, -t.shape[-1] % self.stride
        return F.pad(t, (0, pw, 0, ph), mode="replicate") if ph or pw else t

    def forward(self, rgb: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """rgb (N, 3, H, W), x (N, x_channels, H, W) or None -> logits (N, n_classes, H, W).
        Any H, W: padded bottom/right (replicate) to multiples of ``stride``, logits cropped back.
        The student ignores ``x``."""
        self.check_inputs(rgb, x)
        h, w = rgb.shape[-2:]
        other = self.pad_to_stride(x) if self.x_channels else None
        out = self.forward_aligned(self.pad_to_stride(rgb), other)
        return out if h % self.stride == 0 and w % self.stride == 0 else out[..., :h, :w]
