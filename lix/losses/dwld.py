"""DWLD: dynamically-weighted logit distillation (LIX, Sect. III-B).

Reference: S. Guo, Z. Long, Z. Wu, Q. Chen, I. Pitas, R. Fan, "LIX: Implicitly Infusing Spatial
Geometric Prior Knowledge into Visual Semantic Segmentation for Autonomous Driving",
arXiv:2403.08215 (2024; IEEE TIP 2025). Built on DKD (B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang,
"Decoupled Knowledge Distillation", CVPR 2022, arXiv:2203.08679; official code
megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``). The controller's training signal
follows the adversarial idea of CTKD (Z. Li et al., "Curriculum Temperature for Knowledge
Distillation", AAAI 2023, arXiv:2211.16231; official code zhengli97/CTKD, ``helper/loops.py``).
The LIX authors' code was not available to us; the formulas below are our reading of the paper.

Per pixel (segmentation: every labelled pixel is one DKD sample)
----------------------------------------------------------------
z_s, z_t: the student's and teacher's C logits, y the ground-truth class, T the temperature.
p = softmax(z_t / T), q = softmax(z_s / T).

* TCLD (target-class logit distillation) = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y]) (binary KL).
* NCLD (non-target-class logit distillation, eq. 9): the non-target distributions
  p̂ = softmax(z_t / T − M·1_y), q̂ = softmax(z_s / T − M·1_y) with M = 1000 (eq. 11: the target
  masked with a large negative value, as mdistiller does), and one weight w_k per logit:
  NCLD = Σ_{k≠y} w_k · g_k.
* DWLD = T² · (α · TCLD + NCLD), averaged over the valid (label != 255) pixels.

With every w_k = β this is DKD per pixel (``controller="fixed"``; the Fig. 4a sweep over β).

Per-class terms g_k (``ncld_terms``)
------------------------------------
The paper writes g_k = p̂_k log(p̂_k / q̂_k) (``"paper"``). Individually these terms are *not*
non-negative (negative wherever q̂_k > p̂_k); only their sum is. With unequal weights,
Σ w_k p̂_k log(p̂_k / q̂_k) is minimised over the student not at q̂ = p̂ but at q̂_k ∝ w_k p̂_k
(Lagrange), where its value is < 0 unless the weights are equal (Jensen): the weights would
silently change what the student is taught and the loss is no longer ≥ 0. Our default
(``"generalized"``) uses the per-class generalized KL (the Bregman divergence of x log x):

    g_k = p̂_k log(p̂_k / q̂_k) − p̂_k + q̂_k ≥ 0,  with equality iff q̂_k = p̂_k.

Because Σ_{k≠y} p̂_k = Σ_{k≠y} q̂_k = 1 the extra terms sum to zero, so with equal weights this is
*exactly* DKD's NCKD (and DWLD with fixed β equals DKD); with any positive weights the weighted sum
is ≥ 0 and minimised only at q̂ = p̂. The weights then re-balance the per-class gradients (which is
the paper's motivation: one β cannot suit every logit) without moving the optimum.

The dynamic weight controller (DWC)
-----------------------------------
A per-pixel MLP of ``dwc_depth`` linear layers (default 3, the paper's "three MLP layers without
dropout"; ``dwc_dropout`` adds dropout after each hidden ReLU, for Fig. 4b), written as 1×1
convolutions so it runs on (N, C, H, W). Inputs (``dwc_inputs``, all detached from the
networks): ``"softmax"`` the student's softmax (T = 1); ``"softmax_conf"`` (default, eq. 8)
that plus the confidence of eq. 6, c = the student's probability of the ground-truth class;
``"teacher_softmax_conf"`` the teacher's softmax and confidence *instead of* the student's (the
other input of Fig. 4b). Output: one weight per logit, w_k = β_min + (β_max − β_min)·σ(h_k + b₀)
∈ (β_min, β_max) = (1, 10) (the paper's fixed range), where the offset b₀ = logit((β − β_min) /
(β_max − β_min)) makes h = 0 mean w = β (``beta``, default 8 as DKD), so an untrained controller
starts as DKD with β. The target logit's weight is computed but unused. Our choices (not in the
text): hidden width 32 (``dwc_hidden``), the softmax at T = 1, detached inputs (the student must
not steer its own weights), the sigmoid map onto the range.

``controller="fixed"``: every weight β (DKD per pixel; Fig. 4a). ``controller="confidence"``: the
parameter-free control w_k = β_min + (β_max − β_min)·(1 − c) for every non-target logit of a pixel
(the paper's motivation as a formula: more NCLD weight where the student is less confident).

The training signal of the DWC (``dwc_training``; the paper says only "by minimizing (18)")
-----------------------------------------------------------------------------------------------
* ``"joint"`` — the literal reading: the controller minimises (18) with the student. Its
  gradient is ∂L/∂w_k = g_k ≥ 0, so descent drives every weight to β_min (with the paper's
  signed terms, ``ncld_terms="paper"``, it instead makes the weighted divergence negative).
  Kept to show the failure (tests/test_losses_lix.py) and for the measurement below.
* ``"adversarial"`` — ours (not the paper's): the controller is the student's adversary, as
  CTKD learns its temperature by gradient reversal. It maximises, per valid pixel,

      J = (1/K) Σ_{k≠y} [ u_k (r_k − r̄) − τ · KL(Bern(u_k) ‖ Bern(ū)) ],
      u_k = (w_k − β_min)/(β_max − β_min),  ū = (β − β_min)/(β_max − β_min),
      r_k = g_k / (mean_{j≠y} g_j + ε) (the class's share of the divergence, g detached,
      generalized terms; ε = 1e-6 nats), r̄ = mean_{k≠y} r_k (≈ 1), K = C − 1,

  concave in u with the maximiser logit(u_k*) = b₀ + (r_k − r̄)/τ: weight moves to the classes
  the student gets most wrong relative to the teacher, anchored at β by the KL term (pure
  reversal would pin every weight to β_max), strictly inside the range. τ = ``dwc_tau``.
* ``"lookahead"`` — the bi-level learning-to-reweight scheme (Ren et al., ICML 2018; as in
  meta-distillation): the student minimises (18) for the weights it is given; the controller
  lowers the student's cross-entropy *after* a one-step virtual SGD update of the student under
  the weighted loss, θ' = θ − η∇θ[CE + λ1·DWLD(w)] (``lookahead_lr`` η; the same batch). The
  meta-gradient G = ∂CE(θ')/∂w (:func:`lookahead_weight_gradient`: one forward and backward of
  the student at θ' and one forward-mode pass at θ; the reference differentiates the student
  twice) is scaled to unit RMS and the controller descends
  (1/K) Σ_{k≠y} [u_k G̃_k + τ·KL(Bern(u_k) ‖ Bern(ū))] (:func:`lookahead_objective`; minimiser
  logit(u_k) = b₀ − G̃_k/τ). Without the KL anchor a learned controller follows a persistent
  meta-gradient into a bound (tested). ``lookahead_every`` = k runs the virtual step every k
  training steps (the virtual step costs about 2.5× a student step on the CPU, MFNet batch 8 at
  96x160, 1 thread: 2 backward passes, 2 forward passes, one of them carrying tangents).

For every signal the returned term's value is exactly DWLD (≥ 0 with the generalized terms): the
controller's objective enters as obj − stop_grad(obj) (value 0), so the trainer's single backward
gives the student ∂DWLD/∂θ with the weights held fixed and the controller its own gradient
(scaled by λ1 and the optimizer's learning rate, like any trainable part of a distiller).

Which signal is the default of the registered methods (:class:`DWLDConfig`) was
decided by measurement with a rule fixed beforehand (benchmarks/dwc_signal.py ``--select``: the
best val mIoU averaged over vKITTI2 and nuImages among the non-degenerate signals). MFNet, DWLD
alone, 3 epochs (teachers 6), 3 seeds, mIoU % vKITTI2 / nuImages:
lookahead 23.14 / 20.37 (mean 21.75), joint 22.93 / 19.78, confidence 22.35 / 20.10,
adversarial 20.16 / 19.90, joint with the paper's terms 16.34 / 17.21 (degenerate: 99 % of its
weights at a bound on nuImages); DKD with fixed β 21.7–25.6 / 19.9–21.7. Hence
``dwc_training="lookahead"``; every difference is within about one seed's std at this length, and
the lookahead's weights stayed close to β (spread across classes ~0.1). The README has the full
table. (This head's own keyword defaults stay ``adversarial``, which needs no student forward.)

DDP: every mean over pixels is over the labelled pixels of the global batch
(lix/reduce.py), like the cross-entropy.

Implementation (issue 21): :func:`dwld_terms` runs lix/losses/decoupled.py (the target removed
from the non-target softmax by −∞ rather than eq. 11's −1000, the same numbers in float32 and
float64; a hand-written backward), the meta-gradient runs in forward mode and the controller's
objectives carry hand-derived gradients; each keeps its reference (``*_reference``, selected for
everything by ``LIX_REFERENCE_LOSSES=1``), tested equal in tests/test_distill_step_fast.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lix.losses._common import as_float, check_choice, full_precision, use_reference
from lix.losses.decoupled import decoupled_kl
from lix.losses.dwc import (
    DynamicWeightController,
    confidence,
    dwc_objective,
    lookahead_objective,
    lookahead_weight_gradient,
)
from lix.reduce import global_mean
from pipeline.constants import IGNORE_INDEX

MASK_VALUE = 1000.0  # eq. 11's "large negative value" (mdistiller's 1000)
NCLD_TERMS = ("generalized", "paper")
CONTROLLERS = ("dwc", "fixed", "confidence")
DWC_TRAINING = ("adversarial", "joint", "lookahead")
BOUND_TOLERANCE = 0.01  # a weight within 1 % of the range from β_min or β_max counts as "at a bound"


@dataclass(frozen=True)
class DWLDConfig:
    """DWLD's hyper-parameters, each default declared here once (the ``dwld`` and ``lix`` methods
    read them; see the module docstring for each). Checks the values the head needs whatever
    the controller; the DWC's own (``dwc_inputs``, the range of ``beta``, ``dwc_hidden``,
    ``dwc_depth``, ``dwc_dropout``) are checked when it is built."""

    alpha: float = 1.0  # TCLD weight α (DKD's, eq. 4's)
    beta: float = 8.0  # the fixed β, and the DWC's prior weight (DKD's)
    temperature: float = 4.0  # T (DKD's); the loss carries T²
    beta_min: float = 1.0  # the weights' range (the paper's)
    beta_max: float = 10.0
    controller: str = "dwc"  # CONTROLLERS
    dwc_inputs: str = "softmax_conf"  # DWC_INPUTS (eq. 8)
    dwc_hidden: int = 32  # the MLP's hidden width (ours)
    dwc_depth: int = 3  # its linear layers (the paper's)
    dwc_dropout: float = 0.0  # the paper's "without dropout"
    dwc_tau: float = 1.0  # the KL anchor's strength τ
    dwc_training: str = "lookahead"  # DWC_TRAINING, chosen by measurement (module docstring)
    lookahead_lr: float = 0.01  # η of the virtual step (MFNet's lr)
    lookahead_every: int = 1  # the virtual step every k training steps
    ncld_terms: str = "generalized"  # NCLD_TERMS

    def __post_init__(self):
        check_choice("controller", self.controller, CONTROLLERS)
        check_choice("dwc_training", self.dwc_training, DWC_TRAINING)
        check_choice("ncld_terms", self.ncld_terms, NCLD_TERMS)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not self.dwc_tau > 0:
            raise ValueError(f"dwc_tau must be > 0, got {self.dwc_tau!r}")
        if not self.lookahead_lr > 0:
            raise ValueError(f"lookahead_lr must be > 0, got {self.lookahead_lr!r}")
        if int(self.lookahead_every) < 1:
            raise ValueError(f"lookahead_every must be a positive integer (steps), got {self.lookahead_every!r}")
        if not self.beta_min < self.beta_max:
            raise ValueError(f"beta_min must be < beta_max, got {self.beta_min} and {self.beta_max}")


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> None:
    if student_logits.dim() != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logits must be (N, C, H, W) of equal shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    n, c, h, w = student_logits.shape
    if target.shape != (n, h, w):
        raise ValueError(f"target must be (N, H, W) = {(n, h, w)}, got {tuple(target.shape)}")
    if c < 2:
        raise ValueError("DWLD needs at least 2 classes")


@full_precision
def dwld_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
               temperature: float = DWLDConfig.temperature, ignore_index: int = IGNORE_INDEX,
               ncld_terms: str = DWLDConfig.ncld_terms
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-pixel pieces of DWLD (``tcld``, ``g``, ``gt``, ``valid``), as
    :func:`dwld_terms_reference` defines them, computed by :func:`lix.losses.decoupled.decoupled_kl`
    (a hand-written backward; equal to the reference to float32 rounding). The reference runs
    instead under ``LIX_REFERENCE_LOSSES=1`` or when the teacher's logits require a gradient."""
    if use_reference() or teacher_logits.requires_grad:
        return dwld_terms_reference(student_logits, teacher_logits, target, temperature, ignore_index, ncld_terms)
    _check_logits(student_logits, teacher_logits, target)
    check_choice("ncld_terms", ncld_terms, NCLD_TERMS)
    valid = target != ignore_index
    lab = torch.where(valid, target, torch.zeros_like(target))
    tcld, g = decoupled_kl(as_float(student_logits), as_float(teacher_logits), lab, temperature,
                           ncld_terms == "generalized")
    classes = torch.arange(g.shape[1], device=g.device).view(1, -1, 1, 1)
    gt = (lab.unsqueeze(1) == classes) & valid.unsqueeze(1)
    return tcld, g, gt, valid


