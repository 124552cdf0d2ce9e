"""SNE-RoadSeg (Fan, Wang et al., ECCV 2020) as the RGB + X teacher and the RGB-only student.

Follows the official implementation (github.com/hlwang1124/SNE-RoadSeg, ``models/networks.py``:
``RoadSeg``, ``conv_block_nested``, ``upsample_layer``, ``init_net``), re-written here:

* two ImageNet ResNets of the same depth: ``encoder_another_*`` for X (depth, 1 channel, or surface
  normals, 3 channels) and ``encoder_rgb_*`` for RGB. The X stream is *added* into the RGB stream
  after conv1+bn1+relu and after each of layer1..4; the RGB stream continues from the sum, the X
  stream from its own features. The five sums x1_0..x5_0 feed the decoder.
* a UNet++ nested decoder: ``conv{i}_{j}`` (3x3 conv-BN-ReLU twice) over the concatenation of
  every earlier node of level i and ``up{i+1}_{j-1}`` (x2 bilinear, align_corners=True, then
  3x3 conv-BN-ReLU) of the node below; ``final`` is the same upsample layer from 64 channels to
  ``n_classes``, so the logits are upsample -> conv -> BN -> ReLU (non-negative, as in the paper's
  code).
* a 1-channel X conv1 starts from the mean over RGB of the pretrained conv1 filters; a 3-channel
  one (normals) takes them as they are.
* initialisation as the official training runs it (``init_net`` via ``define_RoadSeg`` with
  ``options/base_options.py``'s defaults ``--init_type kaiming --init_gain 0.02``, which
  ``scripts/train.sh`` does not override; ``define_RoadSeg``'s own default 'xavier' is never used):
  the decoder (``need_initialization``) gets kaiming_normal(fan_in, a=0) convs, zero biases,
  BN weight ~ N(1, 0.02), bias 0. ``init_net`` applies the same BN rule to the *pretrained*
  encoders too (their BN affine parameters are re-drawn, running statistics kept);
  ``reset_encoder_bn=True`` (default) reproduces that, ``False`` keeps the ImageNet BN weights.
  ``init_type`` 'xavier' / 'normal' (with ``init_gain``) are the other official choices.

The student (``x_channels=0``) is the same network without ``encoder_another_*``.
State-dict names, shapes and order equal the official ones (pinned at depth 152 by
``tests/fixtures/reference/sne_roadseg152_{depth,normals}_state_dict.json``; the KITTI-road
checkpoints there have 2 classes), so official checkpoints load with ``load_state_dict``.

Departure, input size: the network needs H and W divisible by 32 (five stride-2 stages whose
outputs are concatenated with upsampled deeper ones). The official code resizes its inputs;
``forward`` here instead pads the bottom/right edge to the next multiple of 32 by *replicating*
the last row/column and crops the logits back. Replicate rather than zero: zero is black in
RGB and "no measurement" in depth and normals, i.e. an artificial edge and a fake invalid band
that the fused stream would react to; replicated content continues the scene smoothly. Padding
only bottom/right keeps the pixel grid aligned, so cropping is ``[..., :H, :W]``.
Nothing else touches the inputs: they are used as given (RGB/255, depth/65535 or normals), no
normalisation inside ``forward``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lix.models.base import SegmentationNet
from lix.models.registry import register_model
from lix.models.resnet import ResNet, check_state_dict, load_pretrained, read_state_dict
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# depth -> channels of x1_0 .. x5_0 (the official ``filters``)
FILTERS: dict[int, tuple[int, int, int, int, int]] = {
    18: (64, 64, 128, 256, 512),
    34: (64, 64, 128, 256, 512),
    50: (64, 256, 512, 1024, 2048),
    101: (64, 256, 512, 1024, 2048),
    152: (64, 256, 512, 1024, 2048),
}
STRIDE = 32  # H and W must be multiples of this
INIT_TYPES = ("kaiming", "xavier", "normal")  # decoder init, as the official init_weights
ENCODER_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ConvBlockNested(nn.Module):
    """A UNet++ node: (3x3 conv with bias -> BN -> ReLU) twice (official ``conv_block_nested``)."""

    def __init__(self, cin: int, cmid: int, cout: int):
        super().__init__()
        self.activation = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cmid, kernel_size=3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(cmid)
        self.conv2 = nn.Conv2d(cmid, cout, kernel_size=3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.bn1(self.conv1(x)))
        return self.activation(self.bn2(self.conv2(x)))


class UpsampleLayer(nn.Module):
    """x2 bilinear (align_corners=True) -> 3x3 conv with bias -> BN -> ReLU (official ``upsample_layer``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.activation = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(self.up(x))))


