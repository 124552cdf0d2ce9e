"""DWLD alone (LIX, Sect. III-B): per-pixel DKD with per-logit weights from the dynamic weight
controller (formulas and defaults in lix/losses/dwld.py)."""

from __future__ import annotations

from lix.distill.methods.heads import REFERENCE, HeadsDistiller
from lix.distill.registry import register_distiller
from lix.losses.dwld import DWLDConfig


@register_distiller("dwld", kind="ours", config=DWLDConfig, terms={"dwld": 1.0},
                    reference=REFERENCE + ", Sect. III-B (DWLD)")
class DWLDDistiller(HeadsDistiller):
    """DWLD alone: per-pixel DKD with per-logit weights from the dynamic weight controller."""

    parts = (DWLDConfig,)
    taps = ()  # logits only
