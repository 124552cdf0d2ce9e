"""The network a run config names: ``build_model(cfg, n_classes, x)`` looks ``cfg.model`` up in
the model registry and passes it the keyword arguments that model takes (shared by training,
evaluation, prediction and cross-dataset evaluation)."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

import lix.models  # noqa: F401  (registers the models)
from lix.config import TrainConfig
from lix.inputs import x_channels
from lix.models.registry import MODELS, create_model
from pipeline.errors import ConfigError, DataError


def build_model(cfg: TrainConfig, n_classes: int, x: str | None) -> nn.Module:
    """The registered model ``cfg.model`` (teacher with X channels, or the RGB-only student).
    ``depth`` and ``pretrained`` go to models that take them; ``pretrained`` for one that takes
    none is a ConfigError."""
    if cfg.model not in MODELS:
        raise ConfigError("train.model", f"unknown model {cfg.model!r}; expected one of {sorted(MODELS)}")
    params = inspect.signature(MODELS[cfg.model]).parameters
    kw = {}
    if "depth" in params:
        kw["depth"] = cfg.depth
    if cfg.pretrained is not None:
        if "pretrained" not in params:
            raise ConfigError("train.pretrained", f"model {cfg.model!r} takes no pretrained encoder weights; "
                                                  f"set it to null")
        if not Path(cfg.pretrained).is_file():
            raise DataError(cfg.pretrained, "pretrained weights not found (train.pretrained)")
        kw["pretrained"] = cfg.pretrained
    return create_model(cfg.model, n_classes, x_channels(x), **kw)
