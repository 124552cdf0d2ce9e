"""FitNets (Romero et al.): hints through a 1x1 conv + BN regressor (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch
from torch import nn

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import conv_bn_connector, hint_loss


@register_distiller("fitnet", kind="feature", taps=("decoder",), terms={"fitnet": 100.0},
                    reference="Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015, arXiv:1412.6550")
class FitNet(Distiller):
    """FitNets hints, Romero et al., ICLR 2015, arXiv:1412.6550.

    A regressor per tap maps the student's map to the teacher's channels, 1x1 conv + BN
    (:func:`conv_bn_connector`; RepDistiller's ``ConvReg`` at equal spatial size is this conv +
    BN; no ReLU after it because the MFNet/SNE-RoadSeg maps come out of LeakyReLU/ReLU and
    concatenations and may be negative). Loss: :func:`hint_loss` (MSE, averaged), summed over
    taps; default weight 100 (RepDistiller ``-b 100``). A regressor exists even where the channel
    counts agree (SNE-RoadSeg), as in the paper.

    Segmentation choices: single-stage training (the hint term is added to the task loss from the
    first step, as RepDistiller and CIRKD ``losses/fitnet.py`` do, instead of the paper's separate
    hint pre-training stage); the hint tap is ``decoder``, the last map before the classifier:
    CIRKD hints exactly that map, it exists under the same name in both families, and for the
    late-fusion MFNet teacher it is the map that has seen the geometry through both the fused
    bottleneck and the fused skips (``fused`` is the alternative, ``taps=["fused"]``).
    Not zero at initialisation (the regressor is random); zero once the regressor's output equals
    the teacher's map."""

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        self.regressors = nn.ModuleDict({t: conv_bn_connector(*spec.channels(t)) for t in spec.taps})

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        return {"fitnet": stack_sum([hint_loss(self.regressors[t](fs), ft)
                                for t, fs, ft in b.tap_pairs(self.spec.taps)])}
