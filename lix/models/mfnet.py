"""MFNet (Ha et al., IROS 2017) as the RGB + X teacher and the RGB-only student.

Written after the official implementation, github.com/haqishen/MFNet-pytorch ``model/MFNet.py``
at the commit that ships ``weights/MFNet/final.pth`` (427479c; names ``conv1_rgb`` ...
``decode1``). The later rewrite in that repository (``down1_rgb``/``Encoder``/``up3``, LeakyReLU
0.1, bilinear upsampling) is a different network and does not match the released checkpoint.

* ``ConvBnLeakyRelu2d``: 3x3 conv (with bias) -> BatchNorm -> LeakyReLU(0.2), not in place.
* ``MiniInception(cin, cout)``: three times ``cat(left, right)`` where left is a 3x3 conv and
  right a 3x3 conv with dilation 2 (padding 2), each of ``cout // 2`` channels; the first pair
  reads ``cin`` channels, the later pairs ``cout``.
* two encoders, widths ``RGB_CH = (16, 48, 48, 96, 96)`` and ``X_CH = (16, 16, 16, 36, 36)``:
  conv1 -> pool -> conv2_1, conv2_2 (skip, stride 2) -> pool -> conv3_1, conv3_2 (skip, stride 4)
  -> pool -> conv4 = MiniInception (skip, stride 8) -> pool -> conv5 = MiniInception (stride 16);
  pools are 2x2 max-pools with stride 2.
* late fusion: ``cat(rgb, x)`` of the stride-16 features (96 + 36 = 132 channels).
* decoder: three times nearest x2 upsampling, *addition* of the concatenated RGB/X skip of that
  stride, ``ConvBnLeakyRelu2d`` (decode4: 132 -> 64, decode3: 64 -> 64, decode2: 64 -> 32); then
  a last x2 nearest upsampling and ``decode1`` (32 -> n_classes), a full ConvBnLeakyRelu2d, so the
  logits themselves pass through BN and LeakyReLU(0.2) as in the official code.
* initialisation: PyTorch's defaults, as the official code (it has no init of its own).

The official ``forward`` takes one 4-channel image (RGB then thermal, each /255, no mean/std
normalisation) and splits it into ``x[:, :3]`` and ``x[:, 3:]``; ``forward(rgb, x)`` here takes
the two parts as they come out of that split (``forward_official`` takes the 4-channel tensor).
The X encoder keeps the official ``*_inf`` names whatever X is (thermal, depth, normals), so the
released checkpoint loads with ``strict=True``; ``x_channels`` only changes ``conv1_inf``.

Student (``x_channels=0``): the RGB encoder alone. In the official code every decoder width is
``rgb_ch[i] + inf_ch[i]`` because the decoder reads the concatenated RGB/X features, so without an
X branch it reads the RGB features only and the widths become ``rgb_ch[i]``: decode4 96 -> 48,
decode3 48 -> 48, decode2 48 -> 16, decode1 16 -> n_classes. Parameters (9 classes): RGB encoder
528,096; X encoder 73,752 (thermal/depth) or 74,040 (normals); decoder 134,427 (teacher) or
70,779 (student).

Departures:

* input size. Four 2x2 poolings and skip additions need H and W divisible by 16; the official
  code resizes its inputs to 480 x 640. ``forward`` instead pads the bottom/right edge up to the
  next multiple of 16 by *replicating* the last row/column and crops the logits back to H x W.
  Bottom/right only, so the pixel grid and the pooling windows of the real pixels stay where they
  are and cropping is ``[..., :H, :W]``; replicate rather than zeros because zero is black in RGB
  and "cold"/"no measurement" in thermal, depth and normals, an artificial edge both streams would
  react to (and replicate works at any size, unlike reflect). Inputs already divisible by 16 are
  not touched, so there the computation is exactly the official one. In training mode the padded
  pixels take part in the BatchNorm batch statistics.
* BatchNorm keeps no ``num_batches_tracked`` counter (:class:`BatchNorm2dNoCounter`): the released
  checkpoint predates it (PyTorch 0.4.0) and the state dict must equal the official one. The
  counter only matters for ``momentum=None``; MFNet uses the default momentum 0.1.
* fusion points are parameter-free ``Fuse`` modules (no state-dict entries) so that forward hooks
  can see the fused features (``feature_taps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lix.models.base import SegmentationNet
from lix.models.registry import register_model
from lix.models.resnet import check_state_dict, read_state_dict
from pipeline.errors import ConfigError, DataError
from pipeline.imageio import read_raw

RGB_CH = (16, 48, 48, 96, 96)  # official rgb_ch
X_CH = (16, 16, 16, 36, 36)  # official inf_ch
STRIDE = 16  # four 2x2 poolings
LEAKY_SLOPE = 0.2


class BatchNorm2dNoCounter(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` without the ``num_batches_tracked`` buffer (absent from the 2018
    checkpoint). Momentum stays a number (default 0.1), so the counter is never needed."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        if momentum is None:
            raise ConfigError("momentum", "BatchNorm2dNoCounter needs a numeric momentum (no batch counter)")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_batches_tracked = None  # the buffer stays registered as None: not in state_dict

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # skip _NormBase's upgrade step, which would add a num_batches_tracked entry to
        # old-format state dicts (no version metadata) and make strict loading fail.
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing_keys, unexpected_keys, error_msgs)


class ConvBnLeakyRelu2d(nn.Module):
    """conv (3x3, bias) -> BN -> LeakyReLU(0.2); ``dilation`` 2 goes with padding 2."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=dilation, dilation=dilation, bias=True)
        self.bn = BatchNorm2dNoCounter(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), negative_slope=LEAKY_SLOPE)


