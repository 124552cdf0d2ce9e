"""ResNet-18/34/50/101/152 with torchvision's parameter names and shapes (torchvision itself is not
importable next to the CPU torch wheel, so the network is written out here).

The module tree mirrors ``torchvision.models.resnet`` (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1..4`` of ``BasicBlock`` / ``Bottleneck`` with ``downsample.0/1``, ``avgpool``, ``fc``;
the stride of a Bottleneck sits on its 3x3 conv, "ResNet v1.5"), so a standard ImageNet
checkpoint (``resnet152-394f9c45.pth`` & co.) loads with ``strict=True`` through
:func:`load_pretrained`. The manifests in ``tests/fixtures/reference/torchvision_resnet*_state_dict.json``
pin the names and shapes.

``forward`` returns the five feature maps a two-stream fusion needs (the stem after ReLU and
before max-pooling, then the outputs of layer1..4); ``classify`` is the ImageNet head, kept so the
``fc`` weights of a checkpoint have a home and can be sanity-checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pipeline.errors import ConfigError, DataError

# depth -> (block kind, blocks per stage); the same table as torchvision / He et al. 2016.
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        # attribute order = torchvision's state-dict order
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4); ResNet-50/101/152."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """An ImageNet ResNet of ``depth`` in {18, 34, 50, 101, 152}.

    ``in_channels`` only changes ``conv1`` (3 for RGB). ``out_channels`` lists the channels of the
    five maps ``forward`` returns (strides 2, 4, 8, 16, 32).
    """

    def __init__(self, depth: int = 50, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ConfigError("depth", f"ResNet depth {depth!r} is not one of {sorted(RESNET_SPECS)}")
        kind, blocks = RESNET_SPECS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or cin != width * block.expansion):
                    down = nn.Sequential(_conv1x1(cin, width * block.expansion, stride),
                                         nn.BatchNorm2d(width * block.expansion))
                layers.append(block(cin, width, stride if j == 0 else 1, down))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        self.out_channels = (64,) + tuple(w * block.expansion for w in (64, 128, 256, 512))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's default: He (fan_out) for convs, BN as identity, nn.Linear's own init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, C, H, W) -> (stem, layer1, layer2, layer3, layer4) feature maps."""
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return stem, c1, c2, c3, c4

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The ImageNet head: (N, 3, H, W) -> (N, num_classes) logits."""
        return self.fc(torch.flatten(self.avgpool(self.forward(x)[-1]), 1))


def resnet18(**kw) -> ResNet:
    return ResNet(18, **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(34, **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(50, **kw)


def resnet101(**kw) -> ResNet:
    return ResNet(101, **kw)


def resnet152(**kw) -> ResNet:
    return ResNet(152, **kw)


# ---------------------------------------------------------------------------------------------
# checkpoints


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file as a flat {name: tensor} dict, without running any pickled code.

    ``.safetensors`` goes through safetensors; anything else through ``torch.load(weights_only=True)``.
    A {'state_dict': ...} / {'model': ...} wrapper and a DataParallel ``module.`` prefix are removed.
    Raises DataError naming ``path`` when the file is missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt file, or a pickle that needs code to load
        raise DataError(path, f"not a readable weights file ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not sd:
        raise DataError(path, f"expected a non-empty state dict (name -> tensor), found {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(path, f"expected a state dict of tensors; {len(bad)} entries are not, e.g. {bad[:3]}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path,
                     what: str = "") -> None:
    """Raise DataError naming ``path`` unless ``sd`` has exactly ``model``'s names and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        target = what or type(model).__name__
        raise DataError(path, f"does not match {target} ({'; '.join(parts)})")


def load_pretrained(model: ResNet, path: str | Path,
                    state_dict: Mapping[str, torch.Tensor] | None = None) -> ResNet:
    """Load an ImageNet checkpoint (torchvision layout) into ``model`` with ``strict=True``.

    ``state_dict`` may pass an already-read :func:`read_state_dict` result (``path`` then only
    names the source in errors). Raises DataError naming the file when it is missing, corrupt
    or of another architecture / depth.
    """
    sd = read_state_dict(path) if state_dict is None else state_dict
    what = f"ResNet-{model.depth}" if isinstance(model, ResNet) else ""
    check_state_dict(model, sd, path, what)
    model.load_state_dict(sd, strict=True)
    return model
