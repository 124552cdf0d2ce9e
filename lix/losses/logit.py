"""Logit distillation baselines: KD, CWKD, DKD, DIST, WSLD, per pixel over segmentation logits.

Every loss takes ``student_logits`` and ``teacher_logits`` of shape (N, C, H, W) (raw logits,
the teacher's detached), ``target`` (N, H, W) int64 class ids with ``ignore_index`` (255) for
unlabelled pixels, and returns a scalar tensor (nats, already multiplied by T² where the method
does so). Only labelled pixels take part: the per-pixel methods (KD, DKD, DIST, WSLD) replace the
logits of ignored pixels by 0 first (``torch.where``), so those never reach the result and get
an exact 0 gradient, whatever their value; CWKD, whose distributions run over the spatial
positions, drops them from its spatial softmax. With no labelled pixel at all every loss is an exact 0 that stays
in the graph (gradient 0).

Normalisation is the mean over the labelled pixels (M) unless the method's official code
defines another one (CWKD: the sum of per-channel KL divergences / (N·C)). Logits and targets
must have equal spatial sizes (the models return logits at the label's resolution).

Layout: the per-pixel losses run on the logits as they come, (N, C, H, W), each softmax over
dim 1, summing each pixel's term over the image and dividing by M. The ``*_reference``
functions (the first implementation, kept for ``LIX_REFERENCE_LOSSES=1`` and the equality tests
in tests/test_distill_step_fast.py) gather the M labelled pixels into an (M, C) matrix first;
the two agree to float32 rounding, but a softmax over rows of C = 10 values is slow on the CPU
(MFNet's (8, 10, 96, 160) logits, 1 thread: KD forward + backward 54 ms on (M, C) rows, 9-13 ms
in place; the gather and its scatter in the backward cost more than they save).

Defaults, each read in the authors' code (details in each function's docstring):

======  ================================================  ================================
method  hyper-parameters                                  term weight (``w_<name>``)
======  ================================================  ================================
kd      T = 1 (CIRKD ``--kd-temperature`` 1.0)            1.0 (CIRKD ``--lambda-kd``)
cwkd    T = 4 (TorchDistiller README, CIRKD)              3.0 (TorchDistiller README)
dkd     alpha = 1, beta = 8, T = 4 (mdistiller cfg.py)    1.0 (alpha, beta are the weights)
dist    beta = gamma = 1, tau = 1 (DIST_KD segmentation)  1.0 (DIST_KD ``--lambda-kd``)
wsld    T = 2 (WSLD ``self.T``)                           2.5 (WSLD ``self.alpha``)
======  ================================================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lix.losses._common import use_reference
from lix.losses.decoupled import decoupled_kl
from pipeline.constants import IGNORE_INDEX

__all__ = ["KDConfig", "CWKDConfig", "DKDConfig", "DISTConfig", "WSLDConfig", "kd_loss", "kd_map", "cwkd_loss",
           "dkd_loss", "dkd_terms", "dist_loss", "wsld_loss", "wsld_weight", "kd_loss_reference",
           "kd_map_reference", "dkd_loss_reference", "dkd_terms_reference", "dist_loss_reference",
           "wsld_loss_reference"]


# --------------------------------------------------------------------------- hyper-parameters
# Each method's defaults, declared once: the loss functions' keyword defaults below and the
# registered methods (lix/distill/methods/) read them from here.
@dataclass(frozen=True)
class KDConfig:
    temperature: float = 1.0  # CIRKD --kd-temperature


@dataclass(frozen=True)
class CWKDConfig:
    temperature: float = 4.0  # TorchDistiller README, CIRKD train_kd.py


@dataclass(frozen=True)
class DKDConfig:
    alpha: float = 1.0  # mdistiller cfg.py DKD.ALPHA
    beta: float = 8.0  # DKD.BETA
    temperature: float = 4.0  # DKD.T


@dataclass(frozen=True)
class DISTConfig:
    beta: float = 1.0  # DIST_KD segmentation: inter-class weight
    gamma: float = 1.0  # intra-class weight
    tau: float = 1.0  # no temperature in the segmentation code


@dataclass(frozen=True)
class WSLDConfig:
    temperature: float = 2.0  # WSLD self.T


# --------------------------------------------------------------------------- helpers
def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
           name: str, min_classes: int = 1) -> None:
    if student_logits.dim() != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{name}: student and teacher logits must both be (N, C, H, W) of equal shape, "
                         f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    n, c, h, w = student_logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"{name}: target must be (N, H, W) = {(n, h, w)}, got {tuple(target.shape)}")
    if c < min_classes:
        raise ValueError(f"{name}: needs at least {min_classes} classes, got C={c}")


def _flatten_valid(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                   ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (student (M, C), teacher (M, C), target (M,), valid (N, H, W) bool): the M labelled
    pixels in (n, h, w) raster order."""
    valid = target != ignore_index
    s = student_logits.permute(0, 2, 3, 1)[valid]
    t = teacher_logits.permute(0, 2, 3, 1)[valid]
    return s, t, target[valid], valid


