"""VID (Ahn et al.): variational information distillation (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch
from torch import nn

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import VIDConfig, VIDRegressor, vid_nll
from pipeline.errors import ConfigError


@register_distiller("vid", kind="feature", config=VIDConfig, taps=None, terms={"vid": 1.0},
                    reference="Ahn, Hu, Damianou, Lawrence & Dai, Variational Information Distillation for "
                              "Knowledge Transfer, CVPR 2019, arXiv:1904.05835")
class VID(Distiller):
    """Variational Information Distillation (VID-I), Ahn et al., CVPR 2019, arXiv:1904.05835.

    Per tap a :class:`VIDRegressor` predicts a Gaussian over the teacher's map from the
    student's (mean by three 1x1 convs with ReLUs, mid channels = the teacher's channels as in
    RepDistiller ``train_student.py``; per-channel variance softplus(alpha) + 1e-5, initial 5.0);
    loss :func:`vid_nll`, averaged over elements, summed over taps; default weight 1
    (RepDistiller ``-b 1``). Taps: the family defaults (RepDistiller distils every group).
    Segmentation: the NLL is per pixel at full tap resolution, unmasked. Not zero at any point:
    its minimum for given variances is ``0.5 * mean_c log var_c``, reached when the predicted mean
    equals the teacher's map."""

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        init_pred_var, eps = self.cfg.init_pred_var, self.cfg.eps
        if not (eps > 0 and init_pred_var > eps):
            raise ConfigError("distill.hyper.vid.init_pred_var", f"must exceed eps > 0, got {init_pred_var!r} "
                                                                 f"(eps {eps!r})")
        self.regressors = nn.ModuleDict()
        for t in spec.taps:
            cs, ct = spec.channels(t)
            self.regressors[t] = VIDRegressor(cs, ct, ct, init_pred_var, eps)

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        losses = []
        for t, fs, ft in b.tap_pairs(self.spec.taps):
            mean, var = self.regressors[t](fs)
            losses.append(vid_nll(mean, ft, var))
        return {"vid": stack_sum(losses)}
