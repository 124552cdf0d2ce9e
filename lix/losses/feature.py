"""Feature-distillation baselines: AT, FitNet, FT, NST, RKD, SP and VID.

Each method is a pure loss function ``xxx_loss`` (shapes and units in its docstring), with the
small modules some of them learn (connectors, paraphraser, translator, VID's regressor); the
registered methods are in lix/distill/methods/ (``kind="feature"``). The formulas and default
weights follow the authors' code where it exists and the CIFAR baselines of
HobbitLong/RepDistiller (``distiller_zoo/*.py``, ``models/util.py``, ``helper/loops.py``,
``scripts/run_cifar_distill.sh``) otherwise; the
segmentation adaptations follow winycg/CIRKD (``losses/at.py``, ``losses/fitnet.py``:
single-stage training, the maps compared at full feature resolution, no label masking).

Choices common to all seven:

* **taps.** Methods whose paper/code distils several stages (AT, NST, VID) read ``spec.taps``
  (``taps = None`` -> the model class's ``default_taps``: MFNet ``rgb4``,
  ``fused``, ``decoder``; SNE-RoadSeg ``layer1``-``layer4``, ``decoder``). Methods defined on one
  layer (FitNet's hint, FT's factor, RKD's embedding, SP's "end of the last group") default to
  ``("decoder",)``, the last feature map before the classifier, which is the map the segmentation
  KD collections (CIRKD, CWD) distil and the one every family names alike. A ``taps``
  hyper-parameter overrides either.
* **several taps: the per-tap losses are summed** (as the official AT code and RepDistiller's
  ``sum(loss_group)`` do), so the default weights keep their meaning per tap.
* **no ignore-label masking.** These are label-free feature imitations: none of the papers or the
  segmentation reimplementations mask unlabelled pixels, and features at unlabelled pixels (sky,
  padding) still carry the teacher's (geometric) knowledge. ``b.target`` is not read; BN in the
  connectors would mix masked and unmasked pixels anyway.
* **precision.** The losses compute in float32 (features may arrive in fp16 under autocast;
  norms and Gram matrices of them overflow in fp16).
* student and teacher maps have the same (h, w) at every tap (same family), so none of
  RepDistiller's ``adaptive_avg_pool2d`` size matching is needed.
* methods with connectors (FitNet, FT, VID) are not zero at initialisation; they are zero (or at
  the NLL minimum, VID) once the connector reproduces the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


# --------------------------------------------------------------------------- hyper-parameters
# Each method's defaults, declared once: the functions below and the registered methods
# (lix/distill/methods/at.py, ft.py, nst.py, rkd.py, vid.py) read them from here. FitNet and SP
# have none besides their term weights.
@dataclass(frozen=True)
class ATConfig:
    p: float = 2.0  # the attention map's exponent (official AT)


@dataclass(frozen=True)
class FTConfig:
    rate: float = 0.5  # factor channels = round(Ct * rate), the paraphraser rate k
    rec_loss: str = "l1"  # the paraphraser's reconstruction loss (authors' code; "l2": the paper's)
    pretrain_epochs: int = 30  # RepDistiller's init_epochs


@dataclass(frozen=True)
class NSTConfig:
    degree: int = 2  # polynomial kernel (x.y + c)^d, the paper's best
    c: float = 0.0


@dataclass(frozen=True)
class RKDConfig:
    max_side: int = 16  # pooled side: the angle term is O(P^3) in the P <= max_side^2 pixels


@dataclass(frozen=True)
class VIDConfig:
    init_pred_var: float = 5.0  # the variance head's initial value (RepDistiller)
    eps: float = 1e-5  # the variance's floor


# =========================================================================== AT
def attention_map(f: torch.Tensor, p: float = ATConfig.p, eps: float = 1e-12) -> torch.Tensor:
    """Activation-based spatial attention of Zagoruyko & Komodakis: (N, C, h, w) -> (N, h*w),
    the channel mean of |F|^p, flattened and L2-normalised per image (unit vector)."""
    a = f.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, p=2, dim=1, eps=eps)


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = ATConfig.p) -> torch.Tensor:
    """Attention-transfer loss at one tap: the mean over images and positions of the squared
    difference of the normalised attention maps, ``mean((Q_s/|Q_s| - Q_t/|Q_t|)^2)``.

    fs (N, Cs, h, w), ft (N, Ct, h, w) (channel counts may differ) -> scalar, dimensionless
    (each attention vector has unit L2 norm, so the value is at most 4 / (h*w))."""
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


# =========================================================================== FitNet
def conv_bn_connector(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv (no bias) + BatchNorm: the student -> teacher channel connector of RepDistiller's
    ``ConnectorV2`` / ``ConvReg(use_relu=False)`` (He-normal conv init, BN weight 1, bias 0)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))  # fan-out of a 1x1 kernel
    bn = nn.BatchNorm2d(c_out)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def hint_loss(fs_regressed: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FitNet hint loss: mean squared error between the regressed student map and the teacher's
    hint, both (N, Ct, h, w) -> scalar in (feature units)^2, averaged over every element."""
    return F.mse_loss(fs_regressed.float(), ft.float())


