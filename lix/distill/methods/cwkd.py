"""CWKD (Shu et al.): channel-wise distillation of the logits (lix/losses/logit.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses.logit import CWKDConfig, cwkd_loss


@register_distiller("cwkd", kind="logit", config=CWKDConfig, taps=(), terms={"cwkd": 3.0},
                    reference="Shu, Liu, Gao, Yan & Shen, Channel-wise Knowledge Distillation for Dense "
                              "Prediction, ICCV 2021, arXiv:2011.13256")
def cwkd(b: DistillBatch, cfg: CWKDConfig) -> torch.Tensor:
    """Channel-wise distillation of the logits, ignored pixels out of the spatial softmax
    (:func:`lix.losses.logit.cwkd_loss`); official weight 3."""
    return cwkd_loss(b.student_logits, b.teacher_logits, b.target, cfg.temperature, b.ignore_index)
