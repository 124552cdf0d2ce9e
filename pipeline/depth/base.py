"""One interface for every depth source, and the backend registry."""

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


def disparity_to_depth(disp: np.ndarray, fx: float, baseline: float, max_depth: float = 250.0) -> np.ndarray:
    """depth = fx * B / d (metres) where d > 0, clipped to ``max_depth``; 0 elsewhere."""
    with np.errstate(divide="ignore"):
        depth = np.where(disp > 0, fx * baseline / np.maximum(disp, 1e-6), 0.0)
    return np.minimum(depth, max_depth).astype(np.float32)
