"""Read a model's ``feature_taps`` with forward hooks, so model code carries no distillation plumbing.

    with FeatureTaps(model, ["layer4", "decoder"]) as taps:
        logits = model(rgb, x)
    feats = taps.features            # {"layer4": tensor, "decoder": tensor}

Hooks are removed on exit. Tensors are stored as the modules return them (still in the graph,
so a distillation loss can back-propagate through the student's taps); ``detach=True`` stores
detached copies (e.g. for a frozen teacher).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pipeline.errors import ConfigError


def resolve_taps(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Tap name -> the module at its path. ConfigError for an unknown name or a dangling path."""
    taps: dict[str, str] = getattr(model, "feature_taps", None) or {}
    if not taps:
        raise ConfigError("feature_taps", f"{type(model).__name__} declares no feature taps")
    wanted = list(taps) if names is None else list(names)
    out = {}
    for name in wanted:
        if name not in taps:
            raise ConfigError("feature_taps", f"unknown tap {name!r} for {type(model).__name__}; "
                                              f"expected one of {sorted(taps)}")
        try:
            out[name] = model.get_submodule(taps[name])
        except AttributeError:
            raise ConfigError("feature_taps", f"tap {name!r} -> {taps[name]!r} is not a submodule of "
                                              f"{type(model).__name__}") from None
    return out


class FeatureTaps:
    """Context manager recording the outputs of the named taps during forward passes."""

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None, detach: bool = False):
        self.modules = resolve_taps(model, names)
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = output.detach() if self.detach else output

        return hook

    def __enter__(self) -> "FeatureTaps":
        self.features.clear()
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
