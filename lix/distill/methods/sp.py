"""SP (Tung & Mori): similarity-preserving KD over the batch (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch, NoHyper
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import sp_loss


@register_distiller("sp", kind="feature", taps=("decoder",), terms={"sp": 3000.0},
                    reference="Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019, "
                              "arXiv:1907.09682")
def sp(b: DistillBatch, cfg: NoHyper) -> torch.Tensor:
    """Similarity-preserving KD (SP), Tung & Mori, ICCV 2019, arXiv:1907.09682.

    Per tap :func:`sp_loss` (batch Gram matrix of the flattened maps, row-L2-normalised, squared
    Frobenius distance / b^2), summed over taps; default weight gamma = 3000 (the paper's CIFAR
    setting; RepDistiller ``distiller_zoo/SP.py``, "verified by original author", ``-b 3000``).
    Tap: ``decoder`` (the paper and RepDistiller use one map, the last group's output before
    pooling; here the last map before the classifier). Channel counts may differ (only the N x N
    similarities are compared). Needs a batch of at least 2 images (per process under DDP) to
    carry any information; with 1 it is identically 0."""
    return stack_sum([sp_loss(fs, ft) for _, fs, ft in b.tap_pairs()])
