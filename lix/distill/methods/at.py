"""AT (Zagoruyko & Komodakis): attention transfer at every tap (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import ATConfig, at_loss


@register_distiller("at", kind="feature", config=ATConfig, taps=None, terms={"at": 1000.0},
                    reference="Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017, "
                              "arXiv:1612.03928")
def at(b: DistillBatch, cfg: ATConfig) -> torch.Tensor:
    """Attention transfer (AT), activation-based, Zagoruyko & Komodakis, ICLR 2017,
    arXiv:1612.03928.

    Per tap :func:`at_loss` (Q = mean_c |F|^p with p = 2, L2-normalised over the h*w positions,
    squared difference averaged over images and positions), summed over the taps; default weight
    beta = 1000. Exactly the official code (szagoruyko/attention-transfer ``cifar.py``: ``at``,
    ``at_loss``, ``opt.beta * sum(loss_groups)`` with beta 1e3) and RepDistiller
    (``distiller_zoo/AT.py``, ``-b 1000``), which average rather than the paper's beta/2 * p-norm.
    Taps: the family defaults (the official code distils every group). No connector: the
    attention map is channel-free, so MFNet's 96/132 and 16/32 channel pairs need nothing.
    Segmentation (CIRKD ``losses/at.py``): the same formula on the full-resolution map."""
    return stack_sum([at_loss(fs, ft, cfg.p) for _, fs, ft in b.tap_pairs()])
