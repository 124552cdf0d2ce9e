"""ARFD: adaptively-recalibrated feature distillation (LIX, Sect. III-C; Table V).

Reference: S. Guo, Z. Long, Z. Wu, Q. Chen, I. Pitas, R. Fan, "LIX: Implicitly Infusing Spatial
Geometric Prior Knowledge into Visual Semantic Segmentation for Autonomous Driving",
arXiv:2403.08215 (2024; IEEE TIP 2025). CKA: Kornblith et al., ICML 2019, arXiv:1905.00414
(lix/losses/cka.py). Nadaraya–Watson kernel regression: Nadaraya 1964, Watson 1964. The authors'
code was not available to us; what follows is our reading of eq. 12–14, with every choice named.

Per tapped stage pair (the trainer's taps; ``taps=None`` -> the model class's ``default_taps``):

1. **Alignment** (eq. 12). The student's map: F̃_s = ReLU(BN(Conv1×1(F_s))): a 1×1 convolution
   without bias maps its C_s channels to the teacher's C_t, then BatchNorm2d(C_t), then ReLU.
   Why this order and no conv bias: everything after the aligner (kernel regression with a
   distance kernel, then CKA's centring) is invariant to a per-channel shift, so with ReLU
   before BN the BN's shift would never receive a gradient (and a conv bias before BN is
   cancelled by BN's mean): in this order every parameter is used. Applied at every tap, also
   where C_s = C_t (SNE-RoadSeg). The teacher's map, as the prose says that "the activated and
   normalized features from the teacher and student networks share a more similar feature
   representation space": ReLU(BN(F_t)) with a parameter-free BatchNorm (batch statistics, no
   affine, no running state; a module so that SyncBatchNorm reaches it under DDP), detached
   (``teacher_norm="bn_relu"``, default; ``"none"``: the teacher's map as it comes, the former
   behaviour). Both sides are then standardised per channel, so neither dominates by magnitude.
   If the two maps differ in size, the larger is average-pooled to the smaller (adaptive average
   pooling); in this repository they are always equal.
2. **Recalibration by kernel regression** (eq. 13–14), our reading: each map is re-expressed by a
   Nadaraya–Watson smoother *in its own feature space* — every pixel's feature vector is replaced
   by the kernel-weighted mean of the map's feature vectors, the weights K(f_i, f_j) normalised
   over j = 1..n (n = h·w, all pixels of the same image, j = i included):

       f̂_i = Σ_j K(f_i, f_j) f_j / Σ_j K(f_i, f_j).

   It is applied alike to the aligned student map and to the teacher map (each with its own
   bandwidths), so a student equal to the teacher gives identical recalibrated maps (loss 0): the
   recalibration pulls each pixel toward the pixels it resembles (one mean-shift step), so the
   consistency below compares the region-level structure of the two maps rather than pixel noise.
   (The other reading — the student's features regressed onto the teacher's — would not be
   minimised by a student equal to the teacher; :func:`kernel_regression` takes separate
   queries, keys and values and supports it.)
   Kernels (``kernel``, Table V): ``"laplace"`` (default) K = exp(−‖x − y‖/σ); ``"gaussian"``
   K = exp(−‖x − y‖²/(2σ²)); ``"linear"`` K = 1 + cos(x, y) (the linear kernel on unit-normalised
   features, shifted by 1 so that the weights are non-negative and their sum cannot vanish; no
   bandwidth); ``"none"`` no recalibration.
   **Bandwidth** (eq. 14 was lost in our copy of the text; ``bandwidth_rule``, one σ per image
   and map, detached): ``"perplexity"`` (default) the σ at which each pixel's kernel weights over
   the image (itself included) have perplexity ``bandwidth_k`` = 8 on average, i.e. each pixel
   is smoothed over about 8 pixels whatever the dimension and scale of the features (t-SNE's
   calibration, by bisection on log σ over 64 sampled pixels: :func:`perplexity_bandwidth`);
   ``"median"`` the median pairwise distance (the median heuristic); ``"rms"`` the RMS pairwise
   distance sqrt(2 Σ_c Var_c) (this module's former default). × ``bandwidth``. Why: a σ of the
   size of the typical pairwise distance averages every pixel with most of the image. On real
   MFNet taps (benchmarks/arfd_recalibration.py, vKITTI2, a 6-epoch teacher and a 3-epoch
   student, fresh aligner) the RMS and median rules keep 0.2–4 % of a map's variance (rgb4
   0.2 %, fused 0.4–0.6 %, decoder 3.3–4.1 %); a local σ_i = the distance to the 7th nearest
   pixel keeps 58–62 % at the 32-channel decoder but 0.9–1.5 % at rgb4 and fused (96 and 132
   channels, where all distances concentrate near one value); perplexity 8 keeps 61–98 %
   (rgb4 77–80 %, fused 61–67 %, decoder 98 %). The choice of 8 rests on that share alone
   (≥ 60 % at every tap; 16 drops fused to 45–51 %), not on any accuracy. The share kept per
   tap is logged during training (dvclive ``train/diag.arfd.kept.<tap>.<side>``).
   Distances are computed from the matrix-product expansion by default (``exact_distances``:
   from the differences, exactly 0 on the diagonal and chunk-invariant, slower; see
   ``_nw_chunk``).
3. **Consistency** (``consistency``): linear CKA per image over its pixels (n samples, d channels;
   feature-space form, default), or cosine / Euclidean / Pearson (lix/losses/cka.py).
   L_FD (eq. 17) = the mean over the N tapped stage pairs (``reduction="mean"``, the paper's 1/N,
   so λ2 means the same for MFNet's 3 taps and SNE-RoadSeg's 5; ``"sum"`` the former behaviour)
   of the mean over the images of the global batch of (1 − CKA) (or the other measure's loss).

Memory: the kernel matrix is n × n per image. :func:`kernel_regression` processes ``chunk``
query pixels at a time (exact) and wraps each chunk in ``torch.utils.checkpoint`` when a gradient
is needed, so neither the forward nor the backward keeps more than chunk × n of it: peak memory
is linear in n for a fixed chunk (tested). The work is still O(n²·d); ``max_pixels`` (default
1024, our choice for tractability: e.g. MFNet's decoder tap at stride 2 has ~10⁵ pixels on a
KITTI image; at 4096 the kernel regression took a quarter of a LIX step of MFNet on the CPU
(cdist forward + backward 5.2 s of 20.8 s, torch.profiler, 2 cores, loaded), and 1024 pixels
need no chunking at the default ``chunk``, hence no recomputation in the backward) average-pools
both maps of a tap by the smallest integer factor s with
ceil(h/s)·ceil(w/s) <= ``max_pixels`` before recalibration (``None``: never).

The losses run in float32 with autocast disabled (float64 stays float64); the aligners run
under the trainer's autocast like the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lix.losses._common import as_float, check_choice, full_precision, use_reference
from lix.losses.cka import CONSISTENCY, consistency_loss
from lix.losses.nw import perplexity_bisection, perplexity_target, self_kernel_regression
from lix.reduce import global_mean

KERNELS = ("laplace", "gaussian", "linear", "none")
BANDWIDTH_RULES = ("perplexity", "median", "rms")
TEACHER_NORMS = ("bn_relu", "none")
REDUCTIONS = ("mean", "sum")
EPS = 1e-12
MEDIAN_SAMPLE = 256  # pixels per image whose pairwise distances give the median heuristic
PERPLEXITY_SAMPLE = 64  # query pixels per image on which the perplexity bandwidth is calibrated
PERPLEXITY_STEPS = 12  # bisection steps on log σ over [e^-8, e^4] × the median distance (σ to 0.3 %)


@dataclass(frozen=True)
class ARFDConfig:
    """ARFD's hyper-parameters, each default declared here once (the ``arfd`` and ``lix`` methods
    and the functions below read them; see the module docstring for each); checked on creation."""

    kernel: str = "laplace"  # KERNELS (eq. 13; Table V)
    bandwidth: float = 1.0  # a multiplier of the bandwidth rule's σ
    bandwidth_rule: str = "perplexity"  # BANDWIDTH_RULES
    bandwidth_k: float = 8.0  # the perplexity target: pixels each pixel is smoothed over
    teacher_norm: str = "bn_relu"  # TEACHER_NORMS
    consistency: str = "cka"  # CONSISTENCY (Table V)
    reduction: str = "mean"  # REDUCTIONS: L_FD over the taps (eq. 17's 1/N)
    chunk: int | None = 1024  # query pixels per kernel-regression block (memory, not results)
    max_pixels: int | None = 1024  # each tap pooled to at most this many pixels first (None: never)
    exact_distances: bool = False  # distances from the differences (chunk-invariant, slower)

    def __post_init__(self):
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("consistency", self.consistency, CONSISTENCY)
        check_choice("bandwidth_rule", self.bandwidth_rule, BANDWIDTH_RULES)
        check_choice("teacher_norm", self.teacher_norm, TEACHER_NORMS)
        check_choice("reduction", self.reduction, REDUCTIONS)
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth!r}")
        if not float(self.bandwidth_k) > 1:
            raise ValueError(f"bandwidth_k must be > 1 (the pixels each one is smoothed over), "
                             f"got {self.bandwidth_k!r}")
        if self.chunk is not None and int(self.chunk) < 1:
            raise ValueError(f"chunk must be a positive integer or None, got {self.chunk!r}")
        if self.max_pixels is not None and int(self.max_pixels) < 1:
            raise ValueError(f"max_pixels must be a positive integer or None, got {self.max_pixels!r}")


def rms_pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """sqrt(mean_{i,j} ‖x_i − x_j‖²) = sqrt(2 Σ_c Var_c) per image (population variances):
    x (N, n, d) -> (N,), detached."""
    with torch.no_grad():
        return torch.sqrt(2.0 * x.var(dim=1, unbiased=False).sum(dim=1))


def median_pairwise_distance(x: torch.Tensor, sample: int = MEDIAN_SAMPLE) -> torch.Tensor:
    """The median heuristic: the (lower) median of the pairwise distances ‖x_i − x_j‖ (i ≠ j) per image,
    over ``sample`` evenly spaced pixels when n is larger. x (N, n, d) -> (N,), detached."""
    with torch.no_grad():
        n = x.shape[1]
        idx = torch.linspace(0, n - 1, min(n, sample), device=x.device).round().long()
        xs = x[:, idx]
        dist = torch.cdist(xs, xs, compute_mode="donot_use_mm_for_euclid_dist")
        m = xs.shape[1]
        off = ~torch.eye(m, dtype=torch.bool, device=x.device)
        return dist[:, off].median(dim=1).values if m > 1 else dist.flatten(1).amax(1)


def perplexity_bandwidth(x: torch.Tensor, perplexity: float, kernel: str = ARFDConfig.kernel,
                         sample: int = PERPLEXITY_SAMPLE, steps: int = PERPLEXITY_STEPS) -> torch.Tensor:
    """:func:`perplexity_bandwidth_reference`'s σ (N,), detached, its bisection's entropies computed
    with a third of the passes (:func:`lix.losses.nw.perplexity_bisection`; the reference runs
    under ``LIX_REFERENCE_LOSSES=1``)."""
    if use_reference():
        return perplexity_bandwidth_reference(x, perplexity, kernel, sample, steps)
    with torch.no_grad():
        n = x.shape[1]
        idx = torch.linspace(0, n - 1, min(n, sample), device=x.device).round().long()
        dist = torch.cdist(x[:, idx], x, compute_mode="use_mm_for_euclid_dist")   # (N, m, n)
        if kernel == "gaussian":
            dist = dist.square()
        sigma = perplexity_bisection(dist, perplexity_target(perplexity, n), steps)
        return sigma if kernel != "gaussian" else (sigma / 2.0).sqrt()


def perplexity_bandwidth_reference(x: torch.Tensor, perplexity: float, kernel: str = ARFDConfig.kernel,
                                   sample: int = PERPLEXITY_SAMPLE, steps: int = PERPLEXITY_STEPS) -> torch.Tensor:
    """One bandwidth σ per image such that the kernel weights of a pixel over the image's pixels
    (itself included), w_ij = K(x_i, x_j) / Σ_j K(x_i, x_j), have on average the perplexity
    exp(H(w_i·)) = ``perplexity``: each pixel is smoothed over about that many pixels, whatever
    the dimension or scale of the features (the calibration of t-SNE, van der Maaten & Hinton
    2008). The mean entropy runs over ``sample`` evenly spaced query pixels; bisection on log σ
    (``steps`` halvings of the bracket [e^-8, e^4] × the median distance). x (N, n, d) -> (N,),
    detached. Needs 1 < perplexity < n."""
    with torch.no_grad():
        n = x.shape[1]
        idx = torch.linspace(0, n - 1, min(n, sample), device=x.device).round().long()
        dist = torch.cdist(x[:, idx], x, compute_mode="use_mm_for_euclid_dist")   # (N, m, n)
        if kernel == "gaussian":
            dist = dist.square()
        scale = dist.flatten(1).median(dim=1).values.clamp_min(1e-12)
        lo = torch.full_like(scale, -8.0)
        hi = torch.full_like(scale, 4.0)
        target = math.log(min(max(float(perplexity), 1.0 + 1e-6), n - 1e-6))
        for _ in range(steps):
            mid = (lo + hi) / 2
            z = -dist / (scale * mid.exp())[:, None, None]
            lse = z.logsumexp(dim=2, keepdim=True)
            entropy = (lse.squeeze(2) - ((z - lse).exp() * z).sum(dim=2)).mean(dim=1)  # H = lse − Σ w z
            too_flat = entropy > target          # too many neighbours: a smaller bandwidth
            hi = torch.where(too_flat, mid, hi)
            lo = torch.where(too_flat, lo, mid)
        sigma = scale * ((lo + hi) / 2).exp()
        # the kernels use exp(-d/σ) (laplace) and exp(-d²/(2σ²)) (gaussian): σ in distance units
        return sigma if kernel != "gaussian" else (sigma / 2.0).sqrt()


def _nw_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str, sigma: torch.Tensor | None,
              exact: bool = ARFDConfig.exact_distances, self_offset: int | None = None) -> torch.Tensor:
    """Nadaraya–Watson for one chunk of queries: q (N, m, d), k (N, n, d), v (N, n, dv) -> (N, m, dv).
    sigma (N, 1, 1) for laplace/gaussian. ``self_offset``: the queries are keys[offset:offset+m]
    (recalibration of a map by itself), whose distance to themselves is set to exactly 0."""
    if kernel == "linear":
        kw = 1.0 + F.normalize(q, dim=2, eps=1e-8) @ F.normalize(k, dim=2, eps=1e-8).transpose(1, 2)
        return (kw @ v) / kw.sum(dim=2, keepdim=True).clamp_min(EPS)
    # exact: direct differences, not the |q|² + |k|² − 2 q·k expansion: exact 0 on the diagonal
    # and independent of the chunking, but 8-10x slower on the CPU (8 x 864 x 32 pixels: 86 ms vs
    # 11 ms). The expansion's cancellation error is largest at the diagonal (~0.02-0.04 in distance
    # for features whose pairwise distances are ~20-50), which matters once the bandwidth is of
    # the order of the nearest-neighbour distance (the perplexity rule): for a map recalibrated by
    # itself the diagonal is therefore set to exactly 0 (``self_offset``), after which chunked and
    # unchunked results agree to float32 rounding (tested). cdist's gradient where q_i = k_j is 0
    # either way (its backward uses the differences).
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist"
    dist = torch.cdist(q, k, compute_mode=mode)
    if self_offset is not None and not exact:  # the expansion's cancellation error is largest there
        m = q.shape[1]
        eye = torch.zeros(m, k.shape[1], dtype=torch.bool, device=q.device)
        eye[torch.arange(m), torch.arange(self_offset, self_offset + m)] = True
        dist = dist.masked_fill(eye, 0.0)
    if kernel == "laplace":
        logits = -dist / sigma
    elif kernel == "gaussian":
        logits = -dist.square() / (2.0 * sigma * sigma)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return torch.softmax(logits, dim=2) @ v  # K / sum_j K, computed stably


@full_precision
def kernel_regression(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, kernel: str = ARFDConfig.kernel,
                      sigma: torch.Tensor | float | None = None, chunk: int | None = ARFDConfig.chunk,
                      exact: bool = ARFDConfig.exact_distances) -> torch.Tensor:
    """Nadaraya–Watson: out_i = Σ_j K(query_i, keys_j) values_j / Σ_j K(query_i, keys_j).

    query (N, m, d), keys (N, n, d), values (N, n, dv) -> (N, m, dv). ``sigma``: bandwidth, a
    float or (N,) tensor (laplace/gaussian; unused for linear). ``chunk``: query pixels per block
    (None: all at once, O(m·n) memory kept for the backward); with a gradient each block is
    checkpointed, so peak memory is O(chunk·n + (m + n)·d). ``kernel="none"`` returns ``query``.
    ``exact``: distances from the differences (chunk-invariant to rounding, slower) instead of the
    matrix-product expansion (see ``_nw_chunk``)."""
    check_choice("kernel", kernel, KERNELS)
    if kernel == "none":
        return query
    if query.dim() != 3 or keys.dim() != 3 or values.dim() != 3 or keys.shape[:2] != values.shape[:2] \
            or query.shape[0] != keys.shape[0] or query.shape[2] != keys.shape[2]:
        raise ValueError(f"expected query (N, m, d), keys (N, n, d), values (N, n, dv), got {tuple(query.shape)}, "
                         f"{tuple(keys.shape)}, {tuple(values.shape)}")
    s = None
    if kernel in ("laplace", "gaussian"):
        if sigma is None:
            raise ValueError(f"kernel {kernel!r} needs a bandwidth sigma")
        s = torch.as_tensor(sigma, dtype=query.dtype, device=query.device).detach()
        s = s.reshape(-1, 1, 1).expand(query.shape[0], 1, 1).clamp_min(1e-6)
    m = query.shape[1]
    is_self = query is keys
    if chunk is None or chunk >= m:
        if is_self and values is query and kernel != "linear" and not exact and not use_reference():
            return self_kernel_regression(query, kernel, s)  # the same numbers, a third of the passes
        return _nw_chunk(query, keys, values, kernel, s, exact, 0 if is_self else None)
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, keys, values))
    out = []
    for start in range(0, m, int(chunk)):
        qc = query[:, start:start + int(chunk)]
        offset = start if is_self else None
        if need_grad:
            out.append(checkpoint(_nw_chunk, qc, keys, values, kernel, s, exact, offset, use_reentrant=False,
                                  preserve_rng_state=False))  # nothing random inside
        else:
            out.append(_nw_chunk(qc, keys, values, kernel, s, exact, offset))
    return torch.cat(out, dim=1)


def recalibrate(x: torch.Tensor, kernel: str = ARFDConfig.kernel, bandwidth: float = ARFDConfig.bandwidth,
                chunk: int | None = ARFDConfig.chunk, exact: bool = ARFDConfig.exact_distances,
                bandwidth_rule: str = ARFDConfig.bandwidth_rule, bandwidth_k: float = ARFDConfig.bandwidth_k
               ) -> torch.Tensor:
    """Eq. 13–14 (our reading): every pixel of x (N, n, d) replaced by the Nadaraya–Watson mean of
    the same image's pixels -> (N, n, d). Bandwidth σ per image = ``bandwidth`` × (``bandwidth_rule``):
    ``"perplexity"`` the σ whose weights smooth each pixel over about ``bandwidth_k`` pixels
    (:func:`perplexity_bandwidth`), ``"median"`` the median pairwise distance, ``"rms"`` the RMS
    pairwise distance."""
    if kernel == "none":
        return x
    check_choice("bandwidth_rule", bandwidth_rule, BANDWIDTH_RULES)
    if kernel not in ("laplace", "gaussian"):
        return kernel_regression(x, x, x, kernel, None, chunk, exact)
    if bandwidth_rule == "perplexity":
        scale = perplexity_bandwidth(x, bandwidth_k, kernel)
    elif bandwidth_rule == "median":
        scale = median_pairwise_distance(x)
    else:
        scale = rms_pairwise_distance(x)
    return kernel_regression(x, x, x, kernel, bandwidth * scale, chunk, exact)


def variance_kept(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """:func:`variance_kept_reference`, each variance as the mean squared deviation from the mean
    (three elementwise passes; torch's ``var`` kernel takes 1.7 ms for 8 x 960 x 32 values on the
    CPU, this 0.3 ms; six calls per tap and step)."""
    if use_reference():
        return variance_kept_reference(before, after)
    with torch.no_grad():
        def total_variance(x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(dim=1, keepdim=True)).square_().mean(dim=1).sum(1)

        return total_variance(after) / total_variance(before).clamp_min(EPS)


def variance_kept_reference(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Σ_c Var_c(after) / Σ_c Var_c(before) over the pixels of each image (N, n, d) -> (N,):
    the share of a map's variance that recalibration keeps (1 = none lost; a smoother that
    returns the image mean keeps 0). Detached."""
    with torch.no_grad():
        return after.var(dim=1, unbiased=False).sum(1) / before.var(dim=1, unbiased=False).sum(1).clamp_min(EPS)


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def match_sizes(fs: torch.Tensor, ft: torch.Tensor, max_pixels: int | None = ARFDConfig.max_pixels
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger map average-pooled to the smaller's (h, w); then both pooled by the smallest
    integer factor s with ceil(h/s)·ceil(w/s) <= max_pixels (None: no cap)."""
    h = min(fs.shape[-2], ft.shape[-2])
    w = min(fs.shape[-1], ft.shape[-1])
    if max_pixels is not None:
        if int(max_pixels) < 1:
            raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
        s = max(1, math.ceil(math.sqrt(h * w / int(max_pixels))))
        while math.ceil(h / s) * math.ceil(w / s) > int(max_pixels):
            s += 1
        h, w = math.ceil(h / s), math.ceil(w / s)
    return _pool_to(fs, (h, w)), _pool_to(ft, (h, w))


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h·w, C)."""
    return x.flatten(2).transpose(1, 2)


@full_precision
def arfd_stage_terms(student: torch.Tensor, teacher: torch.Tensor, kernel: str = ARFDConfig.kernel,
                     bandwidth: float = ARFDConfig.bandwidth, consistency: str = ARFDConfig.consistency,
                     chunk: int | None = ARFDConfig.chunk, max_pixels: int | None = ARFDConfig.max_pixels,
                     exact: bool = ARFDConfig.exact_distances, bandwidth_rule: str = ARFDConfig.bandwidth_rule,
                     bandwidth_k: float = ARFDConfig.bandwidth_k) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stage pair: student (N, C, h, w) and teacher (N, C', h', w'), both *already aligned
    and normalised* (eq. 12) -> (the consistency loss per image (N,) between the recalibrated
    maps (for CKA: 1 − CKA, unitless in [0, 1]), the variance kept by recalibration per image
    for the student (N,) and the teacher (N,), detached)."""
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"expected (N, C, h, w) maps with equal N, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    check_choice("consistency", consistency, CONSISTENCY)
    fs, ft = match_sizes(as_float(student), as_float(teacher.detach()), max_pixels)
    ps, pt = _pixels(fs), _pixels(ft)
    xs = recalibrate(ps, kernel, bandwidth, chunk, exact, bandwidth_rule, bandwidth_k)
    with torch.no_grad():
        xt = recalibrate(pt, kernel, bandwidth, chunk, exact, bandwidth_rule, bandwidth_k)
    return consistency_loss(xs, xt, consistency), variance_kept(ps, xs), variance_kept(pt, xt)


def arfd_stage_loss(student: torch.Tensor, teacher: torch.Tensor, kernel: str = ARFDConfig.kernel,
                    bandwidth: float = ARFDConfig.bandwidth, consistency: str = ARFDConfig.consistency,
                    chunk: int | None = ARFDConfig.chunk, max_pixels: int | None = ARFDConfig.max_pixels,
                    exact: bool = ARFDConfig.exact_distances, bandwidth_rule: str = ARFDConfig.bandwidth_rule,
                    bandwidth_k: float = ARFDConfig.bandwidth_k, world_size: int = 1) -> torch.Tensor:
    """:func:`arfd_stage_terms`' loss, averaged over the images of the (global) batch: a scalar."""
    per_image = arfd_stage_terms(student, teacher, kernel, bandwidth, consistency, chunk, max_pixels, exact,
                                 bandwidth_rule, bandwidth_k)[0]
    return global_mean(per_image.sum(), per_image.shape[0], world_size)


def arfd_loss(student_aligned: list[torch.Tensor], teacher_feats: list[torch.Tensor], kernel: str = ARFDConfig.kernel,
              bandwidth: float = ARFDConfig.bandwidth, consistency: str = ARFDConfig.consistency,
              chunk: int | None = ARFDConfig.chunk, max_pixels: int | None = ARFDConfig.max_pixels,
              exact: bool = ARFDConfig.exact_distances, bandwidth_rule: str = ARFDConfig.bandwidth_rule,
              bandwidth_k: float = ARFDConfig.bandwidth_k, reduction: str = ARFDConfig.reduction, world_size: int = 1
             ) -> torch.Tensor:
    """L_FD (eq. 17) over the N stage pairs (aligned, normalised student and teacher maps, lists
    in the same order): the mean (``reduction="mean"``, the paper's 1/N) or the sum of
    :func:`arfd_stage_loss`. A scalar."""
    if len(student_aligned) != len(teacher_feats) or not student_aligned:
        raise ValueError("arfd_loss needs one teacher map per aligned student map, at least one")
    check_choice("reduction", reduction, REDUCTIONS)
    total = sum(arfd_stage_loss(s, t, kernel, bandwidth, consistency, chunk, max_pixels, exact, bandwidth_rule,
                                bandwidth_k, world_size) for s, t in zip(student_aligned, teacher_feats))
    return total / len(student_aligned) if reduction == "mean" else total


class Aligner(nn.Sequential):
    """Eq. 12: Conv1×1(C_s -> C_t, no bias) -> BatchNorm2d(C_t) -> ReLU."""

    def __init__(self, c_student: int, c_teacher: int):
        super().__init__(nn.Conv2d(c_student, c_teacher, 1, bias=False), nn.BatchNorm2d(c_teacher),
                         nn.ReLU(inplace=True))


class ARFDHead(nn.Module):
    """ARFD with its aligners, one per tap: ``forward(student_feats, teacher_feats)`` (tap -> map)
    -> L_FD (scalar). After each forward ``last_stats`` holds the variance recalibration kept per
    tap and side (``kept.<tap>.student``, ``kept.<tap>.teacher``: batch means, detached)."""

    def __init__(self, channels: dict[str, tuple[int, int]], cfg: ARFDConfig = ARFDConfig()):
        super().__init__()
        if not channels:
            raise ValueError("ARFD needs at least one tap")
        self.kernel, self.bandwidth, self.consistency = cfg.kernel, float(cfg.bandwidth), cfg.consistency
        self.bandwidth_rule, self.bandwidth_k = cfg.bandwidth_rule, float(cfg.bandwidth_k)
        self.teacher_norm, self.reduction = cfg.teacher_norm, cfg.reduction
        self.chunk = None if cfg.chunk is None else int(cfg.chunk)
        self.max_pixels = None if cfg.max_pixels is None else int(cfg.max_pixels)
        self.exact = bool(cfg.exact_distances)
        self.taps = tuple(channels)
        self.aligners = nn.ModuleDict({t: Aligner(cs, ct) for t, (cs, ct) in channels.items()})
        # the teacher's side: BatchNorm without parameters or running state (batch statistics
        # always), a module so that the trainer's SyncBatchNorm conversion reaches it under DDP
        self.teacher_norms = nn.ModuleDict({t: nn.BatchNorm2d(ct, affine=False, track_running_stats=False)
                                            for t, (_cs, ct) in channels.items()} if cfg.teacher_norm == "bn_relu"
                                           else {})
        self.last_stats: dict[str, torch.Tensor] = {}

    def teacher_map(self, tap: str, ft: torch.Tensor) -> torch.Tensor:
        """The teacher's side of eq. 12: activated and normalised like the aligned student's map
        (ReLU of the map standardised per channel over the batch; no parameters, no gradient;
        ``teacher_norm="none"``: as it comes)."""
        ft = as_float(ft.detach())
        if self.teacher_norm == "none":
            return ft
        with torch.no_grad():
            return F.relu(self.teacher_norms[tap](ft))

    def forward(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor],
                world_size: int = 1) -> torch.Tensor:
        missing = [t for t in self.taps if t not in student_feats or t not in teacher_feats]
        if missing:
            raise ValueError(f"ARFD: no features for taps {missing}")
        total, stats = None, {}
        for t in self.taps:
            loss, kept_s, kept_t = arfd_stage_terms(self.aligners[t](student_feats[t]),
                                                    self.teacher_map(t, teacher_feats[t]), self.kernel,
                                                    self.bandwidth, self.consistency, self.chunk, self.max_pixels,
                                                    self.exact, self.bandwidth_rule, self.bandwidth_k)
            term = global_mean(loss.sum(), loss.shape[0], world_size)
            total = term if total is None else total + term
            stats[f"kept.{t}.student"], stats[f"kept.{t}.teacher"] = kept_s.mean(), kept_t.mean()
        self.last_stats = stats
        return total / len(self.taps) if self.reduction == "mean" else total
