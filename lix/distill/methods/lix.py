"""LIX (Guo et al., arXiv:2403.08215): L = CE + λ1·DWLD + λ2·ARFD, the trainer adding the CE; its
hyper-parameters are the union of DWLD's and ARFD's (lix/losses/dwld.py, lix/losses/arfd.py)."""

from __future__ import annotations

from lix.distill.methods.heads import REFERENCE, HeadsDistiller, union_config
from lix.distill.registry import register_distiller
from lix.losses.arfd import ARFDConfig
from lix.losses.dwld import DWLDConfig

LIXConfig = union_config("LIXConfig", DWLDConfig, ARFDConfig)


@register_distiller("lix", kind="ours", config=LIXConfig, taps=None, terms={"dwld": 1.0, "arfd": 1.0},
                    reference=REFERENCE)
class LIXDistiller(HeadsDistiller):
    """LIX = CE + λ1·DWLD + λ2·ARFD (the trainer adds CE)."""

    parts = (DWLDConfig, ARFDConfig)
