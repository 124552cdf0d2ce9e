"""ARFD alone (LIX, Sect. III-C): aligned, normalised, kernel-regression-recalibrated features
compared by CKA at every tap (formulas and defaults in lix/losses/arfd.py)."""

from __future__ import annotations

from lix.distill.methods.heads import REFERENCE, HeadsDistiller
from lix.distill.registry import register_distiller
from lix.losses.arfd import ARFDConfig


@register_distiller("arfd", kind="ours", config=ARFDConfig, taps=None, terms={"arfd": 1.0},
                    reference=REFERENCE + ", Sect. III-C (ARFD)")
class ARFDDistiller(HeadsDistiller):
    """ARFD alone: aligned, normalised, kernel-regression-recalibrated features compared by CKA
    at every tap (the model's default taps unless ``taps`` says)."""

    parts = (ARFDConfig,)
