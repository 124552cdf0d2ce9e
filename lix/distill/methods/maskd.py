"""MasKD (Huang et al.): masked distillation with receptive tokens (formulas in lix/losses/feature_advanced.py)."""

from __future__ import annotations

import torch
from torch import nn

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature_advanced import (
    MasKDConfig,
    channel_connector,
    dice_diversity,
    maskd_loss,
    maskd_masks,
    masked_logits_ce,
)


@register_distiller("maskd", kind="feature", config=MasKDConfig, taps=("decoder",), terms={"maskd": 1.0},
                    reference="Huang, Zhang, You, Wang, Qian & Xu, Masked Distillation with Receptive Tokens, "
                              "ICLR 2023, arXiv:2205.14589")
class MasKD(Distiller):
    """MasKD, Huang et al., "Masked Distillation with Receptive Tokens", ICLR 2023,
    arXiv:2205.14589; official code hunto/MasKD (``segmentation/losses/maskd.py``,
    ``segmentation/train_mask_module.py``, ``segmentation/train_maskd.py``; the detection variant
    ``mmrazor/mmrazor/models/losses/maskd.py``).

    Per tap, ``num_tokens`` = 8 learnable receptive tokens (T, Ct), initialised N(0, 0.01), give
    masks ``sigmoid(token . teacher_feature)`` (:func:`maskd_masks`).

    1. **Pre-training** (``needs_pretrain``, ``pretrain_epochs`` = 30; :meth:`pretrain_parameters`
       = the tokens) on the frozen teacher: task loss + Dice diversity (:func:`dice_diversity`,
       weight 1, as official). The official task loss feeds the masked feature ``sum_t m_t * x`` to
       the rest of the frozen teacher and takes its task loss; here only the teacher's features,
       logits and label are available, so the task loss is :func:`masked_logits_ce`, the
       cross-entropy of the teacher's *logits* weighted by the (upsampled) token masks. That is
       literally the official segmentation pre-training, whose mask module sits on the logits
       (``MaskModule(channels=19)`` on ``outputs[0]``); with a feature tap the masks come from the
       tap's features and weight the logits the frozen head made from them. Note that
       ``sum_t m_t * x = (sum_t m_t) * x``, so in both cases the task loss sees only the summed
       mask (a per-pixel gain: high where the teacher is right), and the Dice term spreads the
       tokens over different regions. Rejected alternative: a light head trained on the masked
       features would make the masks serve a head of our own rather than the teacher's.
    2. **Distillation**: tokens frozen (``after_pretrain``; ``requires_grad`` is off from
       construction except during pre-training, and the masks are computed under ``no_grad``),
       :func:`maskd_loss` between the connector-aligned student map and the teacher's, weight 1
       (``--lambda-kd`` 1; the official 0.4-weighted aux-head term has no counterpart here).

    Departures: the official segmentation code distils the logits (19 channels, no connector);
    here the tap is a feature map (default ``decoder``, the map right before the classifier) with
    a 1x1 conv connector where the channels differ (MFNet 16 -> 32). Official iterations of token
    pre-training: 10k at batch 16 on Cityscapes (~54 epochs); 30 epochs here (8 x C parameters,
    small training sets). The detection-only options (learned token weights ``weight_mask``, the
    student-customised masks) are not used by the segmentation code and not ported. No label
    masking during distillation (see the module docstring). Zero for equal maps with identity
    connectors (equal channels), not at initialisation otherwise.
    """

    needs_pretrain = True

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        num_tokens = self.cfg.num_tokens
        if num_tokens < 1:
            raise ValueError(f"maskd: num_tokens must be >= 1, got {num_tokens}")
        self.pretrain_epochs = int(self.cfg.pretrain_epochs)
        self.tokens = nn.ParameterDict()
        self.connectors = nn.ModuleDict()
        for t in spec.taps:
            cs, ct = spec.channels(t)
            self.tokens[t] = nn.Parameter(torch.randn(num_tokens, ct) * 0.01)
            self.connectors[t] = channel_connector(cs, ct)
        self.tokens.requires_grad_(False)  # trained only in the pre-training phase

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """The receptive tokens (switched to ``requires_grad`` for the pre-training phase)."""
        self.tokens.requires_grad_(True)
        return list(self.tokens.parameters())

    def pretrain_loss(self, teacher_feats: dict[str, torch.Tensor], teacher_logits: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        """Sum over taps of :func:`masked_logits_ce` + :func:`dice_diversity`."""
        self.tokens.requires_grad_(True)
        losses = []
        for t in self.spec.taps:
            masks = maskd_masks(teacher_feats[t].detach(), self.tokens[t])
            stride = self.spec.teacher[t][1]
            losses.append(masked_logits_ce(masks, teacher_logits.detach(), target, stride)
                          + dice_diversity(masks))
        return stack_sum(losses)

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        if any(p.requires_grad for p in self.tokens.parameters()):
            self.tokens.requires_grad_(False)
        losses = []
        for t, fs, ft in b.tap_pairs(self.spec.taps):
            with torch.no_grad():
                masks = maskd_masks(ft.detach(), self.tokens[t])
            losses.append(maskd_loss(self.connectors[t](fs), ft.detach(), masks))
        return {"maskd": stack_sum(losses)}
