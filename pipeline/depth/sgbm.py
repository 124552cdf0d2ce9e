"""OpenCV semi-global matching with hole filling: stereo depth that needs no weights."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from pipeline.depth.base import DepthBackend, disparity_to_depth, register_backend
from pipeline.sources.base import Frame


def fill_holes(disp: np.ndarray) -> np.ndarray:
    """Fill invalid (<= 0) disparities row by row with the smaller of the nearest valid values
    to the left and right: holes are mostly occlusions, which belong to the background."""
    h, w = disp.shape
    valid = disp > 0
    idx = np.where(valid, np.arange(w)[None, :], -1)
    left = np.maximum.accumulate(idx, axis=1)
    right_idx = np.where(valid, np.arange(w)[None, :], w)
    right = np.minimum.accumulate(right_idx[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    lv = np.where(left >= 0, disp[rows, np.clip(left, 0, w - 1)], np.inf)
    rv = np.where(right < w, disp[rows, np.clip(right, 0, w - 1)], np.inf)
    filled = np.minimum(lv, rv)
    out = np.where(valid, disp, filled)
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)


@register_backend("sgbm")
class SGBMBackend(DepthBackend):
    def __init__(self, max_disparity: int = 96, block_size: int = 5, max_depth: float = 250.0, **_):
        self.num_disp = int(np.ceil(max_disparity / 16) * 16)
        self.block = block_size
        self.max_depth = max_depth

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 pair -> (H, W) float32 disparity in pixels, holes filled."""
        b = self.block
        matcher = cv2.StereoSGBM_create(minDisparity=0, numDisparities=self.num_disp, blockSize=b,
                                        P1=8 * 3 * b * b, P2=32 * 3 * b * b, disp12MaxDiff=1,
                                        uniquenessRatio=5, speckleWindowSize=50, speckleRange=2,
                                        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
        # Pad both images on the left so the matcher's blind band (its first numDisparities
        # columns) falls outside the picture; cropped off again below.
        pad = self.num_disp
        gl, gr = (cv2.copyMakeBorder(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), 0, 0, pad, 0, cv2.BORDER_REPLICATE)
                  for x in (left, right))
        disp = matcher.compute(gl, gr)[:, pad:].astype(np.float32) / 16.0  # fixed point, 4 fractional bits
        return fill_holes(np.where(disp > 0, disp, 0.0))

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        out = []
        for f in frames:
            self.require_stereo(f)
            out.append(disparity_to_depth(self.disparity(f.rgb, f.right_rgb), f.K[0, 0], f.baseline,
                                          self.max_depth))
        return out
