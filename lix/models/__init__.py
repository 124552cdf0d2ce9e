"""Segmentation models, one registry: ``create_model(name, n_classes, x_channels, **kw)``.

``x_channels > 0`` builds the RGB + X teacher, ``x_channels = 0`` the RGB-only student of the
same family (it ignores ``x``). ``forward(rgb, x=None)`` returns logits (N, n_classes, H, W) at
the input's resolution. Each model lists in ``feature_taps`` the module paths a distiller may
hook (encoder stages, the decoder's last feature map).
"""

from __future__ import annotations

from lix.models import mfnet, sne_roadseg  # noqa: F401  (register the models)
from lix.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
