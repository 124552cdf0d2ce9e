"""Depth backends behind one interface (see base.DepthBackend), registered by name."""

from pipeline.depth import crestereo, depth_anything, ground_truth, sgbm  # noqa: F401  (register)
from pipeline.depth.base import BACKENDS, DepthBackend, create_backend, register_backend

__all__ = ["BACKENDS", "DepthBackend", "create_backend", "register_backend"]
