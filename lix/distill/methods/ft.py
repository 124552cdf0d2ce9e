"""Factor Transfer (Kim et al.): a pre-trained paraphraser's factor (formulas in lix/losses/feature.py)."""

from __future__ import annotations

import torch
from torch import nn

from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import register_distiller
from lix.losses._common import stack_sum
from lix.losses.feature import FTConfig, Paraphraser, factor_transfer_loss, reconstruction_loss, translator
from pipeline.errors import ConfigError


@register_distiller("ft", kind="feature", config=FTConfig, taps=("decoder",), terms={"ft": 500.0},
                    reference="Kim, Park & Kwak, Paraphrasing Complex Network: Network Compression via "
                              "Factor Transfer, NeurIPS 2018, arXiv:1802.04977")
class FactorTransfer(Distiller):
    """Factor Transfer (FT), Kim, Park & Kwak, NeurIPS 2018, arXiv:1802.04977.

    Per tap a :class:`Paraphraser` on the teacher's map (factor channels m = round(Ct * rate),
    rate k = 0.5) is **pre-trained** on the frozen teacher's features alone with a reconstruction
    loss (:meth:`pretrain_loss`; ``needs_pretrain``; :meth:`pretrain_parameters` = the
    paraphrasers); then a :func:`translator` on the student's map is trained with the student
    against the paraphraser's factor: :func:`factor_transfer_loss` with p = 1, summed over taps,
    default weight beta = 500 (authors' ``train_student.py``; RepDistiller uses 200 on CIFAR-100).

    During distillation the paraphraser is **frozen**: :meth:`Distiller.after_pretrain` (called
    by the trainer after pre-training or loading its cache) switches its ``requires_grad`` off,
    ``forward`` does the same if that was skipped, and the teacher's factor is computed under
    ``torch.no_grad``. Its grads stay None, so an optimizer that holds it skips it, weight decay
    included; the translator trains with the student. The paraphraser has no BN, so train/eval
    mode does not matter. Architecture as the authors' ``Models/FeatureProjection.py`` (LeakyReLU
    0.1, no BN; RepDistiller adds BN to the translator); reconstruction loss L1 as the authors' code
    (``rec_loss="l2"``: the paper's squared error); ``pretrain_epochs`` = 30 (RepDistiller's
    ``init_epochs``; the segmentation training sets are small).

    Segmentation: the factor is taken at ``decoder``, the last map before the classifier (the
    paper and code use the last group's output before pooling), at full tap resolution.
    Not zero at initialisation (translator and paraphraser are different random networks); zero
    when the translator's factor is a positive multiple of the teacher's (scale invariance)."""

    needs_pretrain = True

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        rate, rec_loss = self.cfg.rate, self.cfg.rec_loss
        if not rate > 0:
            raise ConfigError("distill.hyper.ft.rate", f"must be positive, got {rate!r}")
        if rec_loss not in ("l1", "l2"):
            raise ConfigError("distill.hyper.ft.rec_loss", f"must be 'l1' or 'l2', got {rec_loss!r}")
        self.rec_loss = rec_loss
        self.pretrain_epochs = int(self.cfg.pretrain_epochs)
        self.paraphrasers = nn.ModuleDict()
        self.translators = nn.ModuleDict()
        for t in spec.taps:
            cs, ct = spec.channels(t)
            m = max(1, int(round(ct * rate)))
            self.paraphrasers[t] = Paraphraser(ct, m)
            self.translators[t] = translator(cs, m)

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """The paraphrasers (frozen afterwards by :meth:`Distiller.after_pretrain`)."""
        return list(self.paraphrasers.parameters())

    def pretrain_loss(self, teacher_feats: dict[str, torch.Tensor], teacher_logits: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        """Reconstruction of the teacher's map by each paraphraser (:func:`reconstruction_loss`),
        summed over taps."""
        losses = []
        for t in self.spec.taps:
            x = teacher_feats[t].detach()
            _, rec = self.paraphrasers[t](x)
            losses.append(reconstruction_loss(rec, x, self.rec_loss))
        return stack_sum(losses)

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        if any(p.requires_grad for p in self.paraphrasers.parameters()):
            self.paraphrasers.requires_grad_(False)  # what after_pretrain() does; in case it was not called
        losses = []
        for t, fs, ft in b.tap_pairs(self.spec.taps):
            with torch.no_grad():
                factor_t = self.paraphrasers[t].encoder(ft.detach())
            losses.append(factor_transfer_loss(self.translators[t](fs), factor_t, p=1))
        return {"ft": stack_sum(losses)}