# =========================================================================== FT
def factor_transfer_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Factor-transfer loss of Kim et al.: each factor (N, m, h, w) is flattened per image and
    L2-normalised (unit vector of m*h*w entries); the loss is the mean over all entries of
    |F_s/|F_s| - F_t/|F_t||^p (p = 1: the official ``nn.L1Loss`` on ``utils.FT``). Scale
    invariant; dimensionless; scalar."""
    s = F.normalize(factor_s.float().flatten(1), p=2, dim=1)
    t = F.normalize(factor_t.float().flatten(1), p=2, dim=1)
    return (s - t).abs().pow(p).mean()


class Paraphraser(nn.Module):
    """The teacher-side convolutional autoencoder of Factor Transfer (authors' code
    ``Models/FeatureProjection.py``): encoder conv3x3 C->C, C->m, m->m; decoder transposed
    conv3x3 m->m, m->C, C->C; every conv with bias and followed by LeakyReLU(0.1); no BN; stride 1
    throughout (the factor keeps the map's h x w)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, m = channels, factor_channels

        def block(conv):
            return [conv, nn.LeakyReLU(0.1)]

        self.encoder = nn.Sequential(*block(nn.Conv2d(c, c, 3, padding=1)), *block(nn.Conv2d(c, m, 3, padding=1)),
                                     *block(nn.Conv2d(m, m, 3, padding=1)))
        self.decoder = nn.Sequential(*block(nn.ConvTranspose2d(m, m, 3, padding=1)),
                                     *block(nn.ConvTranspose2d(m, c, 3, padding=1)),
                                     *block(nn.ConvTranspose2d(c, c, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def translator(c_in: int, factor_channels: int) -> nn.Sequential:
    """The student-side translator of Factor Transfer (authors' code): conv3x3 Cs->Cs, Cs->m,
    m->m, each with bias and LeakyReLU(0.1), no BN."""
    m = factor_channels
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(c_in, m, 3, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(m, m, 3, padding=1), nn.LeakyReLU(0.1))


def reconstruction_loss(rec: torch.Tensor, target: torch.Tensor, kind: str = FTConfig.rec_loss) -> torch.Tensor:
    """Paraphraser reconstruction loss, (N, C, h, w) each -> scalar: ``l1`` = mean |rec - x| (the
    authors' ``train_Paraphraser.py``), ``l2`` = mean (rec - x)^2 (the paper's Eq. 1 and
    RepDistiller's ``nn.MSELoss``)."""
    d = rec.float() - target.float()
    return d.abs().mean() if kind == "l1" else d.pow(2).mean()


# =========================================================================== NST
def nst_loss(fs: torch.Tensor, ft: torch.Tensor, degree: int = NSTConfig.degree,
             c: float = NSTConfig.c) -> torch.Tensor:
    """Neuron-selectivity transfer: squared MMD with the polynomial kernel k(x, y) = (x.y + c)^d
    between the student's and the teacher's channels, each channel's spatial map (h*w values)
    L2-normalised and taken as one sample.

    fs (N, Cs, h, w), ft (N, Ct, h, w) (Cs != Ct is fine: the two sample sets may differ in size)
    -> scalar, per image ``mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j)``,
    averaged over images; dimensionless, >= 0, 0 when the two sets of normalised maps agree."""
    s = F.normalize(fs.float().flatten(2), p=2, dim=2)
    t = F.normalize(ft.float().flatten(2), p=2, dim=2)

    def k(a, b):  # (N, Ca, P), (N, Cb, P) -> (N,) mean kernel value
        return (a @ b.transpose(1, 2) + c).pow(degree).mean(dim=(1, 2))

    return (k(s, s) + k(t, t) - 2.0 * k(s, t)).mean()


# =========================================================================== RKD
def _pool_to(f: torch.Tensor, max_side: int) -> torch.Tensor:
    h, w = f.shape[-2:]
    if h <= max_side and w <= max_side:
        return f
    return F.adaptive_avg_pool2d(f, (min(h, max_side), min(w, max_side)))


def _pdist(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(P, C) -> (P, P) Euclidean distances, the diagonal exactly 0 (RKD's ``pdist``)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = _pdist(e)
    pos = d > 0
    return d / d[pos].mean() if pos.any() else d


def _angles(e: torch.Tensor) -> torch.Tensor:
    """(P, C) -> (P, P, P): cos of the angle at vertex a between b and c,
    <(e_b - e_a)/|.|, (e_c - e_a)/|.|> (0 where b or c coincides with a)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [a, b] = e_b - e_a
    return diff @ diff.transpose(1, 2)


def _angle_loss_one(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ta = _angles(t)
    return F.smooth_l1_loss(_angles(s), ta)


def rkd_losses(fs: torch.Tensor, ft: torch.Tensor, max_side: int = RKDConfig.max_side
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Relational KD on the pixels of a feature map: (distance loss, angle loss), both scalars.

    fs (N, Cs, h, w), ft (N, Ct, h, w). Each map is average-pooled to at most ``max_side`` x
    ``max_side`` positions (adaptive average pooling; untouched when already that small); within
    each image the P <= max_side^2 pixel feature vectors are the samples. Distance term: Huber
    (smooth L1, delta 1) between the P x P Euclidean distance matrices, each divided by the mean
    of its positive entries (scale-free), averaged over the P^2 pairs. Angle term: Huber between
    the P^3 cosines of the angle at every vertex a between every b, c (the teacher's computed
    without grad). Both averaged over images. Dimensionless. The student's P^3 angle tensor is
    recomputed in backward (activation checkpointing) so a step keeps no P^3 tensor per image."""
    s_all = _pool_to(fs.float(), max_side).flatten(2).transpose(1, 2)  # (N, P, Cs)
    t_all = _pool_to(ft.float(), max_side).flatten(2).transpose(1, 2).detach()
    dist, angle = [], []
    for s, t in zip(s_all, t_all):
        with torch.no_grad():
            td = _normalised_distances(t)
        dist.append(F.smooth_l1_loss(_normalised_distances(s), td))
        if torch.is_grad_enabled() and s.requires_grad:
            angle.append(checkpoint(_angle_loss_one, s, t, use_reentrant=False))
        else:
            angle.append(_angle_loss_one(s, t))
    return torch.stack(dist).mean(), torch.stack(angle).mean()


# =========================================================================== SP
def sp_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss: G = F F^T over the batch (F = each image's map flattened,
    (N, C*h*w)), every row L2-normalised; ``|G_t - G_s|_F^2 / N^2``.

    fs (N, Cs, h, w), ft (N, Ct, h, w) -> scalar, dimensionless. With N = 1 both G are [[1]] and
    the loss is 0: it needs batches of more than one image."""
    n = fs.shape[0]
    s, t = fs.float().reshape(n, -1), ft.float().reshape(n, -1)
    gs = F.normalize(s @ s.t(), p=2, dim=1)
    gt = F.normalize(t @ t.t(), p=2, dim=1)
    return (gt - gs).pow(2).sum() / (n * n)


# =========================================================================== VID
def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, pred_var: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of VID without the constant 0.5*log(2*pi):
    ``mean(0.5 * ((mu - t)^2 / var + log var))``.

    pred_mean, target (N, C, h, w); pred_var (C,) positive per-channel variance -> scalar
    (nats per element). Minimum over mu: ``0.5 * mean_c log var_c`` at mu = t."""
    var = pred_var.float().view(1, -1, 1, 1)
    return (0.5 * ((pred_mean.float() - target.float()).pow(2) / var + var.log())).mean()


class VIDRegressor(nn.Module):
    """VID's per-tap variational head (RepDistiller ``VIDLoss``, "code from author"): mean =
    conv1x1(Cs->mid)-ReLU-conv1x1(mid->mid)-ReLU-conv1x1(mid->Ct), convs without bias; variance
    per teacher channel ``softplus(alpha) + eps``, alpha initialised so the variance starts at
    ``init_pred_var``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, init_pred_var: float = VIDConfig.init_pred_var,
                 eps: float = VIDConfig.eps):
        super().__init__()
        self.mean = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(c_mid, c_out, 1, bias=False))
        alpha = math.log(math.expm1(init_pred_var - eps))  # softplus^-1(init_pred_var - eps)
        self.alpha = nn.Parameter(torch.full((c_out,), alpha))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, fs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(fs), self.variance()