class MiniInception(nn.Module):
    """Three ``cat(3x3, dilated 3x3)`` pairs; output ``cout`` channels at the input's size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.conv1_left = ConvBnLeakyRelu2d(cin, half)
        self.conv1_right = ConvBnLeakyRelu2d(cin, half, dilation=2)
        self.conv2_left = ConvBnLeakyRelu2d(cout, half)
        self.conv2_right = ConvBnLeakyRelu2d(cout, half, dilation=2)
        self.conv3_left = ConvBnLeakyRelu2d(cout, half)
        self.conv3_right = ConvBnLeakyRelu2d(cout, half, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            left, right = getattr(self, f"conv{i}_left"), getattr(self, f"conv{i}_right")
            x = torch.cat((left(x), right(x)), dim=1)
        return x


class Fuse(nn.Module):
    """``cat(rgb, x)`` along channels (``rgb`` alone in the student). Parameter-free; a module only
    so that forward hooks can see the fused features."""

    def forward(self, rgb: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return rgb if x is None else torch.cat((rgb, x), dim=1)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=2, stride=2)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")  # the official F.upsample(..., 'nearest')


@register_model("mfnet")
class MFNet(SegmentationNet):
    """MFNet teacher (``x_channels`` >= 1: 1 = thermal or depth, 3 = normals) or RGB-only
    student (``x_channels=0``, ignores ``x``).

    ``weights``: optional path of an MFNet checkpoint (e.g. the official ``final.pth``) loaded with
    :func:`load_official`. ``forward(rgb, x=None)`` -> logits (N, n_classes, H, W) for any H, W.
    """

    # The taps a feature method reads when it is not told: the two deepest RGB encoder stages, the
    # fused bottleneck (the only encoder map that has seen X in the late-fusion teacher) and the
    # decoder's last map.
    default_taps: tuple[str, ...] = ("rgb4", "fused", "decoder")
    name = "mfnet"
    stride = STRIDE

    def __init__(self, n_classes: int, x_channels: int = 0, weights: str | Path | None = None):
        super().__init__(n_classes, x_channels)
        if isinstance(x_channels, bool) or not isinstance(x_channels, int) or x_channels < 0:
            raise ConfigError("x_channels", f"expected 0 (RGB student) or a positive number of X channels "
                                            f"(1 thermal/depth, 3 normals), got {x_channels!r}")
        xc = X_CH if x_channels else (0, 0, 0, 0, 0)

        # attribute order = the official registration order = state-dict order
        self._build_encoder("rgb", 3, RGB_CH)
        if x_channels:
            self._build_encoder("inf", x_channels, X_CH)
        c = [r + x for r, x in zip(RGB_CH, xc)]
        self.decode4 = ConvBnLeakyRelu2d(c[3], c[2])
        self.decode3 = ConvBnLeakyRelu2d(c[2], c[1])
        self.decode2 = ConvBnLeakyRelu2d(c[1], c[0])
        self.decode1 = ConvBnLeakyRelu2d(c[0], n_classes)
        self._fused_channels = tuple(c)

        # parameter-free fusion points: the skips at strides 2, 4, 8 and the bottleneck (16)
        self.fuse2, self.fuse3, self.fuse4, self.fuse5 = (Fuse() for _ in range(4))

        if weights is not None:
            load_official(self, weights)

    def _build_encoder(self, tag: str, cin: int, ch: tuple[int, ...]) -> None:
        setattr(self, f"conv1_{tag}", ConvBnLeakyRelu2d(cin, ch[0]))
        setattr(self, f"conv2_1_{tag}", ConvBnLeakyRelu2d(ch[0], ch[1]))
        setattr(self, f"conv2_2_{tag}", ConvBnLeakyRelu2d(ch[1], ch[1]))
        setattr(self, f"conv3_1_{tag}", ConvBnLeakyRelu2d(ch[1], ch[2]))
        setattr(self, f"conv3_2_{tag}", ConvBnLeakyRelu2d(ch[2], ch[2]))
        setattr(self, f"conv4_{tag}", MiniInception(ch[2], ch[3]))
        setattr(self, f"conv5_{tag}", MiniInception(ch[3], ch[4]))

    # -------------------------------------------------------------------------------------
    @property
    def feature_taps(self) -> dict[str, str]:
        """Name -> module path whose forward output a distiller may hook.

        ``rgb1``..``rgb5``: the RGB encoder stages (conv1, conv2_2, conv3_2, conv4, conv5 outputs,
        before pooling; 16, 48, 48, 96, 96 channels at strides 1, 2, 4, 8, 16; the same in teacher
        and student). ``fused``: the late-fusion bottleneck, stride 16 (132 channels, or 96 in the
        student where it is rgb5). ``decoder``: decode2's output, stride 2 (32 channels teacher,
        16 student), the last feature map before the classifier (decode1 sees it upsampled x2,
        nearest). All maps cover the padded input (H, W rounded up to multiples of 16).
        """
        return {"rgb1": "conv1_rgb", "rgb2": "conv2_2_rgb", "rgb3": "conv3_2_rgb",
                "rgb4": "conv4_rgb", "rgb5": "conv5_rgb", "fused": "fuse5", "decoder": "decode2"}

    @property
    def feature_channels(self) -> dict[str, tuple[int, int]]:
        """Tap name -> (channels, stride w.r.t. the input)."""
        c = self._fused_channels
        return {"rgb1": (RGB_CH[0], 1), "rgb2": (RGB_CH[1], 2), "rgb3": (RGB_CH[2], 4),
                "rgb4": (RGB_CH[3], 8), "rgb5": (RGB_CH[4], 16), "fused": (c[4], 16),
                "decoder": (c[0], 2)}

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part: ``rgb_encoder``, ``x_encoder``, ``decoder``."""
        out = {"rgb_encoder": 0, "x_encoder": 0, "decoder": 0}
        for name, p in self.named_parameters():
            top = name.split(".", 1)[0]
            part = ("rgb_encoder" if top.endswith("_rgb") else "x_encoder" if top.endswith("_inf")
                    else "decoder")
            out[part] += p.numel()
        return out

    def forward_official(self, image: torch.Tensor) -> torch.Tensor:
        """The official signature: one (N, 3 + x_channels, H, W) tensor, RGB first (e.g. RGB then
        thermal, /255), split as the official code does."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3 + self.x_channels:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"mfnet: expected a (N, {3 + self.x_channels}, H, W) image, got {got}")
        return self.forward(image[:, :3], image[:, 3:] if self.x_channels else None)

    def _encode(self, tag: str, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One encoder branch: the skips at strides 2, 4, 8 and the stride-16 features."""
        m = lambda name: getattr(self, f"{name}_{tag}")  # noqa: E731
        t = _pool(m("conv1")(t))
        s2 = m("conv2_2")(m("conv2_1")(t))
        s3 = m("conv3_2")(m("conv3_1")(_pool(s2)))
        s4 = m("conv4")(_pool(s3))
        s5 = m("conv5")(_pool(s4))
        return s2, s3, s4, s5

    def forward_aligned(self, rgb: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        """The official MFNet.forward on inputs whose H, W are multiples of 16."""
        r2, r3, r4, r5 = self._encode("rgb", rgb)
        if other is not None:
            i2, i3, i4, i5 = self._encode("inf", other)
        else:
            i2 = i3 = i4 = i5 = None
        y = self.fuse5(r5, i5)
        y = self.decode4(_up(y) + self.fuse4(r4, i4))
        y = self.decode3(_up(y) + self.fuse3(r3, i3))
        y = self.decode2(_up(y) + self.fuse2(r2, i2))
        return self.decode1(_up(y))


# ---------------------------------------------------------------------------------------------
# checkpoints and the official RGB-thermal images


def load_official(model: MFNet, path: str | Path,
                  state_dict: Mapping[str, torch.Tensor] | None = None) -> MFNet:
    """Load an MFNet checkpoint (the official ``final.pth`` layout) into ``model``, ``strict=True``.

    Read without running pickled code (``torch.load(weights_only=True)``, or safetensors for
    ``.safetensors``); a ``{'state_dict': ...}`` / ``{'model': ...}`` wrapper and DataParallel
    ``module.`` prefixes are removed, and so are ``*.num_batches_tracked`` counters written by
    PyTorch >= 0.4.1 (this model keeps none). ``state_dict`` may pass an already-read dict
    (``path`` then only names the source in errors). Raises DataError naming the file when it is
    missing, corrupt, holds non-finite values, or does not match ``model`` (other class count,
    X channels, or a teacher checkpoint for the student).
    """
    if not isinstance(model, MFNet):
        raise TypeError(f"load_official expects an MFNet, got {type(model).__name__}")
    sd = read_state_dict(path) if state_dict is None else state_dict
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
    check_state_dict(model, sd, path, f"MFNet(n_classes={model.n_classes}, x_channels={model.x_channels})")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(path, f"{len(bad)} tensors hold NaN/inf values, e.g. {bad[:3]}")
    model.load_state_dict(sd, strict=True)
    return model


def read_rgbt_png(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """An MFNet dataset image (8-bit 4-channel PNG: R, G, B, thermal) as float tensors /255:
    ``rgb`` (3, H, W) and ``thermal`` (1, H, W), the official ``x[:, :3]`` / ``x[:, 3:]``.

    OpenCV decodes 4-channel PNGs as B, G, R, A; the channels are put back in file order (the
    official reader, PIL, returns R, G, B, A). DataError naming the file when it is missing,
    truncated, not a PNG/JPEG, not 4-channel or not 8-bit.
    """
    bgra = read_raw(path, dtype=np.uint8, channels=4)
    rgbt = np.ascontiguousarray(bgra[..., [2, 1, 0, 3]].transpose(2, 0, 1))
    t = torch.from_numpy(rgbt).float() / 255.0
    return t[:3], t[3:]
