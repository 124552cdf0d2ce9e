"""Geometry quality: estimated surface normals against the normals of the best depth the source
carries (vKITTI2's rendered depth, the synthetic side-car of KITTI and nuImages), computed with
the same estimator, and the valid shares of the estimated normals and depth.

Pure functions. Per frame, :func:`frame_geometry` returns sums and a histogram of angular errors
(so that frames pool exactly, except the median, which is read from the histogram to within
``BIN_DEG``); :func:`summarise_geometry` turns the pooled parts into

* ``median_deg``, ``mean_deg``: of the angle between estimated and reference normals, over the
  pixels where both are valid (``pixels``);
* ``within_11.25``, ``within_22.5``, ``within_30``: the share of those pixels whose error is
  below 11.25 / 22.5 / 30 degrees (the usual normal-estimation thresholds);
* ``normals_valid_share``, ``depth_valid_share``: the share of all pixels with an estimated
  normal / depth, and ``reference_valid_share``: with a reference normal.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
BIN_DEG = 0.01
_N_BINS = int(round(180.0 / BIN_DEG))


def angular_error_deg(n_est: np.ndarray, n_ref: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals, twice -> (...) float64 angle between them in degrees, in [0, 180].
    The vectors are renormalised first (uint16-encoded normals are unit only to ~1e-4); a zero
    vector gives NaN."""
    a = np.asarray(n_est, dtype=np.float64)
    b = np.asarray(n_ref, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("...i,...i->...", a, b) / np.sqrt(np.einsum("...i,...i->...", a, a)
                                                          * np.einsum("...i,...i->...", b, b))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def frame_geometry(n_est: np.ndarray, valid_est: np.ndarray, n_ref: np.ndarray | None = None,
                   valid_ref: np.ndarray | None = None, depth_valid: np.ndarray | None = None) -> dict:
    """Poolable sums for one frame.

    n_est, n_ref: (H, W, 3) normals; valid_est, valid_ref: (H, W) bool masks; depth_valid: (H, W)
    bool mask of the estimated depth (default: not counted). Without a reference (``n_ref``
    None) only the valid counts are filled in.
    """
    valid_est = np.asarray(valid_est, dtype=bool)
    part = {"total": int(valid_est.size), "normals_valid": int(valid_est.sum()),
            "depth_valid": int(np.count_nonzero(depth_valid)) if depth_valid is not None else None,
            "reference_valid": 0, "n": 0, "sum_deg": 0.0, "within": [0] * len(THRESHOLDS_DEG),
            "hist": None}
    if n_ref is None:
        return part
    valid_ref = np.asarray(valid_ref, dtype=bool)
    both = valid_est & valid_ref
    err = angular_error_deg(n_est[both], n_ref[both])
    err = err[np.isfinite(err)]
    part.update(reference_valid=int(valid_ref.sum()), n=int(err.size), sum_deg=float(err.sum()),
                within=[int((err < t).sum()) for t in THRESHOLDS_DEG],
                hist=np.bincount(np.minimum((err / BIN_DEG).astype(np.int64), _N_BINS - 1),
                                 minlength=_N_BINS))
    return part


def _median_from_histogram(hist: np.ndarray) -> float:
    """The median of values binned at BIN_DEG, interpolated linearly inside its bin."""
    cum = np.cumsum(hist)
    half = cum[-1] / 2.0
    k = int(np.searchsorted(cum, half))
    before = cum[k - 1] if k > 0 else 0
    return float((k + (half - before) / max(hist[k], 1)) * BIN_DEG)


def summarise_geometry(parts: Iterable[Mapping]) -> dict:
    """Pool :func:`frame_geometry` parts of several frames (see the module docstring)."""
    parts = list(parts)
    total = sum(p["total"] for p in parts)
    out = {"frames": len(parts),
           "normals_valid_share": sum(p["normals_valid"] for p in parts) / max(total, 1),
           "depth_valid_share": (sum(p["depth_valid"] for p in parts) / max(total, 1)
                                 if parts and all(p["depth_valid"] is not None for p in parts) else None)}
    with_ref = [p for p in parts if p["hist"] is not None]
    if not with_ref:
        return {**out, "vs_reference": None}
    n = sum(p["n"] for p in with_ref)
    ref_total = sum(p["total"] for p in with_ref)
    vs = {"frames": len(with_ref), "pixels": n,
          "reference_valid_share": sum(p["reference_valid"] for p in with_ref) / max(ref_total, 1)}
    if n:
        hist = np.sum([p["hist"] for p in with_ref], axis=0)
        vs.update(median_deg=_median_from_histogram(hist), mean_deg=sum(p["sum_deg"] for p in with_ref) / n,
                  **{f"within_{t:g}": sum(p["within"][i] for p in with_ref) / n
                     for i, t in enumerate(THRESHOLDS_DEG)})
    return {**out, "vs_reference": vs}
