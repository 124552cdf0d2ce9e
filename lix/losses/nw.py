"""ARFD's recalibration with fewer passes over the n × n kernel matrices: the Nadaraya–Watson
smoothing of a map by itself with a hand-written backward, and the perplexity bandwidth's
bisection on precomputed distance offsets. The definitions, and the references these are tested
equal to (tests/test_distill_step_fast.py), are lix/losses/arfd.py's ``kernel_regression`` /
``_nw_chunk`` and ``perplexity_bandwidth_reference``.

Why: at MFNet's decoder tap (8 images × 960 pixels × 32 channels, the testbed's 96x160 crops)
each kernel matrix holds 7.4 M values, and the reference's autograd graph makes about a dozen
passes over it forward and as many backward (the diagonal's masked_fill, the negation, the
division, their backward nodes); the perplexity bisection makes 11 passes over an (8, 64, 960)
block per step, 12 steps, for each side of every tap.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


def _logits(x: torch.Tensor, sigma: torch.Tensor, kernel: str) -> torch.Tensor:
    """(distances (N, n, n) with an exact 0 diagonal, logits −d/σ (laplace) or −d²/(2σ²)
    (gaussian), (N, n, n)) of pixels x (N, n, d): the reference's numbers (``torch.cdist`` by the
    matrix product, the diagonal set to 0, the same divisions, written in place)."""
    dist = torch.cdist(x, x, compute_mode="use_mm_for_euclid_dist")
    dist.diagonal(dim1=1, dim2=2).zero_()  # the expansion's cancellation error is largest there
    if kernel == "laplace":
        return dist, dist.div(-sigma)  # −d/σ, bitwise (IEEE division is symmetric in sign)
    return dist, dist.square().div_(-(2.0 * sigma * sigma))


class SelfNadarayaWatson(torch.autograd.Function):
    """``SelfNadarayaWatson.apply(x, sigma, kernel)``: every pixel of x (N, n, d) replaced by the
    kernel-weighted mean of the image's pixels, weights softmax_j(logits_ij) (:func:`_logits`),
    sigma (N, 1, 1) detached. -> (N, n, d).

    Backward (x is the query, the key and the value at once; A the weights, D the distances,
    d·/dx summed over the three roles):

        dA = dOut Vᵀ;  dL = A ⊙ (dA − rowsum(A ⊙ dA))                 (softmax)
        G  = dL · (−1/σ) / D  (laplace),  dL · (−1/σ²)  (gaussian); 0 on the diagonal and
             where D = 0 (cdist's own rule)
        dx = rowsum(G) ⊙ x − G x + colsum(G) ⊙ x − Gᵀ x + Aᵀ dOut

    first order only (``once_differentiable``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sigma: torch.Tensor, kernel: str):
        dist, logits = _logits(x, sigma, kernel)
        weights = torch.softmax(logits, dim=2)
        del logits
        ctx.kernel = kernel
        ctx.save_for_backward(x, sigma, dist, weights)
        return weights @ x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, sigma, dist, weights = ctx.saved_tensors
        grad_w = grad_out @ x.transpose(1, 2)
        g = torch._softmax_backward_data(grad_w, weights, 2, weights.dtype)  # dL/dlogits
        del grad_w
        if ctx.kernel == "laplace":
            g.div_(-sigma).div_(dist)  # d(−D/σ)/dD, then cdist's 1/D
        else:
            g.div_(-(sigma * sigma))  # d(−D²/2σ²)/dD · 1/D = −1/σ²
        # cdist's rule: no gradient where a distance is 0, which includes the diagonal (a constant)
        g.masked_fill_(dist == 0, 0.0)
        grad_x = x * (g.sum(dim=2, keepdim=True) + g.sum(dim=1).unsqueeze(2))
        grad_x.sub_(g @ x).sub_(g.transpose(1, 2) @ x)
        grad_x.add_(weights.transpose(1, 2) @ grad_out)
        return grad_x, None, None


def self_kernel_regression(x: torch.Tensor, kernel: str, sigma: torch.Tensor) -> torch.Tensor:
    """x (N, n, d) recalibrated by itself (``kernel`` "laplace" or "gaussian", sigma (N, 1, 1)
    detached) -> (N, n, d); :class:`SelfNadarayaWatson`, or its forward alone without a gradient."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        with torch.no_grad():
            _dist, logits = _logits(x, sigma, kernel)
            return torch.softmax(logits, dim=2) @ x
    return SelfNadarayaWatson.apply(x, sigma.detach(), kernel)


def perplexity_bisection(dist: torch.Tensor, target: float, steps: int) -> torch.Tensor:
    """The bisection of ``perplexity_bandwidth_reference`` on log σ ∈ [−8, 4] + log(scale), with
    each step's mean entropy from precomputed offsets: for the pixels' distances d (N, m, n)
    (squared for the gaussian kernel; d' = d − min_j d ≥ 0 per row) and β = 1 / σ,

        H = log Σ_j e^{−β d'_j} + β Σ_j e^{−β d'_j} d'_j / Σ_j e^{−β d'_j}

    (the reference's lse − Σ w z with the row's maximum logit −β min d taken out, exponents
    clamped at −80): one exp and two reductions per step where the reference makes eleven
    passes. Same value to float32 rounding, so a step's comparison with the target differs only
    when the entropy lies within rounding of it. Returns σ (N,) = scale · e^{(lo + hi)/2}, before
    the gaussian's σ² -> σ."""
    scale = dist.flatten(1).median(dim=1).values.clamp_min(1e-12)
    offsets = dist - dist.amin(dim=2, keepdim=True)
    lo = torch.full_like(scale, -8.0)
    hi = torch.full_like(scale, 4.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        beta = (1.0 / (scale * mid.exp()))[:, None, None]
        # exponents below −80 clamped: e^-80 ~ 2e-35 is below float32's resolution next to the row's
        # e^0 = 1 (its nearest pixel), and the CPU's exp takes a slow path for results that underflow
        e = (offsets * -beta).clamp_min_(-80.0).exp_()
        total = e.sum(dim=2)
        entropy = (total.log() + beta[:, :, 0] * torch.linalg.vecdot(e, offsets, dim=2) / total).mean(dim=1)
        too_flat = entropy > target  # too many neighbours: a smaller bandwidth
        hi = torch.where(too_flat, mid, hi)
        lo = torch.where(too_flat, lo, mid)
    return scale * ((lo + hi) / 2).exp()


def perplexity_target(perplexity: float, n: int) -> float:
    """log of the perplexity, kept inside (1, n) (the reference's bounds)."""
    return math.log(min(max(float(perplexity), 1.0 + 1e-6), n - 1e-6))
