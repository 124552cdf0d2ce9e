"""Surface normals from metric depth: SNE, the estimator of SNE-RoadSeg (Fan et al., ECCV 2020),
as its official code computes it, and an older variant of ours ('median4').

Both start from the same observation. For a locally planar surface n . P + d = 0 seen by a
pinhole camera, the inverse depth 1/Z is affine in the pixel coordinates, and its image gradients
give the normal's first two components up to one common scale:

    nx = fx * d(1/Z)/du,    ny = fy * d(1/Z)/dv,

and the third follows from 3-D differences to neighbours on the same plane: nx dX + ny dY + nz dZ
= 0. Convention (both estimators): camera frame x right, y down, z forward; normals face the
camera (n . P < 0), so flat ground gives (0, -1, 0) and a fronto-parallel wall (0, 0, -1).
Invalid depth (0, non-finite, beyond ``max_depth``) gives an invalid normal: the returned vector
is 0 and the validity mask is False.

'sne' (the default) is SNE-RoadSeg's ``SNE.forward`` (hlwang1124/SNE-RoadSeg,
models/sne_model.py), formula for formula:
  * Gu = D(u+1) - D(u-1), Gv = D(v+1) - D(v-1) with D = 1/Z (3x3 convolutions; no 1/2: a common
    scale); nx = fx Gu, ny = fy Gv.
  * For each of the 8 neighbours q, one-sided differences dX = X_p - X_q (likewise dY, dZ) and
    nz_q = (nx dX + ny dY) / dZ  (sic, +: that flips nz relative to (nx, ny); the composition
    below undoes it up to the final sign); the candidate (nx, ny, nz_q) is normalised, each of its
    NaN components set to 0 (so a candidate with dZ = 0 adds nothing), and the 8 are summed: S.
  * phi = atan(ny / nx) + pi, theta = -atan((Sx cos phi + Sy sin phi) / Sz),
    n = (sin theta cos phi, sin theta sin phi, cos theta); NaN -> (0, 0, -1); flipped where ny > 0.
  We compute the same numbers without trigonometry (see ``_sne_numpy``), to float32 rounding
  (tests/test_normals.py compares with a port of the official code), and keep our conventions
  on top. These are the only departures:
  * orientation: SNE's composition gives nz >= 0, then it flips where ny > 0; that leaves
    surfaces seen from below or from the side facing away (10-33 % of the pixels of our synthetic
    street scenes, median 23 %); we flip every normal with n . P > 0, and keep SNE's sign where
    n . P == 0.
  * invalid depth: SNE sets NaN depth to 0 and divides by it; as its convolutions multiply the
    whole 3x3 window, 0 * inf = NaN then reaches every pixel within one pixel of missing depth,
    which gets (0, 0, -1), a made-up fronto-parallel normal (so do the pixels without depth). We
    return 0 with the mask False where the depth is invalid, and elsewhere a neighbour with
    invalid depth (or outside the image) contributes no candidate and no gradient term.
  * whole image: SNE zeroes the depth above the principal point's row (``Z[Y <= 0] = 0``, a road
    prior), and its zero padding makes the border pixels' normals wrong; we use the whole image,
    and where one side of a gradient stencil is invalid or outside the image we take the
    one-sided difference (times 2, the same scale); a pixel with neither side valid in u or in v
    is invalid.
  * SNE computes Y with fx (``Y = Z (v - cy) / fx``); we use fy. Identical when fx == fy, as in
    the KITTI, vKITTI2 and nuImages cameras (not quite in our resized synthetic copies).
  A property of SNE that we keep: on curved surfaces, where one of the 8 neighbour directions is
  perpendicular to the depth gradient, that neighbour's dZ is of second order and its candidate
  wrong, and the sum of normalised candidates keeps it (on a sphere: errors of tens of degrees
  along four lines through the point nearest the camera). 'median4' has no such lines.

'median4' (our earlier variant): the differences are taken across the pixel along its 4 neighbour
axes (left-right, up-down and both diagonals: the 8 neighbours in opposite pairs, second-order
accurate), nz is the median of the finite nz_i estimates, and the normal is normalised. Pixels
whose gradient stencil or all neighbours are invalid are invalid too (so is the 1-pixel border).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The 8 neighbours as 4 opposite pairs: (dy, dx) and (-dy, -dx).
_AXES = [(0, 1), (1, 0), (1, 1), (1, -1)]
# Sorting network for 4 values (5 compare-exchanges).
_SORT4 = [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)]


def _median_of_finite(vals: np.ndarray) -> np.ndarray:
    """Median over axis 0 (length 4) of the finite entries; NaN where none is finite.

    A sorting network of element-wise min/max is several times faster than np.nanmedian.
    """
    finite = np.isfinite(vals)
    count = finite.sum(0)
    v = np.where(finite, vals, np.inf)
    rows = list(v)
    lo = np.empty_like(rows[0])
    for i, j in _SORT4:
        np.minimum(rows[i], rows[j], out=lo)
        np.maximum(rows[i], rows[j], out=rows[j])
        rows[i], lo = lo, rows[i]
    # Non-finite values sorted last, so the median of the first ``count`` rows is direct.
    r0, r1, r2 = rows[0], rows[1], rows[2]
    med = 0.5 * (r1 + r2)  # count 4
    np.copyto(med, r1, where=count == 3)
    np.copyto(med, 0.5 * (r0 + r1), where=count == 2)
    np.copyto(med, r0, where=count == 1)
    med[count == 0] = np.nan
    return med


ESTIMATORS = ("sne", "median4")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown normals estimator {estimator!r}; expected one of {ESTIMATORS}")


def surface_normals(depth: np.ndarray, K: np.ndarray, max_depth: float = np.inf,
                    return_mask: bool = False, estimator: str = "sne"):
    """Surface normals with the named estimator (see the module docstring).

    depth: (H, W) metres (0 or non-finite = invalid); K: (3, 3). Returns (H, W, 3) float32 unit
    vectors facing the camera (0 where invalid), and with ``return_mask`` the (H, W) bool mask.
    """
    _check_estimator(estimator)
    if estimator == "median4":
        return _normals_median4(depth, K, max_depth, return_mask)
    n, ok = _sne_numpy(depth, K, max_depth)
    return (n, ok) if return_mask else n


# SNE's 8 neighbours (dv, du), in the order of its difference kernels (row-major 3x3 without the
# centre), each with the inverse-depth derivative along the offset, delta = Gu du + Gv dv, as
# (name of the array, sign): see _sne_numpy.
_SNE_NEIGHBOURS = [((-1, -1), "gpp", -1), ((-1, 0), "gv", -1), ((-1, 1), "gpm", 1), ((0, -1), "gu", -1),
                   ((0, 1), "gu", 1), ((1, -1), "gpm", -1), ((1, 0), "gv", 1), ((1, 1), "gpp", 1)]
# |nz_q| is clamped to this before squaring: its square is inf in float32, so a clamped (NaN or
# infinite) candidate gets weight 1/|candidate| = 0 and adds exactly nothing, as in SNE.
_BIG = 1e30


def _sne_numpy(depth: np.ndarray, K: np.ndarray, max_depth: float, block_rows: int = 40):
    """SNE (see the module docstring) on one (H, W) depth map; float32, vectorised over pixels.

    Returns (normals (H, W, 3) float32, mask (H, W) bool).

    Algebra, so that a candidate costs 13 array operations and no trigonometry:
    * nz_q. With X = Z xr, xr = (u - cx) / fx (Y, yr likewise) and the neighbour q = p + (dv, du),
      xr_q = xr_p + du / fx, so nx dX + ny dY = dZ G - Z_q delta, with G = nx xr + ny yr and
      delta = nx du / fx + ny dv / fy = Gu du + Gv dv. Hence nz_q = G - delta Z_q / dZ: SNE's
      (nx dX + ny dY) / dZ, including dZ = 0 exactly (inf or NaN, so the candidate is dropped).
    * the sum. All 8 candidates share (nx, ny), so S = (nx W, ny W, Sz) with W = sum 1/|c_q| and
      Sz = sum nz_q / |c_q| over the candidates SNE keeps (finite nz_q; the others add 0 there).
    * the composition. With (cos phi, sin phi) = -+(nx, ny) / r, r = |(nx, ny)|, and
      tan theta = -(S_xy . (cos phi, sin phi)) / Sz, SNE's (sin theta cos phi, sin theta sin phi,
      cos theta) is exactly -sign(Sz) (Sx, Sy, -Sz) / |S| whatever the sign of nx (the branch of
      phi cancels; theta in (-pi/2, pi/2) makes the z component >= 0). SNE then flips it where its
      y component is > 0; we flip instead where it faces away (n . P > 0; P = Z (xr, yr, 1), so for
      n = (Sx, Sy, -Sz), n . P has the sign of W G - Sz) and keep SNE's sign where n . P == 0.
      tests/test_normals.py checks the identity against the trigonometric form.
    * r == 0 (inverse depth flat: a fronto-parallel patch) makes SNE's phi NaN, hence (0, 0, -1);
      so do we (no candidate is finite and nonzero then, so |S| is 0 or NaN: the same test).

    Layout, for speed (numpy is memory-bound here): rows go in blocks of ``block_rows``, each
    copied into a NaN-bordered (outside = invalid) and flattened buffer, so that every neighbour
    of a pixel is a contiguous 1-D slice at offset dv (W + 2) + du (the two border columns are
    computed too, as invalid pixels, and dropped); the temporaries stay in cache and are reused;
    binary operations take arrays rather than scalars (numpy's SIMD loops), all in place.
    """
    f32 = np.float32
    z = np.asarray(depth, dtype=f32)
    h, w = z.shape
    P = w + 2
    zmax = f32(min(float(max_depth), float(np.finfo(f32).max)))  # inf is invalid too
    fx, fy, cx, cy = (f32(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    yr = (np.arange(h, dtype=f32) - cy) / fy
    out = np.empty((h, w, 3), dtype=f32)
    ok = np.empty((h, w), dtype=bool)
    B = max(1, min(block_rows, h))
    L = B * P
    Zb = np.full((B + 2) * P + 2, np.nan, dtype=f32)  # the block and a row above and below,
    Db = np.empty_like(Zb)  # with one spare element at each end
    Zrows = Zb[1:-1].reshape(B + 2, P)
    xr = np.tile((np.arange(-1, w + 1, dtype=f32) - cx) / fx, B)
    ones, lo, hi = np.ones(Zb.size, f32), np.full(L, -_BIG, f32), np.full(L, _BIG, f32)
    gu, gv, gpp, gpm, nx, ny, G, r2, W, Sz, t, c = (np.empty(L, f32) for _ in range(12))
    m, vc, tb = np.empty(L, bool), np.empty(L, bool), np.empty(L, bool)
    add, sub, mul, div, fmax, fmin, sqrt = np.add, np.subtract, np.multiply, np.divide, np.fmax, np.fmin, np.sqrt
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for r0 in range(0, h, B):
            n = min(B, h - r0)
            Ln = n * P
            if Ln < L:  # the last block: the first Ln elements of every buffer
                xr, lo, hi, gu, gv, gpp, gpm, nx, ny, G, r2, W, Sz, t, c, m, vc, tb = (
                    a[:Ln] for a in (xr, lo, hi, gu, gv, gpp, gpm, nx, ny, G, r2, W, Sz, t, c, m, vc, tb))
            a0, a1 = max(r0 - 1, 0), min(r0 + n + 1, h)  # image rows in the buffer
            Zrows[a0 - r0 + 1 : a1 - r0 + 1, 1:-1] = z[a0:a1]
            if r0 == 0:
                Zrows[0] = np.nan
            if r0 + n == h:
                Zrows[n + 1] = np.nan
            end = (n + 2) * P + 2
            zb = z[a0:a1]  # no invalid depth in the block and the rows around it (NaN: False):
            clean = bool(zb.min() > 0) and bool(zb.max() <= zmax)
            if not clean:  # invalid depth -> NaN (NaN compares False)
                bad = np.greater(Zb[:end], 0)
                bad &= Zb[:end] <= zmax
                np.logical_not(bad, out=bad)
                Zb[:end][bad] = np.nan
            np.divide(ones[:end], Zb[:end], out=Db[:end])

            def at(buf, dv, du):  # pixel (r0 + i, j) of the block is element i P + j + 1 of the slice
                o = 1 + P + dv * P + du
                return buf[o : o + Ln]

            Zc, Dc = at(Zb, 0, 0), at(Db, 0, 0)
            np.isfinite(Zc, out=vc)
            for g, (a, b) in ((gu, ((0, 1), (0, -1))), (gv, ((1, 0), (-1, 0)))):
                Da, Dd = at(Db, *a), at(Db, *b)
                np.subtract(Da, Dd, out=g)  # SNE's central difference, [-1, 0, 1]
                # One side invalid or outside the image: the one-sided difference, same scale.
                if clean:  # only the image border: known positions
                    if g is gu:  # first and last column
                        g[1::P] = f32(2.0) * (Da[1::P] - Dc[1::P])
                        g[w::P] = f32(2.0) * (Dc[w::P] - Dd[w::P])
                    else:  # first and last row of the image
                        if r0 == 0:
                            g[1 : w + 1] = f32(2.0) * (Da[1 : w + 1] - Dc[1 : w + 1])
                        if r0 + n == h:
                            g[Ln - P + 1 : Ln - 1] = f32(2.0) * (Dc[Ln - P + 1 : Ln - 1] - Dd[Ln - P + 1 : Ln - 1])
                    continue
                np.isnan(g, out=m)
                m &= vc
                idx = np.flatnonzero(m)
                if idx.size:
                    da, dd, dc = Da[idx], Dd[idx], Dc[idx]
                    g[idx] = f32(2.0) * np.where(np.isnan(da), dc - dd, da - dc)
            np.add(gu, gv, out=gpp)
            np.subtract(gu, gv, out=gpm)
            delta = {"gu": gu, "gv": gv, "gpp": gpp, "gpm": gpm}
            np.multiply(gu, fx, out=nx)
            np.multiply(gv, fy, out=ny)
            np.multiply(nx, xr, out=G)
            np.multiply(ny.reshape(n, P), yr[r0 : r0 + n, None], out=t.reshape(n, P))
            G += t
            np.multiply(nx, nx, out=r2)
            np.multiply(ny, ny, out=t)
            r2 += t
            one = ones[:Ln]
            for k, ((dv, du), name, sign) in enumerate(_SNE_NEIGHBOURS):
                Zq = at(Zb, dv, du)
                sub(Zc, Zq, t)  # dZ = Z_p - Z_q
                div(Zq, t, t)
                mul(t, delta[name], t)
                (sub if sign > 0 else add)(G, t, t)  # nz_q = G -+ delta Z_q / dZ
                fmax(t, lo, t)  # NaN -> -BIG, +-inf -> +-BIG: weight 0 below
                fmin(t, hi, t)
                mul(t, t, c)
                add(c, r2, c)
                sqrt(c, c)
                if k:
                    div(one, c, c)  # 1 / |(nx, ny, nz_q)|
                    add(W, c, W)
                    mul(t, c, t)
                    add(Sz, t, Sz)
                else:
                    div(one, c, W)
                    mul(t, W, Sz)
            # n = f (Sx, Sy, -Sz) with Sx = nx W, Sy = ny W, f = +-1 / |S|.
            np.isfinite(G, out=m)  # G is finite exactly where nx and ny are
            vc &= m  # the valid normals
            ok[r0 : r0 + n] = vc.reshape(n, P)[:, 1:-1]
            np.multiply(W, W, out=c)
            c *= r2
            np.multiply(Sz, Sz, out=t)
            c += t
            np.sqrt(c, out=gv)  # |S| = sqrt(W^2 r^2 + Sz^2)
            np.greater(gv, 0, out=m)  # False: SNE's NaN phi or theta, (0, 0, -1)
            m &= vc  # the normals computed below
            np.multiply(W, G, out=t)
            np.subtract(Sz, t, out=t)  # d = -(n . P) / Z for n = (Sx, Sy, -Sz)
            np.abs(t, out=gu)
            gu *= gv
            np.divide(t, gu, out=c)  # f = sign(d) / |S| (NaN where d == 0)
            np.equal(t, 0, out=tb)
            tb &= m
            if tb.any():  # n . P == 0 exactly: SNE's own sign, -sign(Sz), then y <= 0
                f = np.where(np.signbit(Sz[tb]), f32(1.0), f32(-1.0)) / gv[tb]
                c[tb] = np.where(f * ny[tb] > 0, -f, f)
            np.logical_xor(vc, m, out=vc)  # valid but |S| == 0 or NaN: (0, 0, -1)
            m[0::P] = True  # the border columns are dropped anyway
            m[P - 1 :: P] = True
            partial = not m.all()
            if partial:  # as factors: keep 1/0, and 1 where (0, 0, -1)
                np.copyto(gu, m)
                np.copyto(gv, vc)
            W *= c
            np.negative(c, out=c)
            for i, (a, s) in enumerate(((nx, W), (ny, W), (Sz, c))):
                np.multiply(a, s, out=t)
                if partial:  # elsewhere t is NaN or any number, even +-inf: made +0 (or -1)
                    np.fmin(t, hi, out=t)
                    np.fmax(t, lo, out=t)
                    t *= gu
                    if i == 2:
                        t -= gv
                out[r0 : r0 + n, :, i] = t.reshape(n, P)[:, 1:-1]
    return out, ok


def _normals_median4(depth: np.ndarray, K: np.ndarray, max_depth: float = np.inf,
                     return_mask: bool = False):
    """'median4' normals (see the module docstring). depth: (H, W) metres (0 or non-finite =
    invalid); K: (3, 3).

    Returns (H, W, 3) float32 unit vectors (0 where invalid), and with ``return_mask`` also the
    (H, W) bool validity mask. Vectorised over pixels; float32 throughout.
    """
    z = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(z) & (z > 0) & (z <= max_depth)
    z = np.where(valid, z, np.float32(np.nan))
    fx, fy, cx, cy = (np.float32(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    h, w = z.shape
    X = z * ((np.arange(w, dtype=np.float32) - cx) / fx)[None, :]
    Y = z * ((np.arange(h, dtype=np.float32) - cy) / fy)[:, None]
    # One NaN-padded copy of each map; neighbours are then views, not copies.
    Xp, Yp, Zp = (np.pad(a, 1, constant_values=np.nan) for a in (X, Y, z))
    with np.errstate(divide="ignore", invalid="ignore"):
        Ip = 1.0 / Zp

        def at(a, dy, dx):
            return a[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

        # Central differences of inverse depth (NaN wherever a stencil pixel is invalid).
        nx = (at(Ip, 0, 1) - at(Ip, 0, -1)) * (0.5 * fx)
        ny = (at(Ip, 1, 0) - at(Ip, -1, 0)) * (0.5 * fy)
        nz_i = np.empty((4, h, w), dtype=np.float32)
        tmp = np.empty((h, w), dtype=np.float32)
        for k, (dy, dx) in enumerate(_AXES):
            out = nz_i[k]
            np.subtract(at(Xp, dy, dx), at(Xp, -dy, -dx), out=out)
            out *= nx
            np.subtract(at(Yp, dy, dx), at(Yp, -dy, -dx), out=tmp)
            tmp *= ny
            out += tmp
            np.subtract(at(Zp, dy, dx), at(Zp, -dy, -dx), out=tmp)
            np.divide(out, tmp, out=out)
            np.negative(out, out=out)
        nz = _median_of_finite(nz_i)
        # No finite estimate although the stencil is valid: every depth difference across the
        # pixel is 0, i.e. a fronto-parallel patch, whose normal is along z.
        np.copyto(nz, np.float32(1.0), where=np.isnan(nz) & np.isfinite(nx) & np.isfinite(ny) & valid)
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        # Face the camera: n . P < 0, i.e. flip where it is positive.
        sign = np.where(nx * X + ny * Y + nz * z > 0, np.float32(-1.0), np.float32(1.0)) / norm
    ok = valid & np.isfinite(sign) & np.isfinite(nx) & np.isfinite(ny) & np.isfinite(nz)
    sign = np.where(ok, sign, np.float32(0.0))
    n = np.stack([np.where(ok, nx * sign, 0), np.where(ok, ny * sign, 0), np.where(ok, nz * sign, 0)],
                 axis=-1).astype(np.float32)
    return (n, ok) if return_mask else n


def surface_normals_torch(depth: torch.Tensor, K: torch.Tensor, max_depth: float = float("inf"),
                          estimator: str = "sne"):
    """Batched :func:`surface_normals` on any device (same estimators, same conventions).

    depth: (B, H, W) metres; K: (B, 3, 3) or (3, 3). Returns normals (B, 3, H, W) float32 (0 where
    invalid) and the mask (B, H, W) bool. Agrees with the numpy version to float32 rounding.
    """
    _check_estimator(estimator)
    if estimator == "sne":
        return _sne_torch(depth, K, max_depth)
    return _median4_torch(depth, K, max_depth)


def _sne_torch(depth: torch.Tensor, K: torch.Tensor, max_depth: float):
    """SNE, batched, with the algebra of :func:`_sne_numpy` (plain tensors, no blocking)."""
    z = depth.float()
    b, h, w = z.shape
    K = K.to(z).expand(b, 3, 3) if K.dim() == 2 else K.to(z)
    valid = torch.isfinite(z) & (z > 0) & (z <= max_depth)
    nan = torch.tensor(float("nan"), device=z.device)
    Zp = F.pad(torch.where(valid, z, nan), (1, 1, 1, 1), value=float("nan"))
    Dp = 1.0 / Zp

    def at(a, dv, du):
        return a[:, 1 + dv : 1 + dv + h, 1 + du : 1 + du + w]

    Zc, Dc = at(Zp, 0, 0), at(Dp, 0, 0)

    def grad(a, c):  # SNE's central difference; one-sided (same scale) where one side is invalid
        Da, Dd = at(Dp, *a), at(Dp, *c)
        one_sided = 2.0 * torch.where(torch.isnan(Da), Dc - Dd, Da - Dc)
        g = Da - Dd
        return torch.where(torch.isnan(g), one_sided, g)

    gu, gv = grad((0, 1), (0, -1)), grad((1, 0), (-1, 0))
    ok = valid & torch.isfinite(gu) & torch.isfinite(gv)
    fx, fy = K[:, 0, 0].view(b, 1, 1), K[:, 1, 1].view(b, 1, 1)
    cx, cy = K[:, 0, 2].view(b, 1, 1), K[:, 1, 2].view(b, 1, 1)
    xr = (torch.arange(w, device=z.device, dtype=z.dtype).view(1, 1, w) - cx) / fx
    yr = (torch.arange(h, device=z.device, dtype=z.dtype).view(1, h, 1) - cy) / fy
    nx, ny = gu * fx, gv * fy
    G = nx * xr + ny * yr
    r2 = nx * nx + ny * ny
    delta = {"gu": gu, "gv": gv, "gpp": gu + gv, "gpm": gu - gv}
    W = torch.zeros_like(z)
    Sz = torch.zeros_like(z)
    for (dv, du), name, sign in _SNE_NEIGHBOURS:
        Zq = at(Zp, dv, du)
        t = G - sign * delta[name] * (Zq / (Zc - Zq))  # nz_q
        t = torch.nan_to_num(t, nan=-_BIG, posinf=_BIG, neginf=-_BIG)  # dropped: weight 0
        c = torch.rsqrt(t * t + r2)
        W += c
        Sz += t * c
    norm = torch.sqrt(W * W * r2 + Sz * Sz)
    d = Sz - W * G  # -(n . P) / Z for n = (Sx, Sy, -Sz)
    f = torch.sign(d) / norm
    sne = torch.where(torch.signbit(Sz), 1.0, -1.0) / norm  # SNE's own sign, kept where d == 0
    sne = torch.where(sne * ny > 0, -sne, sne)
    f = torch.where(d == 0, sne, f)
    n = torch.stack([nx * W * f, ny * W * f, -Sz * f], 1)
    flat = ok & ~(norm > 0)  # SNE: NaN phi or theta -> (0, 0, -1)
    n = torch.where(flat[:, None], torch.tensor([0.0, 0.0, -1.0], device=z.device).view(1, 3, 1, 1), n)
    n = torch.where(ok[:, None], n, torch.zeros_like(n))
    return n, ok


def _median4_torch(depth: torch.Tensor, K: torch.Tensor, max_depth: float):
    """The 'median4' estimator, batched."""
    z = depth.float()
    b, h, w = z.shape
    K = K.to(z).expand(b, 3, 3) if K.dim() == 2 else K.to(z)
    valid = torch.isfinite(z) & (z > 0) & (z <= max_depth)
    z = torch.where(valid, z, torch.full_like(z, float("nan")))
    fx, fy = K[:, 0, 0].view(b, 1, 1), K[:, 1, 1].view(b, 1, 1)
    cx, cy = K[:, 0, 2].view(b, 1, 1), K[:, 1, 2].view(b, 1, 1)
    u = torch.arange(w, device=z.device, dtype=z.dtype).view(1, 1, w)
    v = torch.arange(h, device=z.device, dtype=z.dtype).view(1, h, 1)
    X, Y = z * (u - cx) / fx, z * (v - cy) / fy
    P = torch.stack([X, Y, z], 1)  # (B, 3, H, W)
    padded = F.pad(torch.cat([P, (1.0 / z)[:, None]], 1), (1, 1, 1, 1), value=float("nan"))

    def at(dy, dx):
        return padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    inv_r, inv_l, inv_d, inv_u = at(0, 1)[:, 3], at(0, -1)[:, 3], at(1, 0)[:, 3], at(-1, 0)[:, 3]
    nx = (inv_r - inv_l) * 0.5 * fx
    ny = (inv_d - inv_u) * 0.5 * fy
    nz_i = []
    for dy, dx in _AXES:
        d = at(dy, dx) - at(-dy, -dx)
        nz_i.append(-(nx * d[:, 0] + ny * d[:, 1]) / d[:, 2])
    nz_i = torch.stack(nz_i, 0)
    finite = torch.isfinite(nz_i)
    count = finite.sum(0)
    # Median of the finite estimates, averaging the two middle ones for an even count (as numpy).
    srt = torch.sort(torch.where(finite, nz_i, torch.full_like(nz_i, float("inf"))), dim=0).values
    c = count.clamp(min=1)[None]
    nz = 0.5 * (srt.gather(0, (c - 1) // 2) + srt.gather(0, c // 2))[0]
    fronto = (count == 0) & torch.isfinite(nx) & torch.isfinite(ny) & valid  # see the numpy version
    nz = torch.where(count > 0, nz, torch.where(fronto, torch.ones_like(nz), torch.full_like(nz, float("nan"))))
    n = torch.stack([nx, ny, nz], 1)
    n = n / torch.linalg.vector_norm(n, dim=1, keepdim=True)
    facing = (n * P).sum(1, keepdim=True)
    n = torch.where(facing > 0, -n, n)
    ok = valid & torch.isfinite(n).all(1)
    n = torch.where(ok[:, None], n, torch.zeros_like(n))
    return n, ok


def encode_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit vectors + mask -> uint16 (H, W, 3): 1 + (n + 1) / 2 * 65534, 0 = invalid.
    Quantisation step 3e-5."""
    q = np.round((np.clip(normals, -1, 1) + 1.0) * 0.5 * 65534.0) + 1.0
    return np.where(valid[..., None], q, 0).astype(np.uint16)


def decode_normals(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_normals`: (normals float32, valid bool)."""
    valid = (raw > 0).all(-1)
    n = (raw.astype(np.float32) - 1.0) / 65534.0 * 2.0 - 1.0
    return np.where(valid[..., None], n, 0).astype(np.float32), valid
