"""The model registry (the project's Registry, as for readers and depth backends)."""

from __future__ import annotations

from torch import nn

from pipeline.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str):
    """Class decorator: ``@register_model("mfnet")``. A duplicate name is an error."""
    return MODELS.register(name)


def create_model(name: str, n_classes: int, x_channels: int = 0, **kw) -> nn.Module:
    """Build the registered model ``name`` (an unknown name raises LixError listing the models)."""
    return MODELS[name](n_classes=n_classes, x_channels=x_channels, **kw)
