"""Surface normals from metric depth with SNE, the estimator of SNE-RoadSeg (Fan et al., ECCV 2020).

For a locally planar surface n . P + d = 0 seen by a pinhole camera, the inverse depth
1/Z is affine in the pixel coordinates, and its image gradients give the normal's first two
components up to one common scale:

    nx = fx * d(1/Z)/du,    ny = fy * d(1/Z)/dv.

The third follows from 3-D differences between neighbours, which lie on the same plane:
nx dX + ny dY + nz dZ = 0, so nz_i = -(nx dX_i + ny dY_i) / dZ_i. We take the differences
across the pixel along its 4 neighbour axes (left-right, up-down and both diagonals: the 8
neighbours in opposite pairs, second-order accurate), then, as SNE, a robust average of the
nz_i (the median of the finite ones), and normalise. Convention: camera frame x
right, y down, z forward; normals face the camera (n . P < 0), so flat ground gives
(0, -1, 0) and a fronto-parallel wall (0, 0, -1).

Invalid depth (0, non-finite, beyond ``max_depth``) gives an invalid normal: the returned
vector is 0 and the validity mask is False. Pixels whose gradient stencil or all neighbours
are invalid are invalid too.
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


def surface_normals(depth: np.ndarray, K: np.ndarray, max_depth: float = np.inf,
                    return_mask: bool = False, estimator: str = "median4"):
    """Surface normals with the named estimator (see the module docstring).

    depth: (H, W) metres (0 or non-finite = invalid); K: (3, 3). Returns (H, W, 3) float32 unit
    vectors facing the camera (0 where invalid), and with ``return_mask`` the (H, W) bool mask.
    """
    if estimator == "median4":
        return _normals_median4(depth, K, max_depth, return_mask)
    if estimator == "sne":
        raise NotImplementedError("the exact SNE fusion is being written (issue 7)")
    raise ValueError(f"unknown normals estimator {estimator!r}; expected one of {ESTIMATORS}")


def _normals_median4(depth: np.ndarray, K: np.ndarray, max_depth: float = np.inf,
                     return_mask: bool = False):
    """SNE normals. depth: (H, W) metres (0 or non-finite = invalid); K: (3, 3).

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


def surface_normals_torch(depth: torch.Tensor, K: torch.Tensor, max_depth: float = float("inf")):
    """Batched SNE on any device. depth: (B, H, W) metres; K: (B, 3, 3) or (3, 3).

    Returns normals (B, 3, H, W) float32 (0 where invalid) and the mask (B, H, W) bool.
    """
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
