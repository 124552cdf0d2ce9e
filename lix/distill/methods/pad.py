"""PAD (Zhang et al.): prime-aware, uncertainty-weighted feature regression (formulas in
lix/losses/feature_advanced.py)."""

from __future__ import annotations

import torch
from torch import nn

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature_advanced import channel_connector, pad_loss


@register_distiller("pad", kind="feature", taps=("decoder",), terms={"pad": 1.0},
                    reference="Zhang, Lan, Dai, Zeng, Bai, Chang & Wei, Prime-Aware Adaptive Distillation, "
                              "ECCV 2020, arXiv:2008.01458")
class PAD(Distiller):
    """PAD, Zhang et al., "Prime-Aware Adaptive Distillation", ECCV 2020 (arXiv:2008.01458; the
    brief says NeurIPS 2020, the paper appeared at ECCV 2020). No official code was found (search
    of the code index: only third-party ports, e.g. a ``PADLoss`` with a Linear+BN log-variance
    branch on the student's feature vector, ``mean((s - t)^2 / (exp(log_var) + 1e-5)) +
    mean(log_var)``), so this follows the paper: feature regression as a Gaussian likelihood whose
    variance the student predicts, L = 1/N sum_i (||f_s(x_i) - f_t(x_i)||^2 / sigma_i^2 + log sigma_i^2),
    the sample weight 1/sigma_i^2 emphasising the "prime" samples.

    Dense adaptation: each pixel is a sample. Per tap, a connector (1x1 conv where the channels
    differ) aligns the student map, and a variance head (1x1 conv on the aligned map -> 1 channel,
    log sigma^2 per pixel, zero-initialised so that training starts as plain MSE) predicts the
    uncertainty; :func:`pad_loss` (per-channel mean of the squared error, so the log-variance term
    balances it for any channel count), summed over taps, weight 1. The log-variance is not clamped
    (the eps of the port is replaced by the zero initialisation). Label-free (as FitNet-style
    regression; see the module docstring). Zero for equal maps with identity connectors (equal
    channels) at initialisation.
    """

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        self.connectors, self.log_var = nn.ModuleDict(), nn.ModuleDict()
        for t in spec.taps:
            cs, ct = spec.channels(t)
            self.connectors[t] = channel_connector(cs, ct)
            head = nn.Conv2d(ct, 1, kernel_size=1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.log_var[t] = head

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        losses = []
        for t, fs, ft in b.tap_pairs(self.spec.taps):
            s = self.connectors[t](fs)
            losses.append(pad_loss(s, ft.detach(), self.log_var[t](s)))
        return {"pad": stack_sum(losses)}
