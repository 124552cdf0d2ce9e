"""Depth the source already carries: vKITTI2's rendered depth, the synthetic side-car."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.depth.base import DepthBackend, register_backend
from pipeline.errors import DataError
from pipeline.sources.base import Frame


@register_backend("ground_truth")
class GroundTruthBackend(DepthBackend):
    batch_size = 16

    def __init__(self, **_):
        pass

    @classmethod
    def available(cls, cfg, reader, probe_id):
        ok = probe_id is not None and reader.ground_truth_depth(probe_id) is not None
        return ok, "the source carries depth" if ok else "the source carries no depth", {}

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        out = []
        for f in frames:
            if f.depth is None:
                raise DataError(f.id, "the source carries no depth for this frame (backend 'ground_truth')")
            out.append(f.depth.astype(np.float32))
        return out
