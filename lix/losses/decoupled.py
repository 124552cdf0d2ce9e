"""The decoupled per-pixel KL of DKD and DWLD with a hand-written backward: a handful of passes
over the logits where autograd records about thirty.

Per pixel, with tempered logits s = z_s / T (student), t = z_t / T (teacher), the ground-truth
class y, q = softmax(s), p = softmax(t), and the non-target distributions q̂ = softmax(s − M·1_y),
p̂ = softmax(t − M·1_y) (M = ∞ here: the target's logit removed):

    tcld = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])                        (N, H, W), nats
    g_k  = p̂_k (log p̂_k − log q̂_k) [− p̂_k + q̂_k]   for k ≠ y, 0 at y   (N, C, H, W), nats

(the bracket with ``generalized``: the per-class generalized KL of lix/losses/dwld.py). DKD's
TCKD is tcld and its NCKD Σ_k g_k (either form: the brackets sum to 0); DWLD weights the g_k.
The references are ``lix.losses.dwld.dwld_terms_reference`` and ``lix.losses.logit``'s
``_dkd_rows``; tests/test_distill_step_fast.py checks values and gradients against them.

The backward, derived by hand (j any class, [·] the indicator):

    ∂tcld/∂s_j = (p_y − q_y)·q̂_j [j ≠ y] + (q_y − p_y)·[j = y]
    Σ_k G_k ∂g_k/∂s_j = a_j − q̂_j Σ_k a_k,  a_k = G_k (q̂_k − p̂_k) [k ≠ y]  (generalized)
                                             a_k = −G_k p̂_k [k ≠ y]          (the paper's terms)

using q_j = (1 − q_y) q̂_j for j ≠ y. DWLD's reference masks with eq. 11's M = 1000 instead of
∞: the same numbers in float32 and float64 unless a target's tempered logit exceeds the others'
log-sum-exp by several hundred (e^-1000 underflows to 0 in both). The gradient reaches the
student's logits only (the teacher's are detached in every caller; a teacher that requires a
gradient is refused); under ``create_graph`` the backward is itself differentiable (it
recomputes its pieces from the student's logits), as DWLD's reference lookahead needs.

Cost on the CPU, MFNet's (8, 10, 96, 160) logits with the upstream gradients of DWLD, 1 thread,
forward + backward: 32-40 ms against the autograd version's 70 ms
(lix/losses/dwld.py ``dwld_terms_reference``; both measured side by side, the machine shared).
"""

from __future__ import annotations

import torch


def _target_mask(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W): −inf at the target class ``idx`` (N, 1, H, W), 0 elsewhere. Added to the
    logits it removes the target from a log-sum-exp exactly (−inf + z = −inf, 0 + z = z), in one
    fast pass: the CPU's exp is 4-10x slower on arguments whose result underflows (eq. 11's
    z − 1000, or z − 100) than on −inf or ordinary ones (1.2 M values: 2.0 ms, 5 ms vs 0.4-0.8 ms)."""
    return torch.zeros_like(z).scatter_(1, idx, float("-inf"))


def _log_softmax_parts(z: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log q̂ with 0 at the target, q̂ with 0 at the target (N, C, H, W), log q_y, log(1 − q_y)
    (N, 1, H, W)) of tempered logits z, :func:`_target_mask`'s ``mask`` and the target ids ``idx``."""
    z_masked = z + mask
    nt_lse = torch.logsumexp(z_masked, dim=1, keepdim=True)  # log Σ_{k≠y} e^{z_k}
    z_y = z.gather(1, idx)
    lse = torch.logaddexp(nt_lse, z_y)  # log Σ_k e^{z_k}: the non-target sum plus the target's term
    log_qh = z_masked.sub_(nt_lse)  # −inf at the target
    qh = log_qh.exp()  # exactly 0 at the target
    return log_qh.scatter_(1, idx, 0.0), qh, z_y - lse, nt_lse - lse


