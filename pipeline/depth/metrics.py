"""Depth quality against ground truth: AbsRel, RMSE, delta < 1.25."""

from __future__ import annotations

import numpy as np


def depth_errors(pred: np.ndarray, gt: np.ndarray, max_depth: float = 80.0) -> dict[str, float]:
    """Errors on pixels where gt is valid (0 < gt <= max_depth) and pred > 0.

    Returns sums over pixels (``n``, ``abs_rel_sum``, ``sq_sum``, ``delta_hits``) so that
    frames can be pooled; :func:`summarise` turns them into the metrics.
    """
    m = (gt > 0) & (gt <= max_depth) & (pred > 0) & np.isfinite(pred)
    p, g = pred[m].astype(np.float64), gt[m].astype(np.float64)
    ratio = np.maximum(p / g, g / p)
    return {"n": int(m.sum()), "abs_rel_sum": float((np.abs(p - g) / g).sum()),
            "sq_sum": float(((p - g) ** 2).sum()), "delta_hits": int((ratio < 1.25).sum())}


def summarise(parts: list[dict[str, float]]) -> dict[str, float]:
    n = sum(p["n"] for p in parts)
    if n == 0:
        return {"pixels": 0}
    return {"pixels": n, "abs_rel": sum(p["abs_rel_sum"] for p in parts) / n,
            "rmse": float(np.sqrt(sum(p["sq_sum"] for p in parts) / n)),
            "delta1": sum(p["delta_hits"] for p in parts) / n}
