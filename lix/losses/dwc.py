"""The dynamic weight controller of DWLD and its training signals (LIX, Sect. III-B; the formulas
and every choice are in lix/losses/dwld.py's docstring): the controller MLP, the confidence of
eq. 6, the adversarial objective, the lookahead (bi-level) objective and its meta-gradient.

Shapes: logits and weights (N, C, H, W), targets (N, H, W) int64 with the ignore label, ``gt``
(N, C, H, W) bool target one-hot, ``valid`` (N, H, W) bool; objectives are scalars averaged
over the labelled pixels of the (global) batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from lix.losses._common import as_float, check_choice, full_precision, use_reference
from lix.losses.decoupled import ncld_tangent
from lix.reduce import global_mean
from pipeline.constants import IGNORE_INDEX

DWC_INPUTS = ("softmax", "softmax_conf", "teacher_softmax_conf")


def bernoulli_kl(u_logit: torch.Tensor, prior_logit: float) -> torch.Tensor:
    """KL(Bern(u) ‖ Bern(ū)) elementwise from the logits x = logit(u) and b₀ = logit(ū):
    u (log σ(x) − log σ(b₀)) + (1 − u)(log σ(−x) − log σ(−b₀)) (nats, ≥ 0, 0 at u = ū)."""
    u = torch.sigmoid(u_logit)
    log_prior, log_prior_c = -math.log1p(math.exp(-prior_logit)), -math.log1p(math.exp(prior_logit))
    return u * (F.logsigmoid(u_logit) - log_prior) + (1.0 - u) * (F.logsigmoid(-u_logit) - log_prior_c)


def _carrying_gradient(value: torch.Tensor, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """The detached scalar ``value`` with the gradient ``coef`` (x's shape) w.r.t. x:
    value + S − stop_grad(S), S = Σ x·coef (S − S is an exact 0)."""
    surrogate = (x * coef).sum()
    return value + (surrogate - surrogate.detach())


def _pixel_weights(valid: torch.Tensor, k: torch.Tensor, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v · W / n (N, H, W), v / K · W / n (N, 1, H, W)) for the labelled pixels v, K (N, H, W)
    non-target logits per pixel: the weight of a pixel, and of each of its logits, in a mean over
    the labelled pixels of the global batch (W / n as :func:`lix.reduce.global_mean` divides)."""
    v = valid.to(k.dtype)
    scale = global_mean(torch.ones((), dtype=k.dtype, device=k.device), v.sum(), world_size)  # W / n
    pixel = v * scale
    return pixel, (pixel / k).unsqueeze(1)


@full_precision
def lookahead_objective(u_logit: torch.Tensor, meta_grad: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                        prior_logit: float, tau: float, world_size: int = 1) -> torch.Tensor:
    """:func:`lookahead_objective_reference` (its value, its gradient w.r.t. ``u_logit``),
    differentiated by hand: ∂/∂x_k [u_k G̃_k + τ KL(Bern(u_k) ‖ Bern(ū))] = u_k(1 − u_k)(G̃_k +
    τ(x_k − b₀)), x = logit(u), weighted 1/K per non-target logit and per labelled pixel; the
    value is computed without a graph. Equal to the reference to float32 rounding (tests)."""
    if use_reference():
        return lookahead_objective_reference(u_logit, meta_grad, gt, valid, prior_logit, tau, world_size)
    with torch.no_grad():
        nt = (~gt).to(u_logit.dtype)
        k = nt.sum(1)
        u = torch.sigmoid(u_logit)
        g = meta_grad.detach()
        obj = ((u * g + tau * bernoulli_kl(u_logit, prior_logit)) * nt).sum(1) / k
        pixel, logit = _pixel_weights(valid, k, world_size)
        coef = (u * (1.0 - u)).mul_(g + tau * (u_logit - prior_logit)).mul_(nt).mul_(logit)
        value = (obj * pixel).sum()
    return _carrying_gradient(value, u_logit, coef)


@full_precision
def lookahead_objective_reference(u_logit: torch.Tensor, meta_grad: torch.Tensor, gt: torch.Tensor,
                                  valid: torch.Tensor, prior_logit: float, tau: float, world_size: int = 1
                                  ) -> torch.Tensor:
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
                  prior_logit: float, tau: float, eps: float = 1e-6, world_size: int = 1) -> torch.Tensor:
    """:func:`dwc_objective_reference`'s J (its value, its gradient w.r.t. ``u_logit``),
    differentiated by hand: ∂/∂x_k [u_k(r_k − r̄) − τ KL(Bern(u_k) ‖ Bern(ū))] = u_k(1 − u_k)
    ((r_k − r̄) − τ(x_k − b₀)), r from the detached g; equal to the reference to float32 rounding."""
    if use_reference():
        return dwc_objective_reference(u_logit, g, gt, valid, prior_logit, tau, eps, world_size)
    with torch.no_grad():
        g = g.detach().clamp_min(0.0)
        nt = (~gt).to(g.dtype)
        k = nt.sum(1, keepdim=True)
        r = g / ((g * nt).sum(1, keepdim=True) / k + eps)
        r_rel = r - (r * nt).sum(1, keepdim=True) / k  # r − r̄
        u = torch.sigmoid(u_logit)
        j = ((u * r_rel - tau * bernoulli_kl(u_logit, prior_logit)) * nt).sum(1) / k.squeeze(1)
        pixel, logit = _pixel_weights(valid, k.squeeze(1), world_size)
        coef = (u * (1.0 - u)).mul_(r_rel - tau * (u_logit - prior_logit)).mul_(nt).mul_(logit)
        value = (j * pixel).sum()
    return _carrying_gradient(value, u_logit, coef)


