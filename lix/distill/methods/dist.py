"""DIST (Huang et al.): inter- and intra-class Pearson relations (lix/losses/logit.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses.logit import DISTConfig, dist_loss


@register_distiller("dist", kind="logit", config=DISTConfig, taps=(),
                    reference="Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, "
                              "NeurIPS 2022, arXiv:2205.10536")
def dist(b: DistillBatch, cfg: DISTConfig) -> torch.Tensor:
    """DIST inter- + intra-class Pearson relations on the labelled pixels (:func:`lix.losses.logit.dist_loss`)."""
    return dist_loss(b.student_logits, b.teacher_logits, b.target, cfg.beta, cfg.gamma, cfg.tau, b.ignore_index)
