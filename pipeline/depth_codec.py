"""Depth maps on disk, the two encodings the project reads and writes.

* metres x 256 in a uint16 PNG, 0 = invalid: the KITTI depth convention, used for the depth
  stage's outputs (:func:`encode_depth`, :func:`decode_depth`, :func:`read_depth`); 4 mm steps,
  at most 255.996 m.
* centimetres in a uint16 PNG: vKITTI2's rendered depth (65535 = sky) and the synthetic
  side-cars (0 = no surface) (:func:`depth_to_cm`, :func:`decode_depth_cm`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.imageio import read_raw

DEPTH_SCALE = 256.0


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres -> uint16 metres * 256 (0 = invalid, at most 255.996 m)."""
    return np.clip(np.round(np.nan_to_num(depth) * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def decode_depth(raw: np.ndarray) -> np.ndarray:
    """uint16 metres * 256 -> (H, W) float32 metres, 0 = invalid."""
    return raw.astype(np.float32) / DEPTH_SCALE


def read_depth(out_dir: str | Path, sample_id: str) -> np.ndarray:
    """The depth stage's map of ``sample_id``: (H, W) float32 metres, 0 = invalid."""
    return decode_depth(read_raw(Path(out_dir) / f"{sample_id}.png", np.uint16))


def depth_to_cm(depth: np.ndarray, invalid_value: int) -> np.ndarray:
    """(H, W) metres (inf = no surface) -> uint16 centimetres; no surface or out of range ->
    ``invalid_value``."""
    cm = np.round(np.where(np.isfinite(depth), depth, 0.0) * 100.0)
    bad = ~np.isfinite(depth) | (cm >= 65535) | (cm <= 0)
    return np.where(bad, invalid_value, cm).astype(np.uint16)


def decode_depth_cm(raw: np.ndarray, invalid: int | None = None) -> np.ndarray:
    """uint16 centimetres -> float32 metres; 0 and ``invalid`` become 0 (invalid)."""
    depth = raw.astype(np.float32) / 100.0
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth
