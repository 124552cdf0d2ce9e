"""KD (Hinton, Vinyals & Dean): pixel-wise KL of the tempered softmaxes (lix/losses/logit.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses.logit import KDConfig, kd_loss


@register_distiller("kd", kind="logit", config=KDConfig, taps=(),
                    reference="Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
                              "NIPS 2014 DL Workshop, arXiv:1503.02531")
def kd(b: DistillBatch, cfg: KDConfig) -> torch.Tensor:
    """Pixel-wise KD on the labelled pixels (:func:`lix.losses.logit.kd_loss`)."""
    return kd_loss(b.student_logits, b.teacher_logits, b.target, cfg.temperature, b.ignore_index)
