"""DKD (Zhao et al.): decoupled KD per labelled pixel (lix/losses/logit.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses.logit import DKDConfig, dkd_loss


@register_distiller("dkd", kind="logit", config=DKDConfig, taps=(),
                    reference="Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022, "
                              "arXiv:2203.08679")
def dkd(b: DistillBatch, cfg: DKDConfig) -> torch.Tensor:
    """Decoupled KD per labelled pixel, target class = ground truth (:func:`lix.losses.logit.dkd_loss`)."""
    return dkd_loss(b.student_logits, b.teacher_logits, b.target, cfg.alpha, cfg.beta, cfg.temperature,
                    b.ignore_index)
