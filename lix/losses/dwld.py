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
silently change what the student is taught and the loss is no longer ≥ 0. Our default (``"generalized"``) uses the per-class
generalized KL (the Bregman divergence of x log x):

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
  meta-gradient G = ∂CE(θ')/∂w (:func:`lookahead_weight_gradient`, second order through the
  student) is scaled to unit RMS and the controller descends
  (1/K) Σ_{k≠y} [u_k G̃_k + τ·KL(Bern(u_k) ‖ Bern(ū))] (:func:`lookahead_objective`; minimiser
  logit(u_k) = b₀ − G̃_k/τ). Without the KL anchor a learned controller follows a persistent
  meta-gradient into a bound (tested). ``lookahead_every`` = k runs the virtual step every k
  training steps (about 3× a student step's cost on the CPU when k = 1).

For every signal the returned term's value is exactly DWLD (≥ 0 with the generalized terms): the
controller's objective enters as obj − stop_grad(obj) (value 0), so the trainer's single backward
gives the student ∂DWLD/∂θ with the weights held fixed and the controller its own gradient
(scaled by λ1 and the optimizer's learning rate, like any trainable part of a distiller).

Which signal is the default of the registered methods (``DWLD_DEFAULTS`` in lix_method.py) was
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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lix.losses.cka import full_precision
from lix.reduce import global_mean

from pipeline.constants import IGNORE_INDEX  # noqa: E402
MASK_VALUE = 1000.0  # eq. 11's "large negative value" (mdistiller's 1000)
NCLD_TERMS = ("generalized", "paper")
CONTROLLERS = ("dwc", "fixed", "confidence")
DWC_INPUTS = ("softmax", "softmax_conf", "teacher_softmax_conf")
DWC_TRAINING = ("adversarial", "joint", "lookahead")
BOUND_TOLERANCE = 0.01  # a weight within 1 % of the range from β_min or β_max counts as "at a bound"


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
               temperature: float = 4.0, ignore_index: int = IGNORE_INDEX, ncld_terms: str = "generalized"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-pixel pieces of DWLD, before weighting and without T².

    student_logits, teacher_logits: (N, C, H, W); target: (N, H, W) int64, ``ignore_index`` =
    unlabelled. Returns ``tcld`` (N, H, W) (binary KL, nats), ``g`` (N, C, H, W) the per-class
    NCLD terms (nats; 0 in the target channel), ``gt`` (N, C, H, W) bool one-hot of the target
    (all False at ignored pixels), ``valid`` (N, H, W) bool. Values at ignored pixels are finite
    and meaningless (computed as if the label were 0); callers mask them with ``valid``."""
    _check_logits(student_logits, teacher_logits, target)
    if ncld_terms not in NCLD_TERMS:
        raise ValueError(f"ncld_terms must be one of {NCLD_TERMS}, got {ncld_terms!r}")
    zs = _as_float(student_logits) / temperature
    zt = _as_float(teacher_logits) / temperature
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
              weights: torch.Tensor | float = 8.0, alpha: float = 1.0, temperature: float = 4.0,
              ignore_index: int = IGNORE_INDEX, ncld_terms: str = "generalized", world_size: int = 1
              ) -> torch.Tensor:
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


def bernoulli_kl(u_logit: torch.Tensor, prior_logit: float) -> torch.Tensor:
    """KL(Bern(u) ‖ Bern(ū)) elementwise from the logits x = logit(u) and b₀ = logit(ū):
    u (log σ(x) − log σ(b₀)) + (1 − u)(log σ(−x) − log σ(−b₀)) (nats, ≥ 0, 0 at u = ū)."""
    u = torch.sigmoid(u_logit)
    log_prior, log_prior_c = -math.log1p(math.exp(-prior_logit)), -math.log1p(math.exp(prior_logit))
    return u * (F.logsigmoid(u_logit) - log_prior) + (1.0 - u) * (F.logsigmoid(-u_logit) - log_prior_c)


@full_precision
def lookahead_objective(u_logit: torch.Tensor, meta_grad: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                        prior_logit: float, tau: float = 1.0, world_size: int = 1) -> torch.Tensor:
    """The lookahead controller's objective (to be *minimised*), averaged over valid pixels:
    (1/K) Σ_{k≠y} [u_k·G̃_k + τ·KL(Bern(u_k) ‖ Bern(ū))], G̃ the meta-gradient ∂CE(θ')/∂w scaled
    to unit RMS (detached). Its minimiser per logit is logit(u_k) = b₀ − G̃_k/τ: weight moves to
    the logits whose up-weighting lowers the student's cross-entropy after the virtual step,
    anchored at the prior β (without the anchor a learned controller follows a persistent
    meta-gradient into a bound: tested)."""
    nt = (~gt).to(u_logit.dtype)
    k = nt.sum(1)
    u = torch.sigmoid(u_logit)
    obj = ((u * meta_grad.detach() + tau * bernoulli_kl(u_logit, prior_logit)) * nt).sum(1) / k
    v = valid.to(obj.dtype)
    return global_mean((obj * v).sum(), v.sum(), world_size)


@full_precision
def dwc_objective(u_logit: torch.Tensor, g: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                  prior_logit: float, tau: float = 1.0, eps: float = 1e-6, world_size: int = 1) -> torch.Tensor:
    """The adversarial controller's objective J (to be *maximised*), averaged over valid pixels.

    u_logit (N, C, H, W): logit(u_k) of the normalised weights u = (w − β_min)/(β_max − β_min);
    g (N, C, H, W): per-class NCLD terms (detached here); gt (N, C, H, W) bool target one-hot;
    valid (N, H, W) bool; prior_logit b₀ = logit(ū); ``eps`` (nats) in r_k = g_k / (mean g + eps):
    a pixel whose divergence is negligible next to it (the student already matches the teacher
    there) asks for the prior weight β instead of a ratio of rounding errors. See the module
    docstring; the maximiser per pixel is logit(u_k) = b₀ + (r_k − r̄)/τ."""
    g = g.detach().clamp_min(0.0)
    nt = (~gt).to(g.dtype)                                    # non-target classes
    k = nt.sum(1, keepdim=True)                               # C - 1
    r = g / ((g * nt).sum(1, keepdim=True) / k + eps)
    r_bar = (r * nt).sum(1, keepdim=True) / k
    u = torch.sigmoid(u_logit)
    j = ((u * (r - r_bar) - tau * bernoulli_kl(u_logit, prior_logit)) * nt).sum(1) / k.squeeze(1)
    v = valid.to(j.dtype)
    return global_mean((j * v).sum(), v.sum(), world_size)


def confidence(student_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eq. 6: c = the softmax probability (T = 1) of the ground-truth class per pixel,
    (N, C, H, W), (N, H, W) -> (N, 1, H, W), detached; computed as if the label were 0 at ignored
    pixels (callers mask them)."""
    with torch.no_grad():
        lab = torch.where(target == ignore_index, torch.zeros_like(target), target)
        return F.softmax(_as_float(student_logits), dim=1).gather(1, lab.unsqueeze(1))


def weight_statistics(w: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, beta_min: float, beta_max: float
                      ) -> dict[str, torch.Tensor]:
    """Summary of per-logit weights w (N, C, H, W) over the non-target logits of the labelled
    pixels (gt (N, C, H, W) bool target one-hot, valid (N, H, W) bool): ``w_mean``;
    ``w_std_class`` the std across a pixel's non-target classes, averaged over pixels;
    ``w_std_pixel`` the std over pixels of a pixel's mean weight; ``w_at_bound`` the share of
    weights within 1 % of the range (β_max − β_min) of either bound. Detached scalars (NaN-free:
    0 when nothing is labelled)."""
    with torch.no_grad():
        w = _as_float(w.detach())
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


class DynamicWeightController(nn.Module):
    """The DWC: a per-pixel MLP of ``depth`` linear layers (1×1 convolutions; ReLU, then dropout
    when ``dropout`` > 0, between them) mapping its inputs (``inputs``: the student's softmax,
    + its confidence; or the teacher's softmax and confidence instead, Fig. 4b) to C
    pre-activations h; :meth:`to_weights` turns them into per-logit weights in (β_min, β_max)."""

    def __init__(self, n_classes: int, inputs: str = "softmax_conf", hidden: int = 32, beta: float = 8.0,
                 beta_min: float = 1.0, beta_max: float = 10.0, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        if inputs not in DWC_INPUTS:
            raise ValueError(f"dwc_inputs must be one of {DWC_INPUTS}, got {inputs!r}")
        if not beta_min < beta < beta_max:
            raise ValueError(f"beta (the DWC's prior weight) must lie strictly between beta_min and beta_max, "
                             f"got {beta} not in ({beta_min}, {beta_max})")
        if int(hidden) < 1:
            raise ValueError(f"dwc_hidden must be a positive integer, got {hidden!r}")
        if int(depth) < 1:
            raise ValueError(f"dwc_depth must be a positive integer (linear layers), got {depth!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dwc_dropout must be in [0, 1), got {dropout!r}")
        self.n_classes, self.inputs = n_classes, inputs
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        u_bar = (beta - beta_min) / (beta_max - beta_min)
        self.prior_logit = math.log(u_bar / (1.0 - u_bar))
        cin = n_classes + (inputs != "softmax")
        widths = [cin] + [int(hidden)] * (int(depth) - 1) + [n_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(a, b, 1))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
                if dropout > 0:
                    layers.append(nn.Dropout(float(dropout)))
        self.mlp = nn.Sequential(*layers)

    def features(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """The controller's input (N, cin, H, W), detached from both networks: softmax (T = 1) of
        the student's logits (of the teacher's for ``teacher_softmax_conf``), + the confidence of
        eq. 6 from the same network unless ``inputs="softmax"``."""
        with torch.no_grad():
            logits = teacher_logits if self.inputs == "teacher_softmax_conf" else student_logits
            p = F.softmax(_as_float(logits), dim=1)
            if self.inputs == "softmax":
                return p
            return torch.cat([p, confidence(logits, target, ignore_index)], dim=1)

    def weight_logits(self, x: torch.Tensor) -> torch.Tensor:
        """logit(u) = h + b₀ (N, C, H, W) for controller input x."""
        return self.mlp_pixels(x) + self.prior_logit

    def mlp_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)`` computed as matrix products over the pixels: (N, cin, H, W) ->
        (N, C, H, W). The same function and parameters as the 1×1 convolutions (kept as the
        modules, so the state dict is unchanged), but the convolution kernels are slow for so
        few channels: MFNet batch 8 at 320×96 on 2 CPU cores, DWLD forward + backward 1033 ms
        with the convolutions, of which 580 ms in them."""
        n, c, h, w = x.shape
        z = x.permute(0, 2, 3, 1).reshape(-1, c)
        for layer in self.mlp:
            if isinstance(layer, nn.Conv2d):
                z = F.linear(z, layer.weight.flatten(1), layer.bias)
            else:
                z = layer(z)
        return z.view(n, h, w, -1).permute(0, 3, 1, 2)

    def to_weights(self, u_logit: torch.Tensor) -> torch.Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * torch.sigmoid(u_logit)


class DWLDHead(nn.Module):
    """DWLD with its weights: ``forward(student_logits, teacher_logits, target)`` -> the scalar
    term (its value is exactly DWLD; see the module docstring for the controllers' gradients).
    After each forward ``last_stats`` holds :func:`weight_statistics` of the weights used
    (empty for ``fixed``)."""

    def __init__(self, n_classes: int, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 beta_min: float = 1.0, beta_max: float = 10.0, controller: str = "dwc",
                 dwc_inputs: str = "softmax_conf", dwc_hidden: int = 32, dwc_depth: int = 3,
                 dwc_dropout: float = 0.0, dwc_tau: float = 1.0, dwc_training: str = "adversarial",
                 lookahead_lr: float = 0.01, lookahead_every: int = 1, ncld_terms: str = "generalized"):
        super().__init__()
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
        if dwc_training not in DWC_TRAINING:
            raise ValueError(f"dwc_training must be one of {DWC_TRAINING}, got {dwc_training!r}")
        if ncld_terms not in NCLD_TERMS:
            raise ValueError(f"ncld_terms must be one of {NCLD_TERMS}, got {ncld_terms!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not dwc_tau > 0:
            raise ValueError(f"dwc_tau must be > 0, got {dwc_tau!r}")
        if not lookahead_lr > 0:
            raise ValueError(f"lookahead_lr must be > 0, got {lookahead_lr!r}")
        if int(lookahead_every) < 1:
            raise ValueError(f"lookahead_every must be a positive integer (steps), got {lookahead_every!r}")
        if not beta_min < beta_max:
            raise ValueError(f"beta_min must be < beta_max, got {beta_min} and {beta_max}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.controller_kind, self.dwc_training, self.ncld_terms = controller, dwc_training, ncld_terms
        self.tau, self.lookahead_lr, self.lookahead_every = float(dwc_tau), float(lookahead_lr), int(lookahead_every)
        self.controller = (DynamicWeightController(n_classes, dwc_inputs, dwc_hidden, beta, beta_min, beta_max,
                                                   dwc_depth, dwc_dropout)
                           if controller == "dwc" else None)
        self.steps = 0  # training forwards seen (lookahead_every); not saved: a resume restarts the phase
        self.last_stats: dict[str, torch.Tensor] = {}

    @full_precision
    def _weight_logits(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        x = self.controller.features(student_logits, teacher_logits, target, ignore_index)
        return self.controller.weight_logits(x)

    def _confidence_weights(self, student_logits: torch.Tensor, target: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        c = confidence(student_logits, target, ignore_index)
        return (self.beta_min + (self.beta_max - self.beta_min) * (1.0 - c)).expand_as(_as_float(student_logits))

    def weights(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """The per-logit weights (N, C, H, W) the loss uses now (constant β for ``fixed``)."""
        if self.controller_kind == "fixed":
            return torch.full_like(_as_float(student_logits), self.beta).detach()
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
            grad_w = self._lookahead_gradient(student_logits, target, ignore_index, w, tcld, g, gt, valid,
                                              student_forward, loss_weight)
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

    def _lookahead_gradient(self, student_logits, target, ignore_index, w, tcld, g, gt, valid, student_forward,
                            loss_weight) -> torch.Tensor:
        """:func:`lookahead_weight_gradient` scaled to unit RMS over the labelled non-target
        logits (so the controller's step size is set by its optimizer, not by η or λ1), detached."""
        grad_w = lookahead_weight_gradient(student_logits, target, w, tcld, g, valid, student_forward,
                                           self.lookahead_lr, self.alpha, self.temperature, loss_weight, ignore_index)
        nt = ((~gt) & valid.unsqueeze(1)).to(grad_w.dtype)
        grad_w = grad_w * nt
        rms = (grad_w.square().sum() / nt.sum().clamp_min(1.0)).sqrt()
        return (grad_w / (rms + 1e-30)).detach()


def lookahead_weight_gradient(student_logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
                              tcld: torch.Tensor, g: torch.Tensor, valid: torch.Tensor, student_forward,
                              lr: float, alpha: float, temperature: float, loss_weight: float = 1.0,
                              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """∂CE(θ')/∂w: how the student's cross-entropy on this batch after one virtual SGD step
    θ' = θ − lr·∇θ[CE(θ) + loss_weight·DWLD(θ; w)] changes with the per-logit weights w
    (N, C, H, W) (the bi-level re-weighting of Ren et al., ICML 2018). ``student_logits`` must
    come from the student's parameters ``student_forward.params`` (name -> tensor) and
    ``student_forward(params)`` recompute them; ``tcld``, ``g``, ``valid`` from :func:`dwld_terms`
    on those logits. CE and DWLD are means over the labelled pixels. Returns (N, C, H, W),
    detached; the student's own graph is kept (``create_graph``)."""
    names = list(student_forward.params)
    params = [student_forward.params[n] for n in names]
    w_leaf = w.detach().requires_grad_(True)
    v = valid.to(tcld.dtype)
    n_valid = v.sum().clamp_min(1.0)
    lab = torch.where(valid, target, torch.full_like(target, ignore_index))
    ce = F.cross_entropy(_as_float(student_logits), lab, ignore_index=ignore_index, reduction="sum") / n_valid
    dwld = ((temperature ** 2 * (alpha * tcld + (w_leaf * g).sum(1))) * v).sum() / n_valid
    grads = torch.autograd.grad(ce + loss_weight * dwld, params, create_graph=True, allow_unused=True)
    virtual = {n: (p - lr * gr if gr is not None else p) for n, p, gr in zip(names, params, grads)}
    meta = F.cross_entropy(_as_float(student_forward(virtual)), lab, ignore_index=ignore_index,
                           reduction="sum") / n_valid
    (grad_w,) = torch.autograd.grad(meta, w_leaf, allow_unused=True)
    return torch.zeros_like(w_leaf) if grad_w is None else grad_w.detach()
