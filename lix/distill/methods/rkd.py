"""RKD (Park et al.): distance and angle relations of a map's pixels (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import RKDConfig, rkd_losses
from pipeline.errors import ConfigError


@register_distiller("rkd", kind="feature", config=RKDConfig, taps=("decoder",),
                    terms={"rkd_distance": 25.0, "rkd_angle": 50.0},
                    reference="Park, Kim, Lu & Cho, Relational Knowledge Distillation, CVPR 2019, arXiv:1904.05068")
class RKD(Distiller):
    """Relational Knowledge Distillation (RKD-DA), Park et al., CVPR 2019, arXiv:1904.05068.

    Two terms: ``rkd_distance`` (weight 25) and ``rkd_angle`` (weight 50), Huber losses on the
    mean-normalised pairwise distances and on the triplet angles (official lenscloth/RKD
    ``metric/loss.py`` ``RkdDistance``/``RKdAngle`` and ``run_distill_classification.py``
    ``dist_ratio 25``, ``angle_ratio 50``; RepDistiller ``distiller_zoo/RKD.py``). No
    pre-normalisation of the samples (as ``metric/loss.py`` and RepDistiller; the classification
    script L2-normalises its embeddings first).

    Segmentation: the samples are the pixels of one image's feature map (relations within an
    image, averaged over the batch; :func:`rkd_losses`), the map average-pooled to at most
    ``max_side`` x ``max_side`` = 16 x 16 positions because the angle term is O(P^3) (P = 256:
    16.7 M cosines per image, recomputed in backward rather than stored). Tap: ``decoder``, the
    last map before the classifier (the paper relates the final embeddings). Channel counts may
    differ (only relations are compared). Sum over taps when several. No trainable parameters."""

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        max_side = self.cfg.max_side
        if not max_side >= 2:
            raise ConfigError("distill.hyper.rkd.max_side", f"must be at least 2, got {max_side!r}")
        self.max_side = int(max_side)

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        dist, angle = zip(*[rkd_losses(fs, ft, self.max_side) for _, fs, ft in b.tap_pairs(self.spec.taps)])
        return {"rkd_distance": stack_sum(list(dist)), "rkd_angle": stack_sum(list(angle))}
