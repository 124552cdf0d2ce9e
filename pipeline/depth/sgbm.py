"""OpenCV semi-global matching with hole filling: stereo depth that needs no weights."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from pipeline.depth.base import DepthBackend, disparity_to_depth, register_backend
from pipeline.sources.base import Frame


def fill_holes(disp: np.ndarray) -> np.ndarray:
    """Fill invalid (<= 0) disparities row by row by linear interpolation between the nearest
    valid values to the left and right (one side only at the image borders). Along a row the
    ground's disparity is constant and walls' is linear, so this beats copying a neighbour."""
    h, w = disp.shape
    valid = disp > 0
    cols = np.arange(w)[None, :]
    left = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    has_l, has_r = left >= 0, right < w
    lv = disp[rows, np.clip(left, 0, w - 1)]
    rv = disp[rows, np.clip(right, 0, w - 1)]
    frac = (cols - left) / np.maximum(right - left, 1)
    both = lv + (rv - lv) * frac
    filled = np.where(has_l & has_r, both, np.where(has_l, lv, np.where(has_r, rv, 0.0)))
    return np.where(valid, disp, filled).astype(np.float32)


@register_backend("sgbm")
class SGBMBackend(DepthBackend):
    def __init__(self, max_disparity: int = 64, block_size: int = 5, max_depth: float = 250.0, **_):
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
        # A 5x5 median removes isolated mismatches left after speckle filtering.
        return cv2.medianBlur(fill_holes(np.where(disp > 0, disp, 0.0)), 5)

    def predict(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        out = []
        for f in frames:
            self.require_stereo(f)
            out.append(disparity_to_depth(self.disparity(f.rgb, f.right_rgb), f.K[0, 0], f.baseline,
                                          self.max_depth))
        return out