class Fuse(nn.Module):
    """The stream fusion ``rgb + x`` (``rgb`` alone in the student). Parameter-free; a module only
    so that forward hooks can see the fused maps (``feature_taps``)."""

    def forward(self, rgb: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return rgb if x is None else rgb + x


@register_model("sne_roadseg")
class SNERoadSeg(SegmentationNet):
    """SNE-RoadSeg teacher (``x_channels`` 1 = depth, 3 = normals) or RGB-only student (0).

    ``pretrained``: path of a torchvision ImageNet ResNet checkpoint of the same ``depth``
    (.pth / .safetensors), loaded into every encoder; None = random init (logged once).
    ``forward(rgb, x=None)`` -> logits (N, n_classes, H, W) for any H, W (see module docstring).
    """

    # The taps a feature method reads when it is not told: the fused encoder stages 1-4 and the decoder.
    default_taps: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "decoder")
    name = "sne_roadseg"
    stride = STRIDE

    def __init__(self, n_classes: int, x_channels: int = 0, depth: int = 152,
                 pretrained: str | Path | None = None, reset_encoder_bn: bool = True,
                 init_type: str = "kaiming", init_gain: float = 0.02):
        super().__init__(n_classes, x_channels)
        if x_channels not in (0, 1, 3) or isinstance(x_channels, bool):
            raise ConfigError("x_channels", f"SNE-RoadSeg takes 0 (student), 1 (depth) or 3 (normals) "
                                            f"X channels, got {x_channels!r}")
        if depth not in FILTERS or isinstance(depth, bool):
            raise ConfigError("depth", f"SNE-RoadSeg ResNet depth must be one of {sorted(FILTERS)}, got {depth!r}")
        if init_type not in INIT_TYPES:
            raise ConfigError("init_type", f"expected one of {INIT_TYPES}, got {init_type!r}")
        self.depth = depth
        f = FILTERS[depth]

        weights = read_state_dict(pretrained) if pretrained else None

        def encoder() -> ResNet:
            net = ResNet(depth)
            if weights is not None:
                load_pretrained(net, pretrained, weights)
            return net

        # ----- encoders (X first: the official registration and state-dict order) -----
        if x_channels:
            other = encoder()
            if x_channels == 1:
                conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
                with torch.no_grad():
                    if weights is not None:
                        conv1.weight.copy_(other.conv1.weight.mean(dim=1, keepdim=True))
                    else:
                        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
                other.conv1 = conv1
            for part in ENCODER_PARTS:
                setattr(self, f"encoder_another_{part}", getattr(other, part))
        rgb = encoder()
        for part in ENCODER_PARTS:
            setattr(self, f"encoder_rgb_{part}", getattr(rgb, part))
        if weights is None:
            log.warning("sne_roadseg (ResNet-%d, %s): no ImageNet weights given (pretrained=None); "
                        "encoders are randomly initialised", depth,
                        {0: "RGB student", 1: "RGB+depth teacher", 3: "RGB+normals teacher"}[x_channels])

        # ----- UNet++ decoder, in the official order -----
        for i, j in ((1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (3, 2), (1, 3), (2, 3), (1, 4)):
            setattr(self, f"conv{i}_{j}", ConvBlockNested(f[i - 1] * (j + 1), f[i - 1], f[i - 1]))
        for i, j in ((2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 2), (4, 0), (4, 1), (5, 0)):
            setattr(self, f"up{i}_{j}", UpsampleLayer(f[i - 1], f[i - 2]))
        self.final = UpsampleLayer(f[0], n_classes)

        # parameter-free fusion points x1_0 .. x5_0 (hookable)
        self.fuse1, self.fuse2, self.fuse3, self.fuse4, self.fuse5 = (Fuse() for _ in range(5))

        self._init_official(init_type, init_gain, reset_encoder_bn)

    # -------------------------------------------------------------------------------------
    def decoder_modules(self) -> list[nn.Module]:
        """The official ``need_initialization`` list: every module outside the encoders."""
        return [m for n, m in self.named_children() if not n.startswith("encoder_") and not n.startswith("fuse")]

    def encoder_modules(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n.startswith("encoder_")]

    def _init_official(self, init_type: str, gain: float, reset_encoder_bn: bool) -> None:
        with torch.no_grad():
            for top in self.decoder_modules():
                for m in top.modules():
                    if isinstance(m, nn.Conv2d):
                        if init_type == "kaiming":
                            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                        elif init_type == "xavier":
                            nn.init.xavier_normal_(m.weight, gain=gain)
                        else:
                            nn.init.normal_(m.weight, 0.0, gain)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
                    elif isinstance(m, nn.BatchNorm2d):
                        nn.init.normal_(m.weight, 1.0, gain)
                        nn.init.zeros_(m.bias)
            if reset_encoder_bn:  # what the official init_net does to the pretrained encoders
                for top in self.encoder_modules():
                    for m in top.modules():
                        if isinstance(m, nn.BatchNorm2d):
                            nn.init.normal_(m.weight, 1.0, gain)
                            nn.init.zeros_(m.bias)

    def load_checkpoint(self, path: str | Path) -> "SNERoadSeg":
        """Load a whole-network checkpoint (ours or an official SNE-RoadSeg ``*_net_RoadSeg.pth``)
        strictly; DataError naming the file when it is missing, corrupt or of another shape."""
        sd = read_state_dict(path)
        kind = {0: "student", 1: "depth teacher", 3: "normals teacher"}[self.x_channels]
        check_state_dict(self, sd, path, f"sne_roadseg ResNet-{self.depth} {kind} with {self.n_classes} classes")
        self.load_state_dict(sd, strict=True)
        return self

    @property
    def feature_taps(self) -> dict[str, str]:
        """Name -> module path whose forward output a distiller may hook: the RGB stream after
        fusion at strides 2, 4, 8, 16, 32 (x1_0..x5_0; the plain RGB stages in the student), and
        the decoder's last feature map (x1_4, stride 2, 64 channels) before ``final``. The maps
        cover the padded input (H, W rounded up to multiples of 32)."""
        return {"stem": "fuse1", "layer1": "fuse2", "layer2": "fuse3", "layer3": "fuse4",
                "layer4": "fuse5", "decoder": "conv1_4"}

    @property
    def feature_channels(self) -> dict[str, tuple[int, int]]:
        """Tap name -> (channels, stride w.r.t. the input)."""
        f = FILTERS[self.depth]
        return {"stem": (f[0], 2), "layer1": (f[1], 4), "layer2": (f[2], 8), "layer3": (f[3], 16),
                "layer4": (f[4], 32), "decoder": (f[0], 2)}

    def forward_aligned(self, rgb: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        """The official RoadSeg.forward on inputs whose H, W are multiples of 32."""
        teacher = other is not None
        # encoder: stem, then the four stages; X is added into RGB after each
        rgb = self.encoder_rgb_relu(self.encoder_rgb_bn1(self.encoder_rgb_conv1(rgb)))
        if teacher:
            other = self.encoder_another_relu(self.encoder_another_bn1(self.encoder_another_conv1(other)))
        rgb = x1_0 = self.fuse1(rgb, other)

        rgb = self.encoder_rgb_layer1(self.encoder_rgb_maxpool(rgb))
        if teacher:
            other = self.encoder_another_layer1(self.encoder_another_maxpool(other))
        rgb = x2_0 = self.fuse2(rgb, other)

        rgb = self.encoder_rgb_layer2(rgb)
        if teacher:
            other = self.encoder_another_layer2(other)
        rgb = x3_0 = self.fuse3(rgb, other)

        rgb = self.encoder_rgb_layer3(rgb)
        if teacher:
            other = self.encoder_another_layer3(other)
        rgb = x4_0 = self.fuse4(rgb, other)

        rgb = self.encoder_rgb_layer4(rgb)
        if teacher:
            other = self.encoder_another_layer4(other)
        x5_0 = self.fuse5(rgb, other)

        # UNet++ decoder
        cat = lambda *t: torch.cat(t, dim=1)  # noqa: E731
        x1_1 = self.conv1_1(cat(x1_0, self.up2_0(x2_0)))
        x2_1 = self.conv2_1(cat(x2_0, self.up3_0(x3_0)))
        x3_1 = self.conv3_1(cat(x3_0, self.up4_0(x4_0)))
        x4_1 = self.conv4_1(cat(x4_0, self.up5_0(x5_0)))

        x1_2 = self.conv1_2(cat(x1_0, x1_1, self.up2_1(x2_1)))
        x2_2 = self.conv2_2(cat(x2_0, x2_1, self.up3_1(x3_1)))
        x3_2 = self.conv3_2(cat(x3_0, x3_1, self.up4_1(x4_1)))

        x1_3 = self.conv1_3(cat(x1_0, x1_1, x1_2, self.up2_2(x2_2)))
        x2_3 = self.conv2_3(cat(x2_0, x2_1, x2_2, self.up3_2(x3_2)))

        x1_4 = self.conv1_4(cat(x1_0, x1_1, x1_2, x1_3, self.up2_3(x2_3)))
        return self.final(x1_4)
