"""Turning relative (affine-invariant inverse) depth into metric depth.

Depth Anything's relative models predict ``pred ~ s / Z + t`` for unknown s > 0 and t.
Two ways to find (s, t):

* :func:`fit_to_sparse` — least squares of ``pred`` against 1 / Z on pixels where sparse
  metric depth exists (LiDAR, projected disparity).
* :func:`fit_to_ground` — the camera's height above a flat ground plane and its orientation
  (nuImages' calibrated_sensor gives both) fix the true inverse depth of every ground pixel:
  a ray r = K^-1 (u, v, 1) meets the plane {X : up . X = -h} at Z = -h / (up . r). Least
  squares of ``pred`` against that on pixels labelled driveable surface gives (s, t).

Both trim outliers (objects on the road, label noise) by refitting on the inliers.
"""

from __future__ import annotations

import numpy as np

from pipeline.depth.base import valid_depth
from pipeline.errors import DataError


def _robust_affine(x: np.ndarray, y: np.ndarray, rounds: int = 3, keep: float = 0.8) -> tuple[float, float]:
    """Least squares y ~ s x + t, refit ``rounds`` times on the ``keep`` fraction of smallest
    residuals."""
    sel = np.ones(len(x), bool)
    for _ in range(rounds):
        A = np.stack([x[sel], np.ones(sel.sum())], 1)
        (s, t), *_ = np.linalg.lstsq(A, y[sel], rcond=None)
        res = np.abs(s * x + t - y)
        sel = res <= np.quantile(res, keep)
    return float(s), float(t)


def fit_to_sparse(pred: np.ndarray, depth: np.ndarray, min_points: int = 20) -> tuple[float, float]:
    """(s, t) with pred ~ s / depth + t on pixels where depth > 0."""
    m = (depth > 0) & np.isfinite(pred)
    if m.sum() < min_points:
        raise DataError("sparse depth", f"only {int(m.sum())} valid pixels to align with (need {min_points})")
    s, t = _robust_affine(1.0 / depth[m], pred[m])
    return s, t


def ground_inverse_depth(K: np.ndarray, up: np.ndarray, height: float, shape: tuple[int, int]) -> np.ndarray:
    """Inverse depth 1/Z (1/m) of the ground plane at every pixel, 0 above the horizon.

    K: (3, 3). up: unit 'up' vector in the camera frame (x right, y down, z forward).
    height: camera height above the ground in metres.
    """
    h, w = shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    inv = -(rays @ up) / height  # 1/Z = -(up . r) / h
    return np.where(inv > 0, inv, 0.0)


def fit_to_ground(pred: np.ndarray, ground_mask: np.ndarray, K: np.ndarray, up: np.ndarray, height: float,
                  min_points: int = 50) -> tuple[float, float]:
    """(s, t) with pred ~ s / Z + t on ``ground_mask`` pixels, Z from the ground plane."""
    inv = ground_inverse_depth(K, up, height, pred.shape)
    m = ground_mask & (inv > 0) & np.isfinite(pred)
    if m.sum() < min_points:
        raise DataError("ground mask", f"only {int(m.sum())} driveable-surface pixels below the horizon "
                        f"(need {min_points}) to align relative depth with the camera height")
    return _robust_affine(inv[m], pred[m])


def to_metric(pred: np.ndarray, s: float, t: float, max_depth: float = 250.0) -> np.ndarray:
    """Invert pred = s / Z + t. Returns (H, W) float32 metres; 0 (invalid) where Z is not
    positive (the sky: relative inverse depth near 0 maps to Z <= 0 or very far) or beyond
    ``max_depth``, which is not clipped (pipeline.depth.base's validity rule)."""
    inv = (pred - t) / s
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(inv > 0, 1.0 / np.maximum(inv, 1e-12), 0.0)
    return valid_depth(depth, max_depth)
