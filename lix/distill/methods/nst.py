"""NST (Huang & Wang): MMD of the channels' selectivity maps (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import NSTConfig, nst_loss


@register_distiller("nst", kind="feature", config=NSTConfig, taps=None, terms={"nst": 50.0},
                    reference="Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity "
                              "Transfer, arXiv:1707.01219 (2017)")
def nst(b: DistillBatch, cfg: NSTConfig) -> torch.Tensor:
    """Neuron Selectivity Transfer (NST), Huang & Wang 2017, arXiv:1707.01219.

    Per tap :func:`nst_loss` with the polynomial kernel d = 2, c = 0 (the paper's best kernel;
    official TuSimple/neuron-selectivity-transfer ``symbol/transfer.py`` ``mmd_poly`` and
    ``config/cfgs.py``: ``poly``, c 0, weight 50), summed over taps; default weight 50. The
    official code drops the constant teacher-teacher term; it is kept here (as RepDistiller's
    ``NSTLoss`` ``full_loss``) so the value is the MMD^2 itself, >= 0 and 0 when equal; the
    gradient is the same. Batch reduction: mean over images (RepDistiller). Taps: the family
    defaults (RepDistiller distils every group; the paper its last one). No connector: the MMD
    compares channel sets of any sizes."""
    return stack_sum([nst_loss(fs, ft, cfg.degree, cfg.c) for _, fs, ft in b.tap_pairs()])
