"""Recent feature-distillation baselines for dense prediction: MasKD, DiffKD, Af-DCD, PAD, IntRA-KD.

Each method is a set of pure functions (shapes and units in their docstrings) and small modules;
the registered :class:`~lix.distill.base.Distiller` (lix/distill/methods/, ``kind="feature"``) owns
the trainable parts (connectors, receptive tokens, autoencoder, denoiser, projector, variance head). The
formulas follow the authors' code where it exists (read with the repository and path named in each
docstring) and the paper otherwise (said so where it applies).

Choices common to the five (the same as lix/losses/feature.py, so the baselines compare alike):

* **taps.** Every method here is defined on one map in its segmentation setting, so each defaults
  to ``("decoder",)``, the last feature map before the classifier (the one every family names
  alike: MFNet 16/32 channels at stride 2, SNE-RoadSeg equal channels). A ``taps``
  hyper-parameter overrides it; **several taps: the per-tap losses are summed**, so the default
  weights keep their meaning per tap.
* **labels.** MasKD, DiffKD, Af-DCD and PAD are label-free feature imitations: as in their code
  (and in feature.py) unlabelled pixels are *not* masked out, the teacher's features there still
  carry its (geometric) knowledge. Only IntRA-KD reads the label (its regions are the classes of
  the label map; the ignore label forms no region) and MasKD's token pre-training (a task loss).
  Where a label is needed at feature resolution it is the label padded with the ignore label to
  ``stride * (h, w)`` (MFNet/SNE-RoadSeg pad their input bottom/right, so the padded positions
  become "unlabelled") and then sampled nearest (``[::stride, ::stride]``, PyTorch's
  ``interpolate(mode="nearest")`` for an integer factor).
* **connectors.** A 1x1 conv (with bias) maps the student's channels to the teacher's where they
  differ, nothing where they are equal (MasKD's segmentation code has none, Af-DCD builds its
  ``align`` only for unequal channels, PAD's per-dimension variant likewise); DiffKD always has
  its ``trans`` 1x1 conv as its code does.
* **precision.** Losses are computed in float32.
* **zero when equal.** Methods with learned parts are not 0 at initialisation: MasKD and PAD are 0
  for equal student/teacher maps with identity connectors (equal channels; PAD's variance head
  starts at log-variance 0); IntRA-KD is 0 for equal maps; Af-DCD (a projector of a randomly
  masked map plus an InfoNCE term, > 0 by construction) and DiffKD (noise, denoiser) have no zero.

Defaults (term weights ``w_<term>``):

=========  ==========================================================  =====================================
method     hyper-parameters                                            terms
=========  ==========================================================  =====================================
maskd      8 tokens, 30 pre-training epochs                            maskd 1
diffkd     5 DDIM steps of 1000, AE to Ct/2, 30 pre-training epochs    diffkd 1, diffkd_diffusion 1,
                                                                       diffkd_ae 1
afdcd      tau 0.07, 16 channel groups, pool 4, patch 4, mask 0.75     afdcd_fd 2e-6, afdcd_ctr 0.005
pad        (connector + per-pixel log-variance head)                   pad 1
intra_kd   eps 1e-6 (skewness)                                         intra_kd 1
=========  ==========================================================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.constants import IGNORE_INDEX

__all__ = ["MasKDConfig", "DiffKDConfig", "AfDCDConfig", "IntraKDConfig", "channel_connector", "afdcd_projector",
           "labels_at", "maskd_masks", "dice_diversity", "masked_logits_ce", "maskd_loss",
           "linear_alphas_cumprod", "ddim_refine_timesteps", "ddim_step", "ddim_refine",
           "diffusion_noise_loss", "masked_mimic_loss", "channel_groups", "omni_contrastive_loss", "afdcd_spatial_mask",
           "pad_loss", "region_moments", "intra_affinity", "intra_kd_loss"]


# =========================================================================== hyper-parameters
# Each method's defaults, declared once: the functions below and the registered methods
# (lix/distill/methods/maskd.py, diffkd.py, afdcd.py, intra_kd.py) read them from here. PAD has
# none besides its term weight.
@dataclass(frozen=True)
class MasKDConfig:
    num_tokens: int = 8  # receptive tokens per tap
    pretrain_epochs: int = 30  # token pre-training on the frozen teacher


@dataclass(frozen=True)
class DiffKDConfig:
    inference_steps: int = 5  # DDIM steps run (the low-noise half of a 2x schedule)
    num_train_timesteps: int = 1000
    use_ae: bool = True  # distil in the autoencoder's latent
    ae_channels: int | None = None  # latent width; None: Ct // 2
    pretrain_epochs: int = 30  # autoencoder + denoiser on the frozen teacher
    projector: str = "conv_bn"  # official DiffKD.proj; "conv": a plain 1x1 conv


@dataclass(frozen=True)
class AfDCDConfig:
    tau: float = 0.07  # InfoNCE temperature
    groups: int = 16  # channel groups M
    pool_size: int = 4  # max-pool before the contrast (0: none)
    patch_size: int = 4
    rand_mask: bool = True  # random spatial mask (False: the fixed centre block)
    mask_ratio: float = 0.75  # share of positions dropped
    enhanced_projector: bool = False


@dataclass(frozen=True)
class IntraKDConfig:
    eps: float = 1e-6  # in the skewness's (var + eps)^{3/2}


# =========================================================================== helpers
def channel_connector(c_in: int, c_out: int) -> nn.Module:
    """1x1 conv (with bias) from the student's to the teacher's channels; identity if equal."""
    return nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, kernel_size=1)


def labels_at(target: torch.Tensor, size: tuple[int, int], stride: int | None = None,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The label map (N, H, W) int64 at feature resolution ``size`` = (h, w) -> (N, h, w) int64.

    With the tap's ``stride`` and ``stride * (h, w)`` >= (H, W) (the models pad their input
    bottom/right up to a multiple of the stride), the label is first padded bottom/right with
    ``ignore_index`` to ``stride * (h, w)`` and then sampled nearest, i.e. the top-left label of
    each stride x stride block (what ``F.interpolate(mode="nearest")`` does for an integer factor).
    Otherwise plain nearest interpolation to (h, w)."""
    h, w = size
    H, W = target.shape[-2:]
    if stride and h * stride >= H and w * stride >= W:
        padded = F.pad(target, (0, w * stride - W, 0, h * stride - H), value=ignore_index)
        return padded[:, ::stride, ::stride][:, :h, :w].long()
    return F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()


