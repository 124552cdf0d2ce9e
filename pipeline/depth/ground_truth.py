"""Depth the source already carries: vKITTI2's rendered depth, the synthetic side-car.

Readers decode "no surface" as 0 (vKITTI2's sky, 65535 cm; the side-car's 0), which stays 0;
rendered depth beyond ``max_depth`` (vKITTI2 renders to ~655 m) becomes 0 as in every other
backend (base's validity rule) instead of being clipped by the PNG encoding at 256 m.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.depth.base import DepthBackend, register_backend, valid_depth
from pipeline.errors import DataError
from pipeline.sources.base import Frame


@register_backend("ground_truth")
class GroundTruthBackend(DepthBackend):
    batch_size = 16

    def __init__(self, max_depth: float = 250.0, **_):
        self.max_depth = max_depth

    @classmethod
    def available(cls, cfg, reader, probe_id):
        ok = probe_id is not None and reader.ground_truth_depth(probe_id) is not None
        return ok, "the source carries depth" if ok else "the source carries no depth", {}

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        """(H, W) float32 metres per frame, 0 = no surface or beyond max_depth."""
        out = []
        for f in frames:
            if f.depth is None:
                raise DataError(f.id, "the source carries no depth for this frame (backend 'ground_truth')")
            out.append(valid_depth(f.depth, self.max_depth))
        return out
