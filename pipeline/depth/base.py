"""One interface for every depth source, the backend registry, and the validity rule.

Validity rule (every backend, every output): a depth map is (H, W) float32 metres where a
pixel holds a value only if the backend measured or estimated it and it lies in
(0, max_depth]; everything else is 0 (invalid). In particular

* disparity <= 0 (no match, a hole) is 0, and depth beyond ``max_depth`` is 0, never clipped
  to ``max_depth``: a clipped value is a made-up surface at max_depth that later stages
  (normals, the students' geometry) would take for a measurement;
* Depth Anything: a relative prediction that maps to non-positive or beyond-range depth (the
  sky, which relative inverse depth puts near 0) is 0;
* CREStereo is dense by design (a disparity everywhere), so only the range rule removes pixels;
* ground_truth: what the source marks as no surface (vKITTI2's sky, the side-car's 0) stays 0.

Downstream, 0 means "no geometry here" (pipeline.depth_codec writes it as 0 in the PNGs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from pipeline.errors import DataError
from pipeline.registry import Registry
from pipeline.sources.base import Frame


class DepthBackend(ABC):
    """Turns frames into dense metric depth: a list of (H, W) float32 metres, 0 = invalid."""

    name: str = ""
    batch_size: int = 1

    @abstractmethod
    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]: ...

    @classmethod
    def available(cls, cfg, reader, probe_id: str | None) -> tuple[bool, str, dict]:
        """Can this backend run for ``reader`` with DepthConfig ``cfg``? Returns (ok, why,
        extra constructor options). The default: it needs no weights."""
        return True, "needs no weights", {}

    @staticmethod
    def require_stereo(frame: Frame) -> None:
        if frame.right_rgb is None or frame.baseline is None:
            raise DataError(frame.id, "this backend needs a stereo pair (right image and baseline)")


BACKENDS: Registry[DepthBackend] = Registry("depth backend")
register_backend = BACKENDS.register


def create_backend(name: str, **options) -> DepthBackend:
    return BACKENDS[name](**options)


def batches_by_shape(shapes: Sequence[tuple], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` items of equal shape, each group
    in input order: one forward per batch, since a batch tensor needs one size."""
    groups: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return [idx[k : k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def valid_depth(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """The validity rule applied to (H, W) metres: values outside (0, max_depth] and non-finite
    ones become 0. Returns float32 metres."""
    depth = np.asarray(depth)
    ok = np.isfinite(depth) & (depth > 0) & (depth <= max_depth)
    return np.where(ok, depth, 0.0).astype(np.float32)


def disparity_to_depth(disp: np.ndarray, fx: float, baseline: float, max_depth: float = 250.0) -> np.ndarray:
    """(H, W) disparity in pixels -> (H, W) float32 depth = fx * B / d in metres (fx in pixels,
    B in metres) where d > 0 and the depth is at most ``max_depth``; 0 (invalid) elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(disp > 0, fx * baseline / np.maximum(disp, 1e-6), 0.0)
    return valid_depth(depth, max_depth)