def _to_label_grid(x: torch.Tensor, stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """A map at feature resolution (N, K, h, w) -> (N, K, H, W) on the label grid: bilinear
    upsampling by ``stride`` (to the padded input size), then the bottom/right padding cropped."""
    h, w = x.shape[-2:]
    H, W = out_hw
    if h * stride >= H and w * stride >= W:
        up = F.interpolate(x, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
        return up[..., :H, :W]
    return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)


# =========================================================================== MasKD
def maskd_masks(feat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Receptive-token masks: feat (N, C, h, w), tokens (T, C) -> (N, T, h, w) in (0, 1),
    ``sigmoid(token . feature)`` at every position (no scaling, as the official ``forward_mask``)."""
    n, c, h, w = feat.shape
    logits = torch.einsum("tc,ncp->ntp", tokens.float(), feat.float().reshape(n, c, h * w))
    return logits.sigmoid().reshape(n, tokens.shape[0], h, w)


def dice_diversity(masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean Dice coefficient between the masks of different tokens (the official ``dice_coeff``,
    minimised during pre-training to make the masks diverse).

    masks (N, T, h, w) -> scalar in [0, 1]: mean over images and ordered pairs i != j of
    2 <m_i, m_j> / (|m_i|^2 + |m_j|^2 + 2 eps)."""
    n, t = masks.shape[:2]
    m = masks.float().reshape(n, t, -1)
    inner = m @ m.transpose(1, 2)  # (N, T, T)
    sq = (m * m).sum(-1) + eps
    dice = 2 * inner / (sq[:, :, None] + sq[:, None, :])
    off = ~torch.eye(t, dtype=torch.bool, device=m.device)
    return dice[:, off].mean() if t > 1 else dice.sum() * 0.0


def masked_logits_ce(masks: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, stride: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """MasKD's pre-training task loss here: cross-entropy of the mask-weighted teacher logits.

    masks (N, T, h, w) at the tap, logits (N, K, H, W) (the frozen teacher's), target (N, H, W) ->
    scalar (nats, mean over labelled pixels; 0 without any): the masks are summed over tokens,
    upsampled bilinearly by ``stride`` to the label grid (:func:`_to_label_grid`) and multiply the
    logits, ``CE(sum_t m_t * z, y)``. This is exactly the official segmentation pre-training
    (hunto/MasKD ``segmentation/train_mask_module.py``: ``outputs[0], mask_loss =
    mask_module(outputs[0])``, ``MaskModule.forward_train`` = ``sum_t x * m_t``, then the
    ``SegCrossEntropyLoss``) when the tap is the logits themselves; for a feature tap the masks
    come from the tap and weight the logits the teacher's frozen head produced from it."""
    weight = _to_label_grid(masks.float().sum(1, keepdim=True), stride, logits.shape[-2:])
    ce = F.cross_entropy(weight * logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return ce / (target != ignore_index).sum().clamp_min(1)


def maskd_loss(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Masked distillation (official ``MasKDLoss.forward``, segmentation version).

    student (N, C, h, w) (already aligned to the teacher's channels), teacher (N, C, h, w),
    masks (N, T, h, w) ->
    0.5 * mean_{n, t, c} [ sum_p (m_t(p) (s_c(p) - t_c(p)))^2 / (sum_p m_t(p) + eps) ]
    (squared feature units)."""
    n, c = student.shape[:2]
    m = masks.float().flatten(2)  # (N, T, P)
    sq = (student.float() - teacher.float()).pow(2).reshape(n, c, -1)  # (N, C, P)
    num = torch.einsum("ntp,ncp->ntc", m * m, sq)  # sum_p (m (s - t))^2, without the (N, T, C, P) product
    den = m.sum(2).unsqueeze(-1) + eps  # (N, T, 1)
    return 0.5 * (num / den).mean()


# =========================================================================== DiffKD
def linear_alphas_cumprod(num_train_timesteps: int = DiffKDConfig.num_train_timesteps, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM/DDIM linear schedule: (num_train_timesteps,) float32 cumulative products of
    1 - beta_t, beta linear from ``beta_start`` to ``beta_end`` (official ``DDIMScheduler``
    defaults, ``beta_schedule="linear"``)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_refine_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The timesteps DiffKD denoises the student feature through: the scheduler is set to
    ``2 * steps`` DDIM steps and only the second (low-noise) half is run (official
    ``DDIMPipeline.__call__``). E.g. 1000, 5 -> [400, 300, 200, 100, 0]."""
    if steps < 1:
        raise ValueError(f"diffkd: inference steps must be >= 1, got {steps}")
    ratio = num_train_timesteps // (2 * steps)
    ts = [i * ratio for i in range(2 * steps)][::-1]
    return ts[len(ts) // 2:]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_t: float | torch.Tensor,
              alpha_prev: float | torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0, no clipping; Song et al. Eq. 12 as in the official
    ``DDIMScheduler.step``): x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t),
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps. a = cumulative alpha products."""
    x0 = (x - (1.0 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
    return alpha_prev ** 0.5 * x0 + (1.0 - alpha_prev) ** 0.5 * eps


def ddim_refine(x: torch.Tensor, eps_model, alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """Denoise ``x`` (N, C, h, w) with ``eps_model(x, t)`` (t an (N,) int64 tensor) through
    :func:`ddim_refine_timesteps`; the step from timestep t goes to t - T // (2 steps) (alpha 1 below
    0, ``set_alpha_to_one``), as the official pipeline. -> (N, C, h, w)."""
    num_train = alphas_cumprod.shape[0]
    ratio = num_train // (2 * steps)
    for t in ddim_refine_timesteps(num_train, steps):
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        prev = t - ratio
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[prev] if prev >= 0 else alphas_cumprod.new_tensor(1.0)
        x = ddim_step(x, eps, a_t, a_prev)
    return x


def diffusion_noise_loss(eps_model, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                         t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The denoiser's training loss (official ``DiffKD.ddim_loss``): x0 (N, C, h, w) clean
    (teacher) feature, t (N,) timesteps (default uniform in [0, T)), noise (default N(0, 1)) ->
    mean((eps_model(sqrt(a_t) x0 + sqrt(1 - a_t) noise, t) - noise)^2) (dimensionless)."""
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, alphas_cumprod.shape[0], (n,), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    a = alphas_cumprod[t].to(x0.dtype).view(n, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    return F.mse_loss(eps_model(noisy, t).float(), noise.float())


class _Bottleneck(nn.Module):
    """Residual bottleneck of the official ``diffkd_modules.Bottleneck``: 1x1 -> BN -> ReLU ->
    3x3 -> BN -> ReLU -> 1x1 -> BN, plus the input (hidden = channels // reduction, at least 1).
    Every conv that feeds a BN here has no bias: the official ones have one, which the BN cancels
    (same functions; its gradient is exactly 0, a dead parameter)."""

    def __init__(self, c_in: int, c_out: int, reduction: int = 4):
        super().__init__()
        hid = max(1, c_in // reduction)
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU(),
            nn.Conv2d(hid, hid, 3, padding=1, bias=False), nn.BatchNorm2d(hid), nn.ReLU(),
            nn.Conv2d(hid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


class DiffusionDenoiser(nn.Module):
    """The light noise predictor of the official ``DiffusionModel`` (kernel_size 3): a learned
    time embedding (1280 x C) added to the noisy map, two bottlenecks, 1x1 conv, BN (convs before
    a BN without bias, see :class:`_Bottleneck`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.time_embedding = nn.Embedding(1280, channels)
        self.pred = nn.Sequential(_Bottleneck(channels, channels), _Bottleneck(channels, channels),
                                  nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.pred(x + self.time_embedding(t.long())[:, :, None, None])


class NoiseAdapter(nn.Module):
    """Adaptive noise matching (official ``NoiseAdapter``, kernel_size 3): a bottleneck
    (reduction 8), global average pooling, Linear(C, 2), softmax -> gamma (N,) in (0, 1), the
    weight of the student feature in its noisy start ``gamma * x + (1 - gamma) * noise``."""

    def __init__(self, channels: int):
        super().__init__()
        self.feat = nn.Sequential(_Bottleneck(channels, channels, reduction=8), nn.AdaptiveAvgPool2d(1))
        self.pred = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.feat(x).flatten(1)).softmax(1)[:, 0]


class LinearAutoEncoder(nn.Module):
    """The official ``AutoEncoder``: encoder 1x1 conv + BN to the latent, decoder 1x1 conv back
    (the encoder conv without the bias the BN cancels, see :class:`_Bottleneck`)."""

    def __init__(self, channels: int, latent_channels: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, latent_channels, 1, bias=False),
                                     nn.BatchNorm2d(latent_channels))
        self.decoder = nn.Conv2d(latent_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        return hidden, self.decoder(hidden)


# =========================================================================== Af-DCD
def masked_mimic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Af-DCD's masked feature mimicking term (official ``get_dis_loss``): pred = the projector's
    output on the randomly masked, aligned student map, target = the teacher map, both
    (N, C, h, w) -> sum of squared differences / N (squared feature units per image)."""
    return (pred.float() - target.float()).pow(2).sum() / pred.shape[0]


def channel_groups(channels: int, groups: int) -> torch.Tensor:
    """(M, g) int64 channel indices of M = min(groups, C) contiguous, as-equal-as-possible groups
    (``torch.tensor_split`` sizes: the first C mod M groups one channel larger), the shorter ones
    padded with index C (a zero channel). For C divisible by M: the official ``split(C // M)``."""
    m = max(1, min(groups, channels))
    parts = torch.tensor_split(torch.arange(channels), m)
    g = max(len(p) for p in parts)
    out = torch.full((m, g), channels, dtype=torch.long)
    for i, p in enumerate(parts):
        out[i, :len(p)] = p
    return out


def _ctr_tokens(x: torch.Tensor, index: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(N, C, H, W) with H % ph == W % pw == 0 -> (N * H/ph * W/pw, ph * pw * M, g): per spatial
    patch, one token per (position, channel group), token index = position * M + group, as the
    official ``_to_ctr_format``."""
    n, c, h, w = x.shape
    m, g = index.shape
    xz = torch.cat([x, x.new_zeros(n, 1, h, w)], dim=1)[:, index.reshape(-1).to(x.device)]  # (N, M*g, H, W)
    xz = xz.reshape(n, m, g, h // ph, ph, w // pw, pw)
    return xz.permute(0, 3, 5, 4, 6, 1, 2).reshape(n * (h // ph) * (w // pw), ph * pw * m, g)


def omni_contrastive_loss(pred: torch.Tensor, target: torch.Tensor, tau: float = AfDCDConfig.tau,
                          groups: int = AfDCDConfig.groups, pool_size: int = AfDCDConfig.pool_size,
                          patch_size: int = AfDCDConfig.patch_size) -> torch.Tensor:
    """Af-DCD's omni-contrastive loss (official ``get_omni_contrastive_loss``, city/ADE/VOC branch).

    pred (student side, after the projector) and target (teacher), (N, C, h, w) ->
    scalar (nats per pooled position and image, summed over channel groups):

    1. both maps are max-pooled by ``pool_size`` (0 = no pooling);
    2. the pooled map is cut into ``patch_size`` x ``patch_size`` spatial patches and the
       channels into M = ``groups`` groups; each (position, group) of a patch is a token, the
       vector of that group's channels there;
    3. per patch, similarities sim(i, j) = -||pred_i - target_j||_1 between the L = P * M
       tokens (P positions); for anchor i the positive is target_i (same position and group), the
       negatives are all target tokens of *other* groups (any position of the patch);
    4. loss = sum over anchors of -log softmax([sim(i,i), negatives] / tau)[0], divided by the
       number of pooled positions h' w' and by N.

    Small-map adaptations (the official code assumes the pooled map divides into whole patches):
    the pooling kernel is clamped to the map (min(pool, h), min(pool, w)), the patch to the pooled
    map, and the pooled map cropped to whole patches (bottom/right rows dropped, as the official
    CamVid branch crops to 44 x 44); channel counts not divisible by M use uneven groups
    (:func:`channel_groups`, zero-padded: zeros add nothing to an L1 distance)."""
    p, q = pred.float(), target.float()
    if pool_size:
        kh, kw = min(pool_size, p.shape[2]), min(pool_size, p.shape[3])
        p = F.max_pool2d(p, (kh, kw), (kh, kw))
        q = F.max_pool2d(q, (kh, kw), (kh, kw))
    n, c, h, w = p.shape
    ph, pw = min(patch_size, h), min(patch_size, w)
    h2, w2 = h // ph * ph, w // pw * pw
    p, q = p[:, :, :h2, :w2], q[:, :, :h2, :w2]
    index = channel_groups(c, groups)
    m = index.shape[0]
    tp, tq = _ctr_tokens(p, index, ph, pw), _ctr_tokens(q, index, ph, pw)
    sim = -torch.cdist(tp, tq, p=1)  # (B', L, L)
    L = tp.shape[1]
    group = torch.arange(L, device=sim.device) % m
    negative = group[:, None] != group[None, :]
    positives = sim.diagonal(dim1=1, dim2=2)  # (B', L)
    negatives = sim[:, negative].reshape(sim.shape[0], L, -1)
    logits = torch.cat([positives[..., None], negatives], dim=2) / tau
    ce = torch.logsumexp(logits, dim=2) - logits[..., 0]
    return ce.sum() / (h2 * w2) / n


class EnhancedProjector(nn.Module):
    """The official ``EnhancedProjector``: two conv3x3+ReLU blocks, each followed by its own
    3x3 adaptor conv, outputs averaged."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.block_2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.adaptor_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adaptor_2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.block_1(x)
        x2 = self.block_2(x1)
        return (self.adaptor_1(x1) + self.adaptor_2(x2)) / 2.0


def afdcd_projector(channels: int, enhanced: bool) -> nn.Module:
    """Af-DCD's projector at the teacher's width: conv3x3-ReLU-conv3x3, or :class:`EnhancedProjector`."""
    if enhanced:
        return EnhancedProjector(channels)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=1))


def afdcd_spatial_mask(n: int, h: int, w: int, mask_ratio: float, random: bool = True,
                       device=None) -> torch.Tensor:
    """(N, 1, h, w) float 0/1 keep-mask of the masked feature mimicking: random (each position
    dropped with probability ``mask_ratio``, official ``rand_mask``) or the fixed centre block
    (rows h//3..2h//3, columns w//3..2w//3 dropped)."""
    if random:
        return (torch.rand(n, 1, h, w, device=device) <= 1.0 - mask_ratio).float()
    mat = torch.ones(n, 1, h, w, device=device)
    mat[:, :, h // 3:2 * h // 3, w // 3:2 * w // 3] = 0
    return mat


# =========================================================================== PAD
def pad_loss(student: torch.Tensor, teacher: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Prime-aware (uncertainty-weighted) feature regression, per pixel.

    student (N, C, h, w) (aligned to the teacher's channels), teacher (N, C, h, w),
    log_var (N, 1, h, w) the predicted log sigma^2 of each pixel ->
    mean over pixels of [ mean_c (s_c - t_c)^2 / sigma^2 + log sigma^2 ]
    (twice the per-element Gaussian negative log-likelihood without its constant; squared
    feature units / sigma^2 + nats). Pixels with a large predicted variance (hard, "non-prime")
    are down-weighted; the log-variance term stops sigma from growing without bound. For equal
    maps and log_var = 0 the loss is 0 (for equal maps it is unbounded below as sigma -> 0, as any
    Gaussian NLL)."""
    v = log_var.float()
    sq = (student.float() - teacher.float()).pow(2).mean(dim=1, keepdim=True)
    return (sq * torch.exp(-v) + v).mean()


# =========================================================================== IntRA-KD
def region_moments(feat: torch.Tensor, labels: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX,
                   eps: float = IntraKDConfig.eps) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region moment vectors (IntRA-KD's AOI-grounded moment pooling, with hard regions).

    feat (N, C, h, w), labels (N, h, w) int64 at the same resolution (``ignore_index`` and ids
    outside [0, n_classes) belong to no region) -> (moments (N, K, 3C), counts (N, K)) with
    K = n_classes: for each class k present in image n, over its pixels p,
    mean mu_c = avg_p f_c(p), variance var_c = avg_p (f_c(p) - mu_c)^2 (population),
    skewness skew_c = avg_p (f_c(p) - mu_c)^3 / (var_c + eps)^{3/2};
    moments = [mu, var, skew] concatenated (feature units, squared units, dimensionless); rows of
    absent classes are 0 (count 0). Centred values are taken against each pixel's own region mean
    (exact, no E[x^2] - mu^2 cancellation)."""
    n, c, h, w = feat.shape
    f = feat.float().reshape(n, c, h * w)
    lab = labels.reshape(n, h * w)
    valid = (lab >= 0) & (lab < n_classes) & (lab != ignore_index)
    onehot = F.one_hot(lab.clamp(0, n_classes - 1), n_classes).float() * valid[..., None].float()  # (N, P, K)
    counts = onehot.sum(1)  # (N, K)
    denom = counts.clamp_min(1.0)[:, None, :]
    mean = (f @ onehot) / denom  # (N, C, K)
    own_mean = torch.gather(mean, 2, lab.clamp(0, n_classes - 1)[:, None, :].expand(n, c, h * w))
    d = (f - own_mean) * valid[:, None, :].float()
    var = (d.pow(2) @ onehot) / denom
    m3 = (d.pow(3) @ onehot) / denom
    skew = m3 / (var + eps).pow(1.5)
    return torch.cat([mean, var, skew], dim=1).transpose(1, 2), counts


def intra_affinity(moments: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(N, K, D) moment vectors -> (N, K, K) cosine similarities (0 for an all-zero vector)."""
    v = F.normalize(moments, p=2, dim=-1, eps=eps)
    return v @ v.transpose(1, 2)


def intra_kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, n_classes: int,
                  ignore_index: int = IGNORE_INDEX, eps: float = IntraKDConfig.eps) -> torch.Tensor:
    """Inter-region affinity distillation at one tap.

    student (N, Cs, h, w), teacher (N, Ct, h, w) (channel counts may differ: only the graphs are
    compared), labels (N, h, w) at feature resolution -> scalar (squared cosine differences,
    in [0, 4]): per image with K_n >= 2 regions (classes present, the ignore label excluded),
    (1 / K_n^2) sum_{i, j} (A^S_ij - A^T_ij)^2 with A = :func:`intra_affinity` of the
    :func:`region_moments`; averaged over those images (0, in the graph, if there is none: an
    image with one region has no inter-region affinity)."""
    ms, counts = region_moments(student, labels, n_classes, ignore_index, eps)
    mt, _ = region_moments(teacher, labels, n_classes, ignore_index, eps)
    present = counts > 0
    pair = (present[:, :, None] & present[:, None, :]).float()
    k = present.sum(1).float()
    sq = ((intra_affinity(ms) - intra_affinity(mt)).pow(2) * pair).sum((1, 2)) / k.clamp_min(1.0).pow(2)
    use = (k >= 2).float()
    return (sq * use).sum() / use.sum().clamp_min(1.0)