def _zero(student_logits: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps the student in the graph (for batches without a labelled pixel)."""
    return student_logits.sum() * 0.0


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """(M, C) logits -> (M,) KL(softmax(teacher / T) || softmax(student / T)) per row (nats);
    (N, C, H, W) -> (N, H, W) per pixel likewise."""
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)


def _labelled(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (student, teacher, labels, valid, count): the logits (N, C, H, W) with 0 at the ignored
    pixels (where student and teacher then agree, so every per-pixel term below is exactly 0
    there, and its gradient too), labels (N, H, W) with 0 there, valid (N, H, W) bool, and the
    number M of labelled pixels as a tensor clamped to >= 1 (no labelled pixel: 0 / 1 = an exact
    0 that stays in the graph)."""
    valid = target != ignore_index
    if not bool(valid.all()):
        keep = valid.unsqueeze(1)
        student_logits = torch.where(keep, student_logits, 0.0)
        teacher_logits = torch.where(keep, teacher_logits, 0.0)
        target = torch.where(valid, target, 0)
    return student_logits, teacher_logits, target, valid, valid.sum().clamp_min(1).to(student_logits.dtype)


# --------------------------------------------------------------------------- KD
def kd_map(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
           temperature: float = KDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel T²·KL(p_t^T || p_s^T), (N, H, W); 0 at ignored pixels (and no gradient there)."""
    if use_reference():
        return kd_map_reference(student_logits, teacher_logits, target, temperature, ignore_index)
    _check(student_logits, teacher_logits, target, "kd")
    s, t, _, _, _ = _labelled(student_logits, teacher_logits, target, ignore_index)
    return _kl_rows(s, t, temperature) * temperature ** 2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = KDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise KD: T² / M · Σ_{labelled pixels i} KL(softmax(t_i / T) || softmax(s_i / T)), a
    scalar (nats); see :func:`kd_loss_reference` for the definition and its sources."""
    if use_reference():
        return kd_loss_reference(student_logits, teacher_logits, target, temperature, ignore_index)
    _check(student_logits, teacher_logits, target, "kd")
    s, t, _, _, count = _labelled(student_logits, teacher_logits, target, ignore_index)
    return _kl_rows(s, t, temperature).sum() / count * temperature ** 2


def kd_map_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                     temperature: float = KDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel T²·KL(p_t^T || p_s^T), (N, H, W); 0 at ignored pixels (they are not computed)."""
    _check(student_logits, teacher_logits, target, "kd")
    s, t, _, valid = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    out = student_logits.new_zeros(valid.shape)
    out[valid] = _kl_rows(s, t, temperature) * temperature ** 2
    return out


def kd_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float = KDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise KD (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    NIPS 2014 Deep Learning Workshop, arXiv:1503.02531), as used for segmentation by SKD
    (Liu et al., CVPR 2019) and CIRKD (Yang et al., CVPR 2022).

    loss = T² / M · Σ_{labelled pixels i} KL(softmax(t_i / T) || softmax(s_i / T))

    logits (N, C, H, W), target (N, H, W) -> scalar (nats). M = number of labelled pixels.

    Choices: the mean over labelled pixels follows CIRKD ``losses/kd.py`` (``CriterionKD``:
    ``kl_div(..., reduction='batchmean')`` on the (N·H·W, C) pixel matrix, × T²), here restricted
    to the labelled pixels. Default T = 1: CIRKD ``train_kd.py`` / ``train_cirkd.py``
    (``--kd-temperature`` 1.0, ``--lambda-kd`` 1.0), DIST_KD's segmentation code and
    TorchDistiller's pixel-wise KD all use T = 1 for segmentation logits; the T = 4 of the
    classification literature (mdistiller ``KD.T``) is available as a hyper-parameter.
    """
    _check(student_logits, teacher_logits, target, "kd")
    s, t, _, _ = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    if s.shape[0] == 0:
        return _zero(student_logits)
    return _kl_rows(s, t, temperature).mean() * temperature ** 2


# --------------------------------------------------------------------------- CWKD
def cwkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float = CWKDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Channel-wise distillation of the logits (Shu, Liu, Gao, Yan & Shen, "Channel-wise Knowledge
    Distillation for Dense Prediction", ICCV 2021, arXiv:2011.13256).

    For every image n and class channel c, the C maps become distributions over the spatial
    positions, φ(y)_{n,c,i} = softmax_i(y_{n,c,i} / T), and

    loss = T² / (N' · C) · Σ_n Σ_c KL(φ(t)_{n,c} || φ(s)_{n,c})

    logits (N, C, H, W), target (N, H, W) -> scalar (nats).

    Normalisation as the official code: TorchDistiller ``SemSeg-distill/utils/criterion.py`` and
    CIRKD ``losses/cwd.py`` (``CriterionCWD(norm_type='channel', divergence='kl')``: KLDivLoss
    with ``reduction='sum'`` over (N, C, H·W), divided by ``n * c``, × T²). Official logit setting
    (TorchDistiller README: ``bash exp_cwd.sh channel kl 3 4``; CIRKD ``train_kd.py``
    ``temperature=4.``): T = 4, loss weight 3.

    Ignored pixels (a choice of ours; the official code has none): they are removed from each
    channel's spatial softmax (their logits replaced by -inf in the log-sum-exp of student and
    teacher alike) and from the KL sum, so each distribution runs over the labelled positions of
    its image only and the logits at ignored pixels have no effect. Images without any labelled
    pixel are dropped and N' counts the remaining images (N' = N when every image has a label,
    i.e. the official normalisation).
    """
    _check(student_logits, teacher_logits, target, "cwkd")
    n, c, h, w = student_logits.shape
    valid = (target != ignore_index).reshape(n, 1, h * w)
    keep = valid.flatten(1).any(dim=1)
    if not bool(keep.any()):
        return _zero(student_logits)
    valid = valid[keep]
    zs = student_logits[keep].reshape(-1, c, h * w) / temperature
    zt = teacher_logits[keep].reshape(-1, c, h * w) / temperature
    neg = torch.tensor(float("-inf"), dtype=zs.dtype, device=zs.device)
    # log-softmax over the labelled positions only; set to 0 at the ignored ones *before* the
    # exp: a logit there far above the labelled ones would overflow, and an inf in the discarded
    # branch of torch.where still makes its backward 0 * inf = NaN
    zero = torch.zeros_like(zs)
    log_ps = torch.where(valid, zs - torch.logsumexp(torch.where(valid, zs, neg), dim=2, keepdim=True), zero)
    log_pt = torch.where(valid, zt - torch.logsumexp(torch.where(valid, zt, neg), dim=2, keepdim=True), zero)
    kl = torch.where(valid, log_pt.exp() * (log_pt - log_ps), zero)
    return kl.sum() * temperature ** 2 / (zs.shape[0] * c)


# --------------------------------------------------------------------------- DKD
def _dkd_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) logits, (M,) class ids -> per-row (TCKD, NCKD), each (M,), × T²; the same for
    (N, C, H, W) logits and (N, H, W) class ids -> (N, H, W) (the classes on dim 1 either way).

    TCKD = KL([b_t, 1 - b_t] || [b_s, 1 - b_s]), b = p^T of the target class;
    NCKD = KL(q_t || q_s), q = softmax of the non-target logits / T (target class excluded).
    Written with log-sum-exps (log(1 - b) = lse_{c≠y} - lse_c), which equals the official
    ``log(cat_mask(softmax))`` and the ``- 1000 * gt_mask`` trick up to float rounding (and
    e^-1000) without their overflow when b -> 1."""
    zs, zt = student / temperature, teacher / temperature
    classes = torch.arange(zs.shape[1], device=zs.device).view(1, -1, *([1] * (zs.dim() - 2)))
    gt = target.unsqueeze(1) == classes  # the one-hot of the target class, (M, C) or (N, C, H, W)
    neg = torch.tensor(float("-inf"), dtype=zs.dtype, device=zs.device)

    def parts(z):
        lse = torch.logsumexp(z, dim=1)
        lse_other = torch.logsumexp(torch.where(gt, neg, z), dim=1)
        log_b = z.gather(1, target.unsqueeze(1)).squeeze(1) - lse  # log p(target)
        log_nb = lse_other - lse  # log (1 - p(target))
        # log q(c) for c != target; 0 at the target *before* anything is exponentiated: there
        # z_y - lse_other can exceed ~88 (float32's exp limit), and an inf in the branch that
        # torch.where discards still turns its backward into 0 * inf = NaN
        log_q = torch.where(gt, torch.zeros_like(z), z - lse_other.unsqueeze(1))
        return log_b, log_nb, log_q

    lb_s, lnb_s, lq_s = parts(zs)
    lb_t, lnb_t, lq_t = parts(zt)
    tckd = lb_t.exp() * (lb_t - lb_s) + lnb_t.exp() * (lnb_t - lnb_s)
    nckd = torch.where(gt, torch.zeros_like(lq_t), lq_t.exp() * (lq_t - lq_s)).sum(dim=1)
    t2 = temperature ** 2
    return tckd * t2, nckd * t2


def _dkd_map(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_dkd_rows` on (N, C, H, W) logits and (N, H, W) ids -> (TCKD, NCKD) (N, H, W), × T²:
    :func:`lix.losses.decoupled.decoupled_kl` (the target removed from the non-target softmax by
    −inf as here, a hand-written backward), NCKD the sum of its per-class terms."""
    if teacher.requires_grad:  # decoupled_kl differentiates the student only
        return _dkd_rows(student, teacher, target, temperature)
    tcld, g = decoupled_kl(student, teacher, target, temperature, generalized=False)
    t2 = temperature ** 2
    return tcld * t2, g.sum(dim=1) * t2


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float = DKDConfig.temperature, ignore_index: int = IGNORE_INDEX
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel DKD pieces ``(tckd, nckd)``, each (N, H, W), × T², 0 at ignored pixels (no
    gradient there); the definition in :func:`dkd_terms_reference`, computed in place."""
    if use_reference():
        return dkd_terms_reference(student_logits, teacher_logits, target, temperature, ignore_index)
    _check(student_logits, teacher_logits, target, "dkd", min_classes=2)
    s, t, y, _, _ = _labelled(student_logits, teacher_logits, target, ignore_index)
    return _dkd_map(s, t, y, temperature)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = DKDConfig.alpha, beta: float = DKDConfig.beta, temperature: float = DKDConfig.temperature,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Decoupled KD per labelled pixel: 1/M · Σ_i (α · TCKD_i + β · NCKD_i), a scalar (nats); the
    definition and its sources in :func:`dkd_loss_reference`, computed in place."""
    if use_reference():
        return dkd_loss_reference(student_logits, teacher_logits, target, alpha, beta, temperature, ignore_index)
    _check(student_logits, teacher_logits, target, "dkd", min_classes=2)
    s, t, y, _, count = _labelled(student_logits, teacher_logits, target, ignore_index)
    tckd, nckd = _dkd_map(s, t, y, temperature)
    return (alpha * tckd + beta * nckd).sum() / count


def dkd_terms_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                        temperature: float = DKDConfig.temperature, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel DKD pieces: ``(tckd, nckd)``, each (N, H, W), each already × T², 0 at ignored
    pixels (not computed there, no gradient). With the ground-truth class y of pixel i,

    tckd_i = T² · KL([p_t(y), 1 - p_t(y)] || [p_s(y), 1 - p_s(y)])   (binary target/non-target)
    nckd_i = T² · KL(q_t || q_s),  q = softmax over the C - 1 non-target classes of z / T

    p = softmax(z / T). ``dkd_loss`` = mean over labelled pixels of α·tckd + β·nckd; plain KD
    is tckd + (1 - p_t(y))·nckd (the decomposition of the DKD paper, Eq. 4). Pure function, for
    reformulations of DKD per pixel (e.g. DWLD)."""
    _check(student_logits, teacher_logits, target, "dkd", min_classes=2)
    s, t, y, valid = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    tckd_map = student_logits.new_zeros(valid.shape)
    nckd_map = student_logits.new_zeros(valid.shape)
    if s.shape[0]:
        tckd, nckd = _dkd_rows(s, t, y, temperature)
        tckd_map[valid] = tckd
        nckd_map[valid] = nckd
    return tckd_map, nckd_map


def dkd_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                       alpha: float = DKDConfig.alpha, beta: float = DKDConfig.beta,
                       temperature: float = DKDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Decoupled KD (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022,
    arXiv:2203.08679), per pixel with the ground-truth class as the target class.

    loss = 1/M · Σ_{labelled pixels i} (α · TCKD_i + β · NCKD_i)   (TCKD, NCKD × T², see
    :func:`dkd_terms`)

    logits (N, C, H, W), target (N, H, W) -> scalar (nats). M = number of labelled pixels.

    Equals the official ``dkd_loss`` (megvii-research/mdistiller ``mdistiller/distillers/DKD.py``:
    ``kl_div(..., size_average=False) * T**2 / batch_size`` for each part, the target masked out of
    the non-target distribution by subtracting 1000 from its logit / T) applied to the labelled
    pixels flattened to (M, C): the official division by the batch size becomes a division by M.
    Defaults: α = 1, β = 8, T = 4 (mdistiller ``mdistiller/engine/cfg.py``: ``DKD.ALPHA``,
    ``DKD.BETA``, ``DKD.T``; ``DKD.CE_WEIGHT`` = 1, i.e. weight 1 next to the cross-entropy). Not
    ported: the official linear warm-up of the DKD weight over the
    first ``DKD.WARMUP`` = 20 epochs (the trainer's business, not the loss's).
    """
    _check(student_logits, teacher_logits, target, "dkd", min_classes=2)
    s, t, y, _ = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    if s.shape[0] == 0:
        return _zero(student_logits)
    tckd, nckd = _dkd_rows(s, t, y, temperature)
    return (alpha * tckd + beta * nckd).mean()


# --------------------------------------------------------------------------- DIST
def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(R, K) x (R, K) -> (R,) Pearson correlation of each row pair, as the official code:
    cosine of the centred rows with ``eps`` added to the product of the norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _pearson_pixels(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, C, H, W) x (N, C, H, W) -> (N, H, W): :func:`_pearson_rows` across dim 1, the norms as
    sqrt(Σ x²) (``Tensor.norm`` over dim 1 of an NCHW map is 20x slower on the CPU: 15 vs 0.7 ms
    for (8, 10, 96, 160)); the sum of squares floored at the smallest normal float, so that a
    zero vector (an ignored pixel's uniform softmax) has a zero gradient as with ``norm``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    tiny = torch.finfo(a.dtype).tiny
    norms = (a * a).sum(dim=1).clamp_min(tiny).sqrt() * (b * b).sum(dim=1).clamp_min(tiny).sqrt()
    return (a * b).sum(dim=1) / (norms + eps)


def _pearson_classes(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, count: torch.Tensor,
                     eps: float = 1e-8) -> torch.Tensor:
    """(N, C, H, W) x (N, C, H, W) -> (C,): :func:`_pearson_rows` of each class's values over the
    pixels where ``weight`` (N, 1, H, W) is 1 (``count`` of them; the others weigh 0)."""
    dims = (0, 2, 3)
    a = (a - (a * weight).sum(dim=dims, keepdim=True) / count) * weight
    b = (b - (b * weight).sum(dim=dims, keepdim=True) / count) * weight
    return (a * b).sum(dim=dims) / (torch.linalg.vector_norm(a, dim=dims) * torch.linalg.vector_norm(b, dim=dims)
                                    + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              beta: float = DISTConfig.beta, gamma: float = DISTConfig.gamma, tau: float = DISTConfig.tau,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DIST's τ² · (β · inter + γ · intra) on the labelled pixels, a scalar; the definition and its
    sources in :func:`dist_loss_reference`, computed in place: inter per pixel across dim 1,
    intra per class across the labelled pixels of the batch (masked sums)."""
    if use_reference():
        return dist_loss_reference(student_logits, teacher_logits, target, beta, gamma, tau, ignore_index)
    _check(student_logits, teacher_logits, target, "dist")
    s, t, _, valid, count = _labelled(student_logits, teacher_logits, target, ignore_index)
    if not bool(valid.any()):
        return _zero(student_logits)
    ps = F.softmax(s / tau, dim=1)
    pt = F.softmax(t / tau, dim=1)
    inter = 1.0 - torch.where(valid, _pearson_pixels(ps, pt), 0.0).sum() / count
    intra = 1.0 - _pearson_classes(ps, pt, valid.unsqueeze(1).to(ps.dtype), count).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


def dist_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                        beta: float = DISTConfig.beta, gamma: float = DISTConfig.gamma, tau: float = DISTConfig.tau,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022, arXiv:2205.10536) on the labelled pixels.

    With P = softmax(Z / τ) over classes for the M labelled pixels of the batch (M, C):

    inter = 1 - 1/M · Σ_i  pearson(P_s[i, :], P_t[i, :])      (across classes, per pixel)
    intra = 1 - 1/C · Σ_c  pearson(P_s[:, c], P_t[:, c])      (across the M pixels, per class)
    loss  = τ² · (β · inter + γ · intra)

    logits (N, C, H, W), target (N, H, W) -> scalar (dimensionless, in [0, 2(β + γ)τ²]).

    Follows hunto/DIST_KD ``segmentation/losses/dist_kd.py`` (``DIST``: logits reshaped to
    (N·H·W, C), softmax without temperature, ``logit_relation`` + ``class_relation`` with
    β = γ = 1, loss weight 1; ``segmentation/train_kd.py`` ``--lambda-kd`` 1.0), which computes the
    intra-class relation across *all pixels of the batch* (not per image). τ and the τ² factor
    come from the classification version of DIST (``y = softmax(z / tau)``, each relation × tau²,
    as in the authors' classification code and its MMRazor port ``DISTLoss``); the segmentation
    code has no temperature, i.e. τ = 1, the default here. Choice: only the labelled pixels take part
    (the official segmentation code uses every pixel). The ε = 1e-8 of the official Pearson
    correlation is kept, so the loss is ~1e-8-close to, not exactly, 0 for equal logits.
    """
    _check(student_logits, teacher_logits, target, "dist")
    s, t, _, _ = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    if s.shape[0] == 0:
        return _zero(student_logits)
    ps = F.softmax(s / tau, dim=1)
    pt = F.softmax(t / tau, dim=1)
    inter = 1.0 - _pearson_rows(ps, pt).mean()
    intra = 1.0 - _pearson_rows(ps.t(), pt.t()).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------- WSLD
def wsld_weight(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                eps: float = 1e-7) -> torch.Tensor:
    """(M, C) logits, (M,) class ids -> (M,) WSLD sample weights, detached:
    w = 1 - exp(-CE_s / (CE_t + eps)), CE = cross-entropy with the ground truth at T = 1; the
    same for (N, C, H, W) logits and (N, H, W) ids -> (N, H, W)."""
    s, t = student.detach(), teacher.detach()
    ce_s = F.cross_entropy(s, target, reduction="none")
    ce_t = F.cross_entropy(t, target, reduction="none")
    return 1.0 - torch.exp(-(ce_s / (ce_t + eps)).clamp_min(0.0))


def wsld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float = WSLDConfig.temperature, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """WSLD per labelled pixel, T² / M · Σ_i w_i · KL(softmax(t_i / T) || softmax(s_i / T)), a scalar
    (nats); the definition and its sources in :func:`wsld_loss_reference`, computed in place (the
    weights :func:`wsld_weight` of the (N, C, H, W) logits, per pixel)."""
    if use_reference():
        return wsld_loss_reference(student_logits, teacher_logits, target, temperature, ignore_index)
    _check(student_logits, teacher_logits, target, "wsld")
    s, t, y, _, count = _labelled(student_logits, teacher_logits, target, ignore_index)
    return (wsld_weight(s, t, y) * _kl_rows(s, t, temperature)).sum() / count * temperature ** 2


def wsld_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                        temperature: float = WSLDConfig.temperature, ignore_index: int = IGNORE_INDEX
                        ) -> torch.Tensor:
    """Weighted soft label distillation (Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, "Rethinking
    Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective", ICLR 2021,
    arXiv:2102.00650), per pixel: every labelled pixel is one "sample" of the official code.

    w_i   = 1 - exp(-CE(s_i, y_i) / (CE(t_i, y_i) + 1e-7))      (T = 1, detached, y = ground truth)
    loss  = T² / M · Σ_{labelled pixels i} w_i · KL(softmax(t_i / T) || softmax(s_i / T))

    logits (N, C, H, W), target (N, H, W) -> scalar (nats). M = number of labelled pixels.

    Follows bellymonster/Weighted-Soft-Label-Distillation ``knowledge_distiller.py``
    (``WSLDistiller``: T = 2, ``alpha`` = 2.5 -> the default weight of the term; the weight uses
    the un-tempered, detached logits and ``max(ratio, 0)``; ``T**2 * mean``). One departure, a
    choice: the official soft term is the cross-entropy -Σ p_t log p_s; here it is the KL
    divergence, which differs by the teacher's entropy, a constant of the student, times the
    detached weight: the gradients are identical and the term is 0 when student = teacher.
    """
    _check(student_logits, teacher_logits, target, "wsld")
    s, t, y, _ = _flatten_valid(student_logits, teacher_logits, target, ignore_index)
    if s.shape[0] == 0:
        return _zero(student_logits)
    w = wsld_weight(s, t, y)
    return (w * _kl_rows(s, t, temperature)).mean() * temperature ** 2