@full_precision
def dwc_objective_reference(u_logit: torch.Tensor, g: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                            prior_logit: float, tau: float, eps: float = 1e-6, world_size: int = 1) -> torch.Tensor:
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
        return F.softmax(as_float(student_logits), dim=1).gather(1, lab.unsqueeze(1))


class DynamicWeightController(nn.Module):
    """The DWC: a per-pixel MLP of ``depth`` linear layers (1×1 convolutions; ReLU, then dropout
    when ``dropout`` > 0, between them) mapping its inputs (``inputs``: the student's softmax,
    + its confidence; or the teacher's softmax and confidence instead, Fig. 4b) to C
    pre-activations h; :meth:`to_weights` turns them into per-logit weights in (β_min, β_max).
    Built by :class:`lix.losses.dwld.DWLDHead` from its config (the defaults live there)."""

    def __init__(self, n_classes: int, inputs: str, hidden: int, beta: float, beta_min: float, beta_max: float,
                 depth: int, dropout: float):
        super().__init__()
        check_choice("dwc_inputs", inputs, DWC_INPUTS)
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
            p = F.softmax(as_float(logits), dim=1)
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


def lookahead_weight_gradient(student_logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
                              tcld: torch.Tensor, g: torch.Tensor, valid: torch.Tensor, student_forward,
                              lr: float, alpha: float, temperature: float, loss_weight: float = 1.0,
                              ignore_index: int = IGNORE_INDEX, teacher_logits: torch.Tensor | None = None,
                              ncld_terms: str = "generalized") -> torch.Tensor:
    """∂CE(θ')/∂w as :func:`lookahead_weight_gradient_reference` defines it (the arguments are
    its own, plus the teacher's logits and ``ncld_terms`` that made ``g``), computed without
    differentiating twice. The virtual step moves θ' = θ − η(∇θ CE + λ·∇θ DWLD(w)), so
    ∂θ'/∂w_pk = −ηλT²·v_p/n·∇θ g_pk and

        ∂CE(θ')/∂w_pk = −ηλT²·(v_p / n)·⟨u, ∇θ g_pk(θ)⟩,  u = ∇θ' CE(θ'),

    (n the labelled pixels, v_p whether pixel p is one): u is one forward and backward of the
    student at θ', and ⟨u, ∇θ g_pk⟩ the forward-mode derivative of the student's logits along u
    (``torch.autograd.forward_ad``: one forward pass carrying tangents; 235 ms against
    torch.func.jvp's 285 for MFNet batch 8 at 96x160 on one thread) pushed through g
    (:func:`lix.losses.decoupled.ncld_tangent`). The reference differentiates the first
    backward a second time (``create_graph``), whose BatchNorm double backward alone cost a
    quarter of a LIX step on the CPU. Equal to the reference to float32 rounding (tests); the
    reference runs instead under ``LIX_REFERENCE_LOSSES=1``, without ``teacher_logits``, or when
    ``student_forward.forward_mode`` is False (e.g. SyncBatchNorm has no forward-mode rule)."""
    if use_reference() or teacher_logits is None or not getattr(student_forward, "forward_mode", True):
        return lookahead_weight_gradient_reference(student_logits, target, w, tcld, g, valid, student_forward, lr,
                                                   alpha, temperature, loss_weight, ignore_index)
    names = list(student_forward.params)
    params = [student_forward.params[n] for n in names]
    v = valid.to(tcld.dtype)
    n_valid = v.sum().clamp_min(1.0)
    lab = torch.where(valid, target, torch.full_like(target, ignore_index))
    ce = F.cross_entropy(as_float(student_logits), lab, ignore_index=ignore_index, reduction="sum") / n_valid
    dwld = ((temperature ** 2 * (alpha * tcld + (w.detach() * g).sum(1))) * v).sum() / n_valid
    grads = torch.autograd.grad(ce + loss_weight * dwld, params, retain_graph=True, allow_unused=True)
    virtual = [(p - lr * gr if gr is not None else p).detach().requires_grad_(True) for p, gr in zip(params, grads)]
    meta = F.cross_entropy(as_float(student_forward(dict(zip(names, virtual)))), lab, ignore_index=ignore_index,
                           reduction="sum") / n_valid
    u = torch.autograd.grad(meta, virtual, allow_unused=True)
    with torch.no_grad(), forward_ad.dual_level():  # the logits' derivative along u: dual numbers, one pass
        dual = {n: forward_ad.make_dual(p.detach(), d if d is not None else torch.zeros_like(p))
                for n, p, d in zip(names, params, u)}
        logits_dot = forward_ad.unpack_dual(student_forward(dual)).tangent
    if logits_dot is None:  # logits that do not depend on the parameters
        logits_dot = torch.zeros_like(student_logits)
    g_dot = ncld_tangent(as_float(student_logits).detach(), as_float(teacher_logits).detach(),
                         torch.where(valid, target, torch.zeros_like(target)), as_float(logits_dot), temperature,
                         ncld_terms == "generalized")
    return g_dot.mul_((v * (-lr * loss_weight * temperature ** 2) / n_valid).unsqueeze(1))


def lookahead_weight_gradient_reference(student_logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
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
    ce = F.cross_entropy(as_float(student_logits), lab, ignore_index=ignore_index, reduction="sum") / n_valid
    dwld = ((temperature ** 2 * (alpha * tcld + (w_leaf * g).sum(1))) * v).sum() / n_valid
    grads = torch.autograd.grad(ce + loss_weight * dwld, params, create_graph=True, allow_unused=True)
    virtual = {n: (p - lr * gr if gr is not None else p) for n, p, gr in zip(names, params, grads)}
    meta = F.cross_entropy(as_float(student_forward(virtual)), lab, ignore_index=ignore_index,
                           reduction="sum") / n_valid
    (grad_w,) = torch.autograd.grad(meta, w_leaf, allow_unused=True)
    return torch.zeros_like(w_leaf) if grad_w is None else grad_w.detach()