@full_precision
def dwld_terms_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                         temperature: float = DWLDConfig.temperature, ignore_index: int = IGNORE_INDEX,
                         ncld_terms: str = DWLDConfig.ncld_terms
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-pixel pieces of DWLD, before weighting and without T².

    student_logits, teacher_logits: (N, C, H, W); target: (N, H, W) int64, ``ignore_index`` =
    unlabelled. Returns ``tcld`` (N, H, W) (binary KL, nats), ``g`` (N, C, H, W) the per-class
    NCLD terms (nats; 0 in the target channel), ``gt`` (N, C, H, W) bool one-hot of the target
    (all False at ignored pixels), ``valid`` (N, H, W) bool. Values at ignored pixels are finite
    and meaningless (computed as if the label were 0); callers mask them with ``valid``."""
    _check_logits(student_logits, teacher_logits, target)
    check_choice("ncld_terms", ncld_terms, NCLD_TERMS)
    zs = as_float(student_logits) / temperature
    zt = as_float(teacher_logits) / temperature
    valid = target != ignore_index
    lab = torch.where(valid, target, torch.zeros_like(target))
    gt = F.one_hot(lab, zs.shape[1]).permute(0, 3, 1, 2).bool() & valid.unsqueeze(1)
    gt_f = F.one_hot(lab, zs.shape[1]).permute(0, 3, 1, 2).to(zs.dtype)

    # target class: binary distributions [p_y, 1 - p_y], logs computed stably from logsumexps
    lse_s, lse_t = zs.logsumexp(1), zt.logsumexp(1)
    nt_lse_s = (zs - MASK_VALUE * gt_f).logsumexp(1)
    nt_lse_t = (zt - MASK_VALUE * gt_f).logsumexp(1)
    log_qy = (zs * gt_f).sum(1) - lse_s
    log_py = (zt * gt_f).sum(1) - lse_t
    log_q_rest, log_p_rest = nt_lse_s - lse_s, nt_lse_t - lse_t
    tcld = log_py.exp() * (log_py - log_qy) + log_p_rest.exp() * (log_p_rest - log_q_rest)

    # non-target classes: softmax with the target masked by -M (eq. 11)
    log_qh = F.log_softmax(zs - MASK_VALUE * gt_f, dim=1)
    log_ph = F.log_softmax(zt - MASK_VALUE * gt_f, dim=1)
    ph = log_ph.exp()
    g = ph * (log_ph - log_qh)
    if ncld_terms == "generalized":
        g = g - ph + log_qh.exp()
    g = g * (1.0 - gt_f)
    return tcld, g, gt, valid


def dwld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              weights: torch.Tensor | float = DWLDConfig.beta, alpha: float = DWLDConfig.alpha,
              temperature: float = DWLDConfig.temperature, ignore_index: int = IGNORE_INDEX,
              ncld_terms: str = DWLDConfig.ncld_terms, world_size: int = 1) -> torch.Tensor:
    """DWLD = mean over valid pixels of T² (α·TCLD + Σ_{k≠y} w_k g_k); a scalar (nats·T²).

    student_logits, teacher_logits (N, C, H, W), target (N, H, W) with ``ignore_index``;
    ``weights``: a float (every logit weighted β: per-pixel DKD) or (N, C, H, W) per-logit
    weights (the target channel is ignored). 0 if no pixel is labelled. ``world_size`` > 1: the
    mean over the labelled pixels of the global batch (lix/reduce.py)."""
    tcld, g, _gt, valid = dwld_terms(student_logits, teacher_logits, target, temperature, ignore_index, ncld_terms)
    if isinstance(weights, torch.Tensor):
        if weights.shape != g.shape:
            raise ValueError(f"weights must be (N, C, H, W) = {tuple(g.shape)}, got {tuple(weights.shape)}")
        ncld = (weights.to(g.dtype) * g).sum(1)
    else:
        ncld = float(weights) * g.sum(1)
    per_pixel = temperature ** 2 * (alpha * tcld + ncld)
    v = valid.to(per_pixel.dtype)
    return global_mean((per_pixel * v).sum(), v.sum(), world_size)


def weight_statistics(w: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, beta_min: float, beta_max: float
                      ) -> dict[str, torch.Tensor]:
    """Summary of per-logit weights w (N, C, H, W) over the non-target logits of the labelled
    pixels (gt (N, C, H, W) bool target one-hot, valid (N, H, W) bool): ``w_mean``;
    ``w_std_class`` the std across a pixel's non-target classes, averaged over pixels;
    ``w_std_pixel`` the std over pixels of a pixel's mean weight; ``w_at_bound`` the share of
    weights within 1 % of the range (β_max − β_min) of either bound. Detached scalars (NaN-free:
    0 when nothing is labelled)."""
    with torch.no_grad():
        w = as_float(w.detach())
        nt = ((~gt) & valid.unsqueeze(1)).to(w.dtype)
        v = valid.to(w.dtype)
        n_pix = v.sum().clamp_min(1.0)
        k = nt.sum(1).clamp_min(1.0)                                  # (N, H, W)
        pix_mean = (w * nt).sum(1) / k
        pix_var = ((w - pix_mean.unsqueeze(1)).square() * nt).sum(1) / k
        mean = (pix_mean * v).sum() / n_pix
        std_pixel = (((pix_mean - mean).square() * v).sum() / n_pix).sqrt()
        tol = BOUND_TOLERANCE * (beta_max - beta_min)
        at_bound = ((w <= beta_min + tol) | (w >= beta_max - tol)).to(w.dtype)
        return {"w_mean": mean, "w_std_class": (pix_var.sqrt() * v).sum() / n_pix, "w_std_pixel": std_pixel,
                "w_at_bound": (at_bound * nt).sum() / nt.sum().clamp_min(1.0)}


class DWLDHead(nn.Module):
    """DWLD with its weights: ``forward(student_logits, teacher_logits, target)`` -> the scalar
    term (its value is exactly DWLD; see the module docstring for the controllers' gradients).
    After each forward ``last_stats`` holds :func:`weight_statistics` of the weights used
    (empty for ``fixed``)."""

    def __init__(self, n_classes: int, *, alpha: float = DWLDConfig.alpha, beta: float = DWLDConfig.beta,
                 temperature: float = DWLDConfig.temperature, beta_min: float = DWLDConfig.beta_min,
                 beta_max: float = DWLDConfig.beta_max, controller: str = DWLDConfig.controller,
                 dwc_inputs: str = DWLDConfig.dwc_inputs, dwc_hidden: int = DWLDConfig.dwc_hidden,
                 dwc_depth: int = DWLDConfig.dwc_depth, dwc_dropout: float = DWLDConfig.dwc_dropout,
                 dwc_tau: float = DWLDConfig.dwc_tau,
                 dwc_training: str = "adversarial",  # the head's own default: needs no student forward
                 lookahead_lr: float = DWLDConfig.lookahead_lr, lookahead_every: int = DWLDConfig.lookahead_every,
                 ncld_terms: str = DWLDConfig.ncld_terms):
        super().__init__()
        cfg = DWLDConfig(alpha, beta, temperature, beta_min, beta_max, controller, dwc_inputs, dwc_hidden, dwc_depth,
                         dwc_dropout, dwc_tau, dwc_training, lookahead_lr, lookahead_every, ncld_terms)  # checks
        self.alpha, self.beta, self.temperature = float(cfg.alpha), float(cfg.beta), float(cfg.temperature)
        self.beta_min, self.beta_max = float(cfg.beta_min), float(cfg.beta_max)
        self.controller_kind, self.dwc_training, self.ncld_terms = cfg.controller, cfg.dwc_training, cfg.ncld_terms
        self.tau, self.lookahead_lr, self.lookahead_every = float(cfg.dwc_tau), float(cfg.lookahead_lr), \
            int(cfg.lookahead_every)
        self.controller = (DynamicWeightController(n_classes, cfg.dwc_inputs, cfg.dwc_hidden, cfg.beta, cfg.beta_min,
                                                   cfg.beta_max, cfg.dwc_depth, cfg.dwc_dropout)
                           if cfg.controller == "dwc" else None)
        self.steps = 0  # training forwards seen (lookahead_every); not saved: a resume restarts the phase
        self.last_stats: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, n_classes: int, cfg: DWLDConfig) -> "DWLDHead":
        """The head of a method's resolved config (the registered ``dwld`` / ``lix``)."""
        return cls(n_classes, **dataclasses.asdict(cfg))

    @full_precision
    def _weight_logits(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        x = self.controller.features(student_logits, teacher_logits, target, ignore_index)
        return self.controller.weight_logits(x)

    def _confidence_weights(self, student_logits: torch.Tensor, target: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        c = confidence(student_logits, target, ignore_index)
        return (self.beta_min + (self.beta_max - self.beta_min) * (1.0 - c)).expand_as(as_float(student_logits))

    def weights(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """The per-logit weights (N, C, H, W) the loss uses now (constant β for ``fixed``)."""
        if self.controller_kind == "fixed":
            return torch.full_like(as_float(student_logits), self.beta).detach()
        if self.controller_kind == "confidence":
            return self._confidence_weights(student_logits, target, ignore_index)
        return self.controller.to_weights(self._weight_logits(student_logits, teacher_logits, target, ignore_index))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int = IGNORE_INDEX, world_size: int = 1, student_forward=None,
                loss_weight: float = 1.0) -> torch.Tensor:
        """``world_size``: means over the global batch (lix/reduce.py). ``student_forward``
        (``dwc_training="lookahead"`` only): params -> the student's logits for this batch with
        those parameters, with ``.params`` the student's trainable parameters by name (set by the
        distillation trainer); ``loss_weight``: λ1, the term's weight in the student's loss."""
        tcld, g, gt, valid = dwld_terms(student_logits, teacher_logits, target, self.temperature, ignore_index,
                                        self.ncld_terms)
        t2 = self.temperature ** 2
        v = valid.to(tcld.dtype)

        def mean_valid(per_pixel: torch.Tensor) -> torch.Tensor:
            return global_mean((per_pixel * v).sum(), v.sum(), world_size)

        if self.controller_kind == "fixed":
            self.last_stats = {}
            return mean_valid(t2 * (self.alpha * tcld + self.beta * g.sum(1)))
        if self.controller_kind == "confidence":
            w = self._confidence_weights(student_logits, target, ignore_index)
            self.last_stats = weight_statistics(w, gt, valid, self.beta_min, self.beta_max)
            return mean_valid(t2 * (self.alpha * tcld + (w * g).sum(1)))
        u_logit = self._weight_logits(student_logits, teacher_logits, target, ignore_index)
        w = self.controller.to_weights(u_logit)
        self.last_stats = weight_statistics(w, gt, valid, self.beta_min, self.beta_max)
        if self.dwc_training == "joint":  # the literal reading: the controller minimises (18) too
            return mean_valid(t2 * (self.alpha * tcld + (w * g).sum(1)))
        loss = mean_valid(t2 * (self.alpha * tcld + (w.detach() * g).sum(1)))
        if self.dwc_training == "lookahead":
            train_step = self.training and torch.is_grad_enabled()
            if train_step:
                self.steps += 1
            if train_step and student_forward is None:
                raise ValueError("dwc_training 'lookahead' needs the student's forward (DistillBatch.student_forward, "
                                 "set by the distillation trainer) to take its virtual step")
            if not train_step:
                return loss
            if (self.steps - 1) % self.lookahead_every:
                # no virtual step this time: the controller's gradient is 0, but present, so that
                # DDP (which expects a gradient for every parameter each step) does not stall
                return loss + 0.0 * u_logit.sum()
            grad_w = self._lookahead_gradient(student_logits, teacher_logits, target, ignore_index, w, tcld, g, gt,
                                              valid, student_forward, loss_weight)
            obj = lookahead_objective(u_logit, grad_w, gt, valid, self.controller.prior_logit, self.tau,
                                      world_size)
            return loss + (obj - obj.detach())  # value: DWLD; the controller descends obj
        if self.ncld_terms == "generalized":
            g_adv = g
        else:  # the adversary's signal is the per-class divergence, i.e. the generalized terms
            _tc, g_adv, _gt, _v = dwld_terms(student_logits.detach(), teacher_logits, target, self.temperature,
                                             ignore_index, "generalized")
        j = dwc_objective(u_logit, g_adv, gt, valid, self.controller.prior_logit, self.tau, world_size=world_size)
        return loss + (j.detach() - j)  # value: DWLD; gradient to the controller: -dJ/dphi

    def _lookahead_gradient(self, student_logits, teacher_logits, target, ignore_index, w, tcld, g, gt, valid,
                            student_forward, loss_weight) -> torch.Tensor:
        """:func:`lookahead_weight_gradient` scaled to unit RMS over the labelled non-target
        logits (so the controller's step size is set by its optimizer, not by η or λ1), detached."""
        grad_w = lookahead_weight_gradient(student_logits, target, w, tcld, g, valid, student_forward,
                                           self.lookahead_lr, self.alpha, self.temperature, loss_weight, ignore_index,
                                           teacher_logits, self.ncld_terms)
        nt = ((~gt) & valid.unsqueeze(1)).to(grad_w.dtype)
        grad_w = grad_w * nt
        rms = (grad_w.square().sum() / nt.sum().clamp_min(1.0)).sqrt()
        return (grad_w / (rms + 1e-30)).detach()
