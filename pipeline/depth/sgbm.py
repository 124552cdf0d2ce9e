"""OpenCV semi-global matching, checked, smoothed and filled into depth a teacher can learn from.

Settings in pixels are stated at ``REF_WIDTH`` = 320 px image width, where they were tuned,
and scaled with s = width / 320 for the image at hand (:class:`Scaled`), so the same parameters
serve the synthetic 320x96 and KITTI's 1242x375 (s = 3.9): lengths in the scene (the search
range, evidence shift and filter size, the gaps filled) scale; what acts on per-pixel noise (the
pre-blur, SGBM's block, the 3x3 photometric window, the sub-pixel tolerances, the smoothing
weight) does not. A larger image instead gets more matching scales and smoothing levels.

The output holds a depth where SGBM measured it and every check below keeps it, inside one
surface across a bounded gap, and where the right camera cannot see the surface next to a
measured one (occlusions, the left border); elsewhere it is invalid (0).

1. **Matching.** ``cv2.StereoSGBM`` on the grey images, lightly blurred (sigma 0.7 px: image
   noise dominates the finest detail of the synthetic textures), both padded on the left so that
   the matcher's blind band falls outside the picture, searching ``max_disparity`` x s px, with
   weak smoothness penalties (P1, P2 = 2, 8 x 3 block^2, ``SGBM_P1``/``SGBM_P2``): with
   OpenCV's usual 8, 32 the grass (dark, low-contrast, textured differently in the two views)
   came out wrong far more often (synthetic KITTI at 1242x375, 4 frames, ``OUTPUT_TOL`` 1 px:
   D1-all 16.0 % -> 12.3 %, the grass's wrong pixels 3.2 -> 0.9 % of the covered ones; 4, 16:
   13.5 %; 1, 4 and 2, 4: 12.2 %; 8, 64: 16.9 %; mode HH: 17.2 %, uniquenessRatio 10: 16.1 %,
   disp12MaxDiff 2: no change). On an image wider than 2 x 480 px it runs again on the pair
   halved (area averaging), and so on while the half is at least 480 px wide (1.5 x REF_WIDTH):
   1242 px wide, at 1242 and 621 px. A
   surface with little texture per pixel at full size (far grass, plain walls) has more per
   pixel at half size; the coarser scale supplies only pixels that no finer scale confirmed.
2. **Left-right consistency.** At each scale a second SGBM matches the right image against the
   left (both mirrored); a left disparity d at u is kept only if the right disparity at u - d
   agrees within ``lr_max_diff`` px, and u - d lies inside the right image (otherwise the point
   is not seen by the right camera). Occlusions and most mismatches fail here.
3. **Plane-preserving, edge-aware smoothing** (``smoothing`` > 0). Per-pixel SGBM disparities
   carry errors of a few tenths of a pixel, and surface normals are derivatives of disparity:
   at 320x96 a fronto-parallel wall 30 m away has a disparity of 3.3 px, so a slope error of
   0.01 px/px tilts its normal by ~30 degrees. We therefore solve, over the whole image, a
   robust weighted least-squares problem: stay close to the kept measurements (data weight 1,
   1 / factor^2 for one from a coarser scale, 0 for an outlier more than 0.5 px off the current
   solution) and have small *second* differences of disparity (horizontal, vertical, mixed),
   which cost nothing for a plane (planar surfaces have affine disparity) and are cut at image
   edges (weight exp(-|dRGB|^2 / 15^2)) and at creases of the current solution (Cauchy weight,
   scale 0.05 px). It is solved coarse to fine by conjugate gradients on an image pyramid whose
   coarsest level has at least 12 rows (320x96: 4 levels, 1242x375: 5), each level starting from
   the coarser solution continued as planes: with a nearest-neighbour start, CG did not converge
   at full size (the staircase it left looked like creases). The smooth solution replaces the
   measured value only where it agrees with the measurement within ``OUTPUT_TOL`` px (x 2 for a
   measurement of the half-size scale); elsewhere the pixel is invalid. 2 px rather than 1 px
   (synthetic KITTI, with step 1's penalties): D1-all 8.6 % -> 8.2 % at 1242x375 (16 frames),
   21.2 % -> 18.7 % at 320x96 (200 frames), AbsRel 0.064 -> 0.067 there.
4. **Match evidence** (``min_evidence`` > 0). A pixel of the sky, or of any surface without
   texture, matches the other view equally well at every disparity: SGBM's smoothness then
   paints a neighbour's disparity onto it, and the left-right check agrees. For each pixel we
   compare the colour residual of the match at its disparity d with the residuals at d + 10 s and
   d - 10 s px (clamped at 0, infinity), in units of the image's median matched residual,
   clipped to +-5 (all at whole-pixel shifts, so every residual sees the same interpolation),
   and average each of the two differences along the image with an edge-aware filter (the
   domain transform's recursive filter, Gastal & Oliveira 2011, spatial sigma 30 s px, guided
   by the RGB image blurred by s px): a textureless region is judged as a whole, but not
   together with the textured object next to it. The average is normalised by the share of
   pixels where the alternative lies inside the right image, so the band next to the left border
   is judged by its surface rather than by missing residuals. The evidence is the smaller of the
   two averages, because next to an object one of the two alternative matches lands on the
   object (or, at disparity 0, is hidden by it in the right view) and would fake evidence.
   Pixels whose evidence is at most ``min_evidence`` are invalid: nothing was measured there.
   So are pixels where the two views disagree at the output disparity: colour residual,
   averaged over 3x3 px, above ``PHOTO_MAX`` times its median (an occlusion or a mismatch that
   SGBM's smoothness carried through the left-right check).
5. **Bounded holes** (``fill_max_gap`` > 0). A pixel that failed step 2 or 3 is filled with the
   smooth solution only if, along its row or its column, kept pixels lie on both sides within
   ``fill_max_gap`` x s px in total, their smooth disparities differ by at most s px (the hole
   lies inside one surface), and the pixel itself passes step 4.
6. **What the right camera cannot see** (``fill_occluded``; :func:`unseen_fill`). Along a row,
   a gap before a nearer surface that is at most as wide as the disparity jump (+ ``fill_max_gap``
   x s px) is the background that surface hides from the right camera: it is filled with the
   background continued from the left. Pixels left of a row's first valid pixel u0 with
   u0 <= d(u0) (+ the same margin) lie outside the right image: they get the surface at u0
   continued leftwards. Both only where step 4's evidence holds (not the photometric check: an
   occluded pixel has no match by definition), so the sky between objects stays empty. This is
   extrapolation, not measurement: on synthetic KITTI at 1242x375 (16 frames) it adds 2.5 % of
   the covered pixels at occlusions and 2.9 % at the border, of which 62 % and 90 % are within
   KITTI's D1 tolerance.
7. **Range.** depth = fx B / d; beyond ``max_depth`` it is 0 (base.disparity_to_depth).

With ``smoothing=0``, ``min_evidence=0`` (which also switches off the photometric check of
step 4), ``fill_max_gap=0`` and ``fill_occluded=False`` the output is SGBM's left-right-checked
disparity as measured (at full size, plus the coarser scales' where the full size has none).

Measured by benchmarks/sgbm_density.py on the default synthetic KITTI against the side-car, on
the pixels with a depth up to 80 m that are not sky (LiDAR coverage without its sparsity);
D1-all counts holes as errors:

=========  ==========  =======  ======  =======  ======  ===========  ==========
size       code        density  D1-all  D1 kept  AbsRel  SNE normals  sky valid
=========  ==========  =======  ======  =======  ======  ===========  ==========
320x96     before       71.6 %  28.6 %   0.34 %   0.062    8.3 deg      5.6 %
320x96     this         81.9 %  18.7 %   0.67 %   0.067    9.5 deg      7.9 %
1242x375   before (*)   60.2 %  40.4 %   0.96 %   0.029    7.4 deg      1.2 %
1242x375   this         94.3 %   8.2 %   2.7 %    0.027    7.1 deg      7.9 %
=========  ==========  =======  ======  =======  ======  ===========  ==========

(200 frames at 320x96, 16 at 1242x375; (*) max_disparity 192, as in the report of issue 18.)
At full size the 8.2 points of D1-all are 5.7 points of holes and 2.5 of wrong depths, 1.2 of
those from step 6's extrapolation. The renderer's grass ("terrain", a quarter of the pixels;
dark, low-contrast and textured differently in the two views) is 2.3 points (9 % of its pixels
wrong or empty; 24 % with OpenCV's usual SGBM penalties, step 1); cars are 1.1 points, mostly
one plain car that fails step 4 as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.depth.base import DepthBackend, disparity_to_depth, register_backend
from pipeline.errors import ConfigError
from pipeline.sources.base import Frame

# Every pixel-unit setting is stated at REF_WIDTH px image width (where it was tuned, on
# synthetic KITTI at 320x96) and scaled with s = width / REF_WIDTH for the image at hand; see
# :class:`Scaled`, which also lists the few settings that stay per pixel and why.
REF_WIDTH = 320

# Per pixel at every size: they act on the image noise and SGBM's sub-pixel noise, which are
# per pixel whatever the resolution.
BLUR = 0.7  # px, Gaussian blur of the images before matching
OUTLIER = 0.5  # px: a measurement this far from the smooth solution gets no data weight
CREASE = 0.05  # px: scale of the Cauchy weight on second differences (lets planes meet)
EDGE_SIGMA = 15.0  # grey levels: scale of the image-edge weight of the smoothness terms
OUTPUT_TOL = 2.0  # px of the matching scale: the smooth value is output only this close to the measurement
EVIDENCE_CLIP = 5.0
EVIDENCE_MIN_SHARE = 0.1  # a side whose residuals exist on less than this share of its neighbourhood is ignored
PHOTO_MAX = 10.0  # a pixel whose 3x3 colour residual exceeds this many median residuals is invalid
PHOTO_WINDOW = 3  # px: window of the photometric residual
SGBM_P1, SGBM_P2 = 2, 8  # SGBM's smoothness penalties, x 3 block^2 (OpenCV's usual: 8, 32)

# Stated at REF_WIDTH, scaled with the image (px -> px * s, px^2 -> px^2 * s^2).
FILL_TOL = 1.0  # px: a hole is filled only between kept pixels whose disparities differ this little
EVIDENCE_SHIFT = 10  # px: the alternative disparities d +- this
EVIDENCE_SIGMA_S, EVIDENCE_SIGMA_R = 30.0, 30.0  # domain transform: spatial (px, scaled), range (grey levels)
GUIDE_BLUR = 1.0  # px: blur of the evidence filter's guide image
SPECKLE_WINDOW = 50  # px^2: SGBM's speckle filter removes disparity blobs smaller than this
SLOPE_RUN = 4  # px: background slope for an occlusion fill, measured over this run of kept pixels
BORDER_SLOPE_RUN = 16  # px: the same for the band at the left border that the right camera does not see
MATCH_MIN_WIDTH = 1.5 * REF_WIDTH  # px: a coarser matching scale is added while it is at least this wide


@dataclass(frozen=True)
class Scaled:
    """The settings in pixels for one image width, from the REF_WIDTH-px values.

    With s = width / REF_WIDTH: lengths (the disparity search range, the evidence shift and the
    evidence filter's spatial sigma and guide blur, the gap filled inside a surface and the
    disparity step tolerated across it, occlusion margins and slope runs) are multiplied by s,
    areas (SGBM's speckle window) by s^2. A surface in the scene spans s times more pixels and
    has an s times larger disparity, so these keep their meaning in the scene.

    Per pixel at every size, because what they act on is per pixel: the pre-blur, SGBM's block,
    the 3x3 photometric window (image noise); ``lr_max_diff``, ``OUTLIER`` and ``OUTPUT_TOL``
    (SGBM's sub-pixel noise, a few tenths of a pixel at any size); the smoothing weight, which
    balances that noise against second differences; the evidence threshold (noise units).
    Measured while this was built (synthetic KITTI, 4 frames at 1242x375): a photometric window
    scaled to 11 px made a band of invalid pixels along every depth edge (1-2 points of density);
    the smoothing weight scaled by s^2 cost 4 points of density (77 -> 73 %) for normals 1 degree
    closer to the side-car's; SGBM blocks of 9-19 px and blurs of 1.5-2.7 px matched worse than
    5 px and 0.7 px. Instead of larger windows, larger images get more matching scales
    (``match_scales``: 1242 px -> 1242 and 621 px; 320 px -> 320 px only), so a surface with
    little texture per pixel is still matched at a size where it has some.
    """

    s: float
    num_disp: int
    speckle_window: int
    evidence_shift: int
    sigma_s: float
    guide_blur: float
    fill_max_gap: int
    fill_tol: float
    occlusion_margin: float
    slope_run: int
    border_slope_run: int
    match_scales: int

    @classmethod
    def for_width(cls, width: int, max_disparity: float, fill_max_gap: float) -> "Scaled":
        s = width / REF_WIDTH
        scales = 1
        while width / 2**scales >= MATCH_MIN_WIDTH:
            scales += 1
        return cls(s=s, num_disp=max(16, int(np.ceil(max_disparity * s / 16) * 16)),
                   speckle_window=int(round(SPECKLE_WINDOW * s * s)),
                   evidence_shift=max(1, int(round(EVIDENCE_SHIFT * s))), sigma_s=EVIDENCE_SIGMA_S * s,
                   guide_blur=GUIDE_BLUR * s, fill_max_gap=int(round(fill_max_gap * s)), fill_tol=FILL_TOL * s,
                   occlusion_margin=fill_max_gap * s, slope_run=max(1, int(round(SLOPE_RUN * s))),
                   border_slope_run=max(1, int(round(BORDER_SLOPE_RUN * s))), match_scales=scales)


# --------------------------------------------------------------------------- matching
def sgbm_disparity(left: np.ndarray, right: np.ndarray, num_disp: int, block: int,
                   speckle_window: int = SPECKLE_WINDOW) -> np.ndarray:
    """(H, W) uint8 grey pair -> (H, W) float32 left disparity in pixels; <= 0 where SGBM found none."""
    matcher = cv2.StereoSGBM_create(minDisparity=0, numDisparities=num_disp, blockSize=block,
                                    P1=SGBM_P1 * 3 * block * block, P2=SGBM_P2 * 3 * block * block,
                                    disp12MaxDiff=1,
                                    uniquenessRatio=5, speckleWindowSize=speckle_window, speckleRange=2,
                                    mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    # Pad both images on the left so the matcher's blind band (its first numDisparities
    # columns) falls outside the picture; cropped off again below.
    pad = num_disp
    gl, gr = (cv2.copyMakeBorder(x, 0, 0, pad, 0, cv2.BORDER_REPLICATE) for x in (left, right))
    return matcher.compute(gl, gr)[:, pad:].astype(np.float32) / 16.0  # fixed point, 4 fractional bits


def left_right_consistent(d_left: np.ndarray, d_right: np.ndarray, max_diff: float) -> np.ndarray:
    """Mask of left disparities confirmed by the right view: d_left(u) > 0, u - d_left(u) inside
    the image, and |d_right(u - d_left(u)) - d_left(u)| <= max_diff (d_right indexed by right
    image column)."""
    h, w = d_left.shape
    ur = np.rint(np.arange(w)[None, :] - d_left).astype(np.int64)
    seen = (d_left > 0) & (ur >= 0) & (ur < w)
    back = d_right[np.arange(h)[:, None], np.clip(ur, 0, w - 1)]
    return seen & (back > 0) & (np.abs(back - d_left) <= max_diff)


# --------------------------------------------------------------------------- smoothing
def _second_differences(x: np.ndarray):
    return (x[:, :-2] - 2 * x[:, 1:-1] + x[:, 2:], x[:-2] - 2 * x[1:-1] + x[2:],
            x[:-1, :-1] - x[:-1, 1:] - x[1:, :-1] + x[1:, 1:])


def _edge_weights(img: np.ndarray, sigma: float):
    """Weights in (0, 1] of the horizontal, vertical and mixed second differences: small where
    the stencil crosses an image edge."""
    def w(a, b):
        return np.exp(-((a - b) ** 2).sum(-1) / (sigma * sigma))

    wx = np.minimum(w(img[:, :-2], img[:, 1:-1]), w(img[:, 1:-1], img[:, 2:]))
    wy = np.minimum(w(img[:-2], img[1:-1]), w(img[1:-1], img[2:]))
    wxy = np.minimum(np.minimum(w(img[:-1, :-1], img[:-1, 1:]), w(img[:-1, :-1], img[1:, :-1])),
                     np.minimum(w(img[1:, 1:], img[:-1, 1:]), w(img[1:, 1:], img[1:, :-1])))
    return wx, wy, wxy


def _conjugate_gradients(w, wd, cx, cy, cxy, lam, x, iters, ridge=1e-3):
    """Minimise sum w (x - d)^2 + lam sum c (second differences of x)^2 (+ a tiny ridge towards
    the start, which fixes x where there are no data), from ``x``; Jacobi-preconditioned CG."""
    W = w + ridge

    def apply(D):
        sx, sy, sxy = _second_differences(D)
        out = W * D
        t = lam * cx * sx
        out[:, :-2] += t
        out[:, 1:-1] -= 2 * t
        out[:, 2:] += t
        t = lam * cy * sy
        out[:-2] += t
        out[1:-1] -= 2 * t
        out[2:] += t
        t = lam * cxy * sxy
        out[:-1, :-1] += t
        out[:-1, 1:] -= t
        out[1:, :-1] -= t
        out[1:, 1:] += t
        return out

    M = W.copy()
    M[:, :-2] += lam * cx
    M[:, 1:-1] += 4 * lam * cx
    M[:, 2:] += lam * cx
    M[:-2] += lam * cy
    M[1:-1] += 4 * lam * cy
    M[2:] += lam * cy
    for sl in ((slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)),
               (slice(1, None), slice(None, -1)), (slice(1, None), slice(1, None))):
        M[sl] += lam * cxy
    b = wd + ridge * x
    r = b - apply(x)
    z = r / M
    p = z.copy()
    rz = float((r * z).sum())
    for _ in range(iters):
        if rz <= 0:
            break
        Ap = apply(p)
        alpha = rz / max(float((p * Ap).sum()), 1e-30)
        x = x + alpha * p
        r -= alpha * Ap
        z = r / M
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _pool(a: np.ndarray, how: str) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return s if how == "sum" else 0.25 * s


def _minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smaller-magnitude of two one-sided slopes, 0 where they disagree in sign: a slope that
    does not reach across a depth edge."""
    return np.where(a * b > 0, np.where(np.abs(a) < np.abs(b), a, b), 0).astype(np.float32)


def _plane_upsample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse solution brought to the next finer (2x) level: each fine pixel continues the plane
    of its coarse pixel (value + minmod slopes). Nearest-neighbour upsampling would leave a
    staircase on every slanted surface, whose second differences the crease weights take for
    creases; bilinear upsampling would blend the two sides of a depth edge. Either costs CG many
    iterations to undo, more the larger the image."""
    hc, wc = x.shape
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    dx, dy = np.diff(x, axis=1), np.diff(x, axis=0)
    gx[:, 1:-1] = _minmod(dx[:, :-1], dx[:, 1:])
    gy[1:-1] = _minmod(dy[:-1], dy[1:])
    v, u = np.arange(shape[0]), np.arange(shape[1])
    ic, jc = np.minimum(v // 2, hc - 1), np.minimum(u // 2, wc - 1)
    # fine pixel centres in coarse pixel coordinates, relative to their coarse pixel's centre
    ov = ((v + 0.5) / 2 - 0.5 - ic).astype(np.float32)[:, None]
    ou = ((u + 0.5) / 2 - 0.5 - jc).astype(np.float32)[None, :]
    cell = np.ix_(ic, jc)
    return (x[cell] + gx[cell] * ou + gy[cell] * ov).astype(np.float32)


def plane_smooth(disp: np.ndarray, weight: np.ndarray, img: np.ndarray, lam: float, *,
                 outlier: float = OUTLIER, crease: float = CREASE, edge_sigma: float = EDGE_SIGMA,
                 min_rows: int = 12, max_levels: int | None = None) -> np.ndarray:
    """Robust, edge-aware second-order smoothing of ``disp`` (see the module docstring, step 3).

    disp: (H, W) disparity (any value where ``weight`` is 0); weight: (H, W) data weights in
    [0, 1]; img: (H, W, 3) colour image (edges); lam: smoothness weight per pixel. Solved on a
    pyramid (2x2 pooling: data weights summed, lam / 4 per level, since second differences
    of a smooth function grow 4x per halving while their number falls 4x), coarse to fine, down
    to a coarsest level of at least ``min_rows`` rows: the larger the image, the more levels
    (320x96: 4, 1242x375: 5), so the coarsest problem is about the same at any size. Each level
    starts from the coarser solution continued as planes (:func:`_plane_upsample`). Returns the
    dense (H, W) float32 smooth disparity.
    """
    levels = 1
    while ((max_levels is None or levels < max_levels)
           and min(disp.shape[0], disp.shape[1]) >> levels >= min_rows):
        levels += 1
    w0 = weight.astype(np.float32)
    pyr = [(np.where(w0 > 0, disp, 0).astype(np.float32) * w0, w0, img.astype(np.float32))]
    for _ in range(1, levels):
        wd, w, im = pyr[-1]
        pyr.append((_pool(wd, "sum"), _pool(w, "sum"), _pool(im, "mean")))
    x = None
    for level in range(levels - 1, -1, -1):
        wd, w, im = pyr[level]
        d = np.where(w > 0, wd / np.maximum(w, 1e-6), 0).astype(np.float32)
        lam_l = np.float32(lam / 4**level)
        if x is None:
            x = np.full(d.shape, float(d[w > 0].mean()) if (w > 0).any() else 0.0, np.float32)
        else:
            x = _plane_upsample(x, d.shape)
        e0 = [c.astype(np.float32) for c in _edge_weights(im, edge_sigma)]
        cx, cy, cxy = e0
        wl = w
        coarsest = level == levels - 1
        for _ in range(2 if level == 0 else 1):
            x = _conjugate_gradients(wl, wl * d, cx, cy, cxy, lam_l, x, 60 if coarsest else 30)
            wl = np.where(np.abs(x - d) < outlier, w, 0).astype(np.float32)
            scale = np.float32(crease * 4**level)  # second differences scale with spacing^2
            cx, cy, cxy = (e / (1 + (s / scale) ** 2) for e, s in zip(e0, _second_differences(x)))
    return x.astype(np.float32)


# --------------------------------------------------------------------------- evidence
def _recursive_pass(J: np.ndarray, a_pow: np.ndarray) -> np.ndarray:
    """Domain-transform recursive filter along axis 1, left to right and back, in place."""
    for u in range(1, J.shape[1]):
        J[:, u] += a_pow[:, u - 1] * (J[:, u - 1] - J[:, u])
    for u in range(J.shape[1] - 2, -1, -1):
        J[:, u] += a_pow[:, u] * (J[:, u + 1] - J[:, u])
    return J


def domain_transform(signal: np.ndarray, guide: np.ndarray, sigma_s: float, sigma_r: float,
                     iterations: int = 3) -> np.ndarray:
    """Edge-aware smoothing of an (H, W) signal guided by an (H, W, C) image: the recursive
    filter of Gastal & Oliveira, "Domain Transform for Edge-Aware Image and Video Processing"
    (SIGGRAPH 2011). A constant signal stays constant; nothing is averaged across edges of the
    guide much stronger than ``sigma_r``."""
    g = guide.astype(np.float32)
    dx = 1 + sigma_s / sigma_r * np.abs(np.diff(g, axis=1)).sum(-1)
    dy = 1 + sigma_s / sigma_r * np.abs(np.diff(g, axis=0)).sum(-1)
    J = signal.astype(np.float32).copy()
    for i in range(iterations):
        sigma_h = sigma_s * np.sqrt(3) * 2 ** (iterations - i - 1) / np.sqrt(4**iterations - 1)
        a = np.float32(np.exp(-np.sqrt(2) / sigma_h))
        J = _recursive_pass(J, a**dx)
        J = np.ascontiguousarray(_recursive_pass(np.ascontiguousarray(J.T), (a**dy).T).T)
    return J


def match_evidence(left: np.ndarray, right: np.ndarray, disp: np.ndarray, mask: np.ndarray | None = None,
                   shift: int = EVIDENCE_SHIFT, sigma_s: float = EVIDENCE_SIGMA_S,
                   sigma_r: float = EVIDENCE_SIGMA_R, blur: float = BLUR,
                   guide_blur: float = GUIDE_BLUR) -> np.ndarray:
    """How much better each pixel matches at its disparity than ``shift`` px off it, averaged
    edge-aware (see the module docstring, step 4).

    left/right: (H, W, 3) uint8 (blurred here); disp: (H, W) disparity, rounded so that every
    residual sees the same interpolation; mask: pixels whose residuals set the noise unit
    (default all). For each side s in (+shift, -shift; a negative disparity is clamped to 0,
    infinity) the residual difference |L - R(u - d - s)|^2 - |L - R(u - d)|^2 in noise units,
    clipped to +-EVIDENCE_CLIP, is averaged by :func:`domain_transform` over the pixels where it
    exists (both u - d and u - d - s inside the right image; normalised by their averaged share,
    a side seen by less than EVIDENCE_MIN_SHARE of its neighbourhood is left out); the evidence
    is the smaller of the two averages. Returns (H, W) float32; ~0 where nothing matches.
    """
    L = cv2.GaussianBlur(left.astype(np.float32), (0, 0), blur)
    R = cv2.GaussianBlur(right.astype(np.float32), (0, 0), blur)
    h, w = disp.shape
    d = np.rint(np.maximum(disp, 0)).astype(np.int64)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]

    def residual(dd):
        return ((L - R[rows, np.clip(cols - dd, 0, w - 1)]) ** 2).sum(-1)

    at_d = residual(d)
    inside = cols - d >= 0
    ref = at_d[inside & (mask if mask is not None else True)]
    unit = max(float(np.median(ref)) if ref.size else 1.0, 1e-3)
    guide = cv2.GaussianBlur(left.astype(np.float32), (0, 0), guide_blur)
    sides = []
    for alt in (d + shift, np.maximum(d - shift, 0)):
        # A residual exists only where both u - d and u - alt fall inside the right image. The
        # average is normalised by the share of such pixels (normalised convolution): a pixel
        # whose alternative falls off the image is judged by the evidence of its surface, not
        # by zeros (which made a band of shift px next to the unseen border 'textureless').
        seen = (inside & (cols - alt >= 0)).astype(np.float32)
        e = np.clip((residual(alt) - at_d) / unit, -EVIDENCE_CLIP, EVIDENCE_CLIP) * seen
        share = domain_transform(seen, guide, sigma_s, sigma_r)
        avg = domain_transform(e, guide, sigma_s, sigma_r) / np.maximum(share, 1e-6)
        sides.append(np.where(share > EVIDENCE_MIN_SHARE, avg, np.inf))
    ev = np.minimum(sides[0], sides[1])
    return np.where(np.isfinite(ev), ev, 0.0).astype(np.float32)


def photometric_residual(left: np.ndarray, right: np.ndarray, disp: np.ndarray,
                         mask: np.ndarray | None = None, window: int = PHOTO_WINDOW,
                         blur: float = BLUR) -> np.ndarray:
    """The colour residual |L(u) - R(u - d)|^2 (blurred images, R interpolated at the sub-pixel
    disparity), averaged over ``window`` x ``window`` pixels, in units of its median over ``mask`` (default all):
    ~1 where the views agree, large where they do not (an occlusion, a mismatch)."""
    L = cv2.GaussianBlur(left.astype(np.float32), (0, 0), blur)
    R = cv2.GaussianBlur(right.astype(np.float32), (0, 0), blur)
    h, w = disp.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    Rw = cv2.remap(R, u - disp.astype(np.float32), v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    res = cv2.boxFilter(((L - Rw) ** 2).sum(-1), -1, (window, window))
    ref = res[mask] if mask is not None else res
    return res / max(float(np.median(ref)) if ref.size else 1.0, 1e-3)


# --------------------------------------------------------------------------- holes
def bounded_holes(kept: np.ndarray, disp: np.ndarray, max_gap: int,
                  tol: float = FILL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """The not-kept pixels that lie in a row gap between kept pixels at most ``max_gap`` px wide
    whose two bounding ``disp`` values differ by at most ``tol`` (one surface on both sides), and
    the linear interpolation of those two values. Gaps open to the image border are never
    filled. Returns (mask, interpolated disparity)."""
    h, w = kept.shape
    cols = np.arange(w)[None, :]
    left = np.maximum.accumulate(np.where(kept, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(kept, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    bounded = (left >= 0) & (right < w) & (right - left - 1 <= max_gap)
    dl = disp[rows, np.clip(left, 0, w - 1)]
    dr = disp[rows, np.clip(right, 0, w - 1)]
    interp = dl + (dr - dl) * (cols - left) / np.maximum(right - left, 1)
    return ~kept & bounded & (np.abs(dl - dr) <= tol), interp.astype(np.float32)


# --------------------------------------------------------------------------- backend
def unseen_fill(valid: np.ndarray, disp: np.ndarray, margin: float, slope_run: int,
                border_slope_run: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels the right camera cannot see, filled from the surface next to them (step 6).

    valid: (H, W) output mask so far; disp: (H, W) disparity (the smooth solution). Per row:

    * an occlusion: a gap between valid pixels whose right neighbour is nearer (larger disparity
      dr than the left one's dl) and which is at most dr - dl + ``margin`` px wide, the width of
      the background that the nearer surface hides from the right camera. Filled with the
      background continued from the left (its slope over ``slope_run`` px), never nearer than dr.
    * the left border band: the pixels left of a row's first valid pixel u0 when u0 <= d(u0) +
      ``margin`` (u - d < 0 there: outside the right image). Filled with the surface at u0
      continued leftwards (its slope over ``border_slope_run`` px).

    Returns (mask, disparity there)."""
    h, w = valid.shape
    cols = np.arange(w)[None, :]
    rows = np.arange(h)[:, None]
    left = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    lc, rc = np.clip(left, 0, w - 1), np.clip(right, 0, w - 1)
    dl, dr = disp[rows, lc], disp[rows, rc]
    gap = right - left - 1
    occluded = ~valid & (left >= 0) & (right < w) & (dr > dl) & (gap <= dr - dl + margin)
    back = np.clip(lc - slope_run, 0, w - 1)
    slope = np.where(valid[rows, back], (dl - disp[rows, back]) / np.maximum(lc - back, 1), 0.0)
    value = np.where(occluded, np.minimum(dl + slope * (cols - lc), dr), 0.0)
    first = right[:, :1]  # w where the row has no valid pixel
    f = np.clip(first, 0, w - 1)
    d0 = disp[rows, f]
    ahead = np.clip(f + border_slope_run, 0, w - 1)
    slope0 = np.where(valid[rows, ahead], (disp[rows, ahead] - d0) / np.maximum(ahead - f, 1), 0.0)
    border = (cols < first) & (first < w) & (first <= d0 + margin)
    value = np.where(border, d0 + slope0 * (cols - f), value)
    mask = (occluded | border) & (value > 0)
    return mask, np.where(mask, value, 0.0).astype(np.float32)


@register_backend("sgbm")
class SGBMBackend(DepthBackend):
    """SGBM, checked, smoothed and filled (see the module docstring).

    Options, pixel-unit ones in px at REF_WIDTH (320 px) image width and scaled with the image
    (:class:`Scaled`): max_disparity (search range: 64 -> 256 px at 1242 px width), block_size
    (SGBM's window, per pixel), max_depth (m), lr_max_diff (px, per pixel), smoothing (weight of
    the plane-preserving smoothing; 0 = off), min_evidence (noise units; 0 = off), fill_max_gap
    (px; 0 = off), fill_occluded (fill what the right camera cannot see from the surface next
    to it). ``device`` and ``batch_size``, which pipeline.depth.select gives every backend, are
    accepted and unused (SGBM runs on the CPU, frame by frame). Anything else is refused with a
    ConfigError naming it: a misspelt option would otherwise silently run with the default.
    """

    OPTIONS = ("max_disparity", "block_size", "max_depth", "lr_max_diff", "smoothing", "min_evidence",
               "fill_max_gap", "fill_occluded", "device", "batch_size")

    def __init__(self, max_disparity: int = 64, block_size: int = 5, max_depth: float = 250.0,
                 lr_max_diff: float = 1.0, smoothing: float = 2000.0, min_evidence: float = 1.0,
                 fill_max_gap: int = 8, fill_occluded: bool = True, device: str = "auto", batch_size: int = 4,
                 **unknown):
        if unknown:
            raise ConfigError(", ".join(sorted(unknown)),
                              f"unknown option of the sgbm depth backend; it takes {', '.join(self.OPTIONS)}")
        self.max_disparity = max_disparity
        self.block = block_size
        self.max_depth = max_depth
        self.lr_max_diff = lr_max_diff
        self.smoothing = smoothing
        self.min_evidence = min_evidence
        self.fill_max_gap = fill_max_gap
        self.fill_occluded = fill_occluded
        self.batch_size = batch_size

    def scaled(self, width: int) -> Scaled:
        return Scaled.for_width(width, self.max_disparity, self.fill_max_gap)

    def raw_disparity(self, left: np.ndarray, right: np.ndarray,
                      sc: Scaled | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 pair -> (left disparity, mask of left-right consistent pixels, the
        size factor of the scale that measured each pixel: 1 = full size, 2 = half, ...).

        Finest first: a coarser scale (images halved with area averaging) only supplies pixels
        that no finer scale confirmed; its disparities are brought to full size (x factor,
        nearest neighbour; the smoothing makes planes of them)."""
        sc = sc or self.scaled(left.shape[1])
        h, w = left.shape[:2]
        d = np.zeros((h, w), np.float32)
        kept = np.zeros((h, w), bool)
        factor = np.ones((h, w), np.float32)
        for k in range(sc.match_scales):
            if k == 0:
                pair = (left, right)
            else:
                size = (max(1, round(w / 2**k)), max(1, round(h / 2**k)))
                pair = tuple(cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (left, right))
            f = w / pair[0].shape[1]
            gl, gr = (cv2.GaussianBlur(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), (0, 0), BLUR) for x in pair)
            nd = max(16, int(np.ceil(sc.num_disp / f / 16) * 16))
            spk = int(round(sc.speckle_window / f**2))
            d_left = sgbm_disparity(gl, gr, nd, self.block, spk)
            d_right = sgbm_disparity(np.ascontiguousarray(gr[:, ::-1]), np.ascontiguousarray(gl[:, ::-1]),
                                     nd, self.block, spk)[:, ::-1]
            ok = left_right_consistent(d_left, d_right, self.lr_max_diff)
            if k == 0:
                d, kept = d_left, ok
                continue
            d_k = cv2.resize(d_left, (w, h), interpolation=cv2.INTER_NEAREST) * f
            ok = cv2.resize(ok.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            new = ok & ~kept
            d = np.where(new, d_k, d)
            factor = np.where(new, np.float32(f), factor)
            kept |= new
        return d.astype(np.float32), kept, factor

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 pair -> (H, W) float32 disparity in pixels, 0 where not measured."""
        sc = self.scaled(left.shape[1])
        d, kept, factor = self.raw_disparity(left, right, sc)
        if self.smoothing > 0 and kept.any():
            # A coarse-scale measurement carries factor^2 times the variance of a full-size one.
            smooth = plane_smooth(d, kept / factor**2, left, self.smoothing)
            kept &= np.abs(smooth - d) <= OUTPUT_TOL * factor
            d = smooth
        if self.min_evidence > 0 and kept.any():
            textured = (match_evidence(left, right, d, kept, sc.evidence_shift, sc.sigma_s, guide_blur=sc.guide_blur)
                        > self.min_evidence)
            good = textured & (photometric_residual(left, right, d, kept) <= PHOTO_MAX)
        else:
            textured = good = np.ones_like(kept)
        if sc.fill_max_gap > 0:
            rows, interp = bounded_holes(kept, d, sc.fill_max_gap, sc.fill_tol)
            cols, interp_c = (a.T for a in bounded_holes(kept.T, d.T, sc.fill_max_gap, sc.fill_tol))
            if self.smoothing <= 0:  # no smooth surface under the hole: interpolate its row (or column)
                d = np.where(rows, interp, np.where(cols, interp_c, d))
            kept = kept | rows | cols
        valid = kept & good & (d > 0)
        if self.fill_occluded and valid.any():
            unseen, value = unseen_fill(valid, d, sc.occlusion_margin, sc.slope_run, sc.border_slope_run)
            unseen &= textured  # not the photometric check: an occluded pixel has no match by definition
            d = np.where(unseen & ~valid, value, d)
            valid |= unseen
        return np.where(valid & (d > 0), d, 0.0).astype(np.float32)

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        out = []
        for f in frames:
            self.require_stereo(f)
            out.append(disparity_to_depth(self.disparity(f.rgb, f.right_rgb), f.K[0, 0], f.baseline,
                                          self.max_depth))
        return out
