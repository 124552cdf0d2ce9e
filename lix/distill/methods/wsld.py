"""WSLD (Zhou et al.): weighted soft label distillation per labelled pixel (lix/losses/logit.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses.logit import WSLDConfig, wsld_loss


@register_distiller("wsld", kind="logit", config=WSLDConfig, taps=(), terms={"wsld": 2.5},
                    reference="Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, Rethinking Soft Labels for "
                              "Knowledge Distillation: A Bias-Variance Tradeoff Perspective, ICLR 2021, "
                              "arXiv:2102.00650")
def wsld(b: DistillBatch, cfg: WSLDConfig) -> torch.Tensor:
    """Weighted soft label distillation per labelled pixel (:func:`lix.losses.logit.wsld_loss`); official
    weight 2.5."""
    return wsld_loss(b.student_logits, b.teacher_logits, b.target, cfg.temperature, b.ignore_index)