def _student_grad(qh: torch.Tensor, ph: torch.Tensor, py: torch.Tensor, qy: torch.Tensor, idx: torch.Tensor,
                  grad_tcld: torch.Tensor | None, grad_g: torch.Tensor | None, generalized: bool) -> torch.Tensor:
    """The module docstring's backward: d(Σ grad_tcld·tcld + Σ grad_g·g)/ds (N, C, H, W) from q̂, p̂
    (N, C, H, W, 0 at the target), p_y, q_y (N, 1, H, W) and the target ids (N, 1, H, W)."""
    grad = torch.zeros_like(qh)
    if grad_g is not None:  # a is 0 at the target (q̂_y = p̂_y = 0), so is q̂_y·Σa
        a = (qh - ph) * grad_g if generalized else -(ph * grad_g)
        grad = a - qh * a.sum(dim=1, keepdim=True)
    if grad_tcld is not None:
        coef = (py - qy) * grad_tcld.unsqueeze(1)  # (N, 1, H, W): (p_y − q_y)·G
        # (p_y − q_y)·q̂_j off the target (q̂_y = 0), (q_y − p_y) on it
        grad = (grad + qh * coef).scatter_add(1, idx, -coef)
    return grad


class DecoupledKL(torch.autograd.Function):
    """``DecoupledKL.apply(s, t, idx, generalized)`` -> (tcld (N, H, W), g (N, C, H, W)): the
    module docstring's terms of tempered logits s (student, in the graph) and t (teacher,
    detached), (N, C, H, W), and target ids ``idx`` (N, 1, H, W) int64.

    The backward uses q̂, p̂, p_y, q_y saved by the forward; asked for a differentiable backward
    (``create_graph``, e.g. the reference lookahead's second-order gradient) it recomputes them
    from s with autograd on, so that derivatives of the gradient are exact too."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, generalized: bool):
        mask = _target_mask(s, idx)
        log_qh, qh, log_qy, log_q_rest = _log_softmax_parts(s, mask, idx)
        log_ph, ph, log_py, log_p_rest = _log_softmax_parts(t, mask, idx)
        py, p_rest = log_py.exp(), log_p_rest.exp()
        tcld = py * (log_py - log_qy) + p_rest * (log_p_rest - log_q_rest)
        g = ph * log_ph.sub_(log_qh)  # 0 at the target: p̂_y = 0 and both logs were set to 0 there
        if generalized:
            g.sub_(ph).add_(qh)
        ctx.generalized = generalized
        ctx.save_for_backward(s, t, idx, qh, ph, py, log_qy.exp())
        return tcld.squeeze(1), g

    @staticmethod
    def backward(ctx, grad_tcld: torch.Tensor | None, grad_g: torch.Tensor | None):
        s, t, idx, qh, ph, py, qy = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: rebuild the pieces as functions of s
            mask = _target_mask(s, idx)
            qh = torch.softmax(s + mask, dim=1)
            ph = torch.softmax(t + mask, dim=1)
            qy = torch.softmax(s, dim=1).gather(1, idx)
        return _student_grad(qh, ph, py, qy, idx, grad_tcld, grad_g, ctx.generalized), None, None, None


def decoupled_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                 generalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(tcld (N, H, W), g (N, C, H, W)) of the module docstring for raw logits (N, C, H, W) (the
    teacher's detached) and class ids ``labels`` (N, H, W) in [0, C) (callers replace the ignore
    label first and mask the ignored pixels' terms)."""
    if teacher.requires_grad:
        raise ValueError("decoupled_kl: the teacher's logits must be detached (its gradient is not computed)")
    return DecoupledKL.apply(student / temperature, teacher / temperature, labels.unsqueeze(1), generalized)


def ncld_tangent(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tangent: torch.Tensor,
                 temperature: float, generalized: bool) -> torch.Tensor:
    """The directional derivative of g (the module docstring) at the student's logits along
    ``tangent`` (N, C, H, W), the change of those logits: ġ_k = (q̂_k − p̂_k)·(ṡ_k − Σ_j q̂_j ṡ_j)
    (generalized) or −p̂_k·(ṡ_k − Σ_j q̂_j ṡ_j) (the paper's terms) for k ≠ y, 0 at y, with
    ṡ = tangent / T. (N, C, H, W), no graph."""
    with torch.no_grad():
        mask = _target_mask(student, labels.unsqueeze(1))
        qh = torch.softmax(student / temperature + mask, dim=1)  # q̂, 0 at the target
        ph = torch.softmax(teacher / temperature + mask, dim=1)
        s_dot = tangent / temperature
        d_log_qh = s_dot - (qh * s_dot).sum(dim=1, keepdim=True)
        return (qh.sub_(ph) if generalized else ph.neg_()).mul_(d_log_qh)
