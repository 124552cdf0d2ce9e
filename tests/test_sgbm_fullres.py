"""SGBM at KITTI's full resolution (1242x375) with the default settings, which are stated at
320 px width and scaled with the image (pipeline/depth/sgbm.py, issue 18).

Synthetic KITTI frames rendered by the project's generator at full size; the reference is the
side-car depth. "Covered" pixels emulate LiDAR coverage without its sparsity: a side-car depth in
(0, 80] m and not labelled sky. Density and D1 are computed here with numpy from the side-car,
never by the code under test. D1-all counts a pixel as an error where |d - d_gt| > 3 px and
> 5 % of d_gt, and where it has no depth (a hole).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.depth.base import create_backend
from pipeline.sources import create_reader
from pipeline.sources.kitti import CLASS_NAMES
from pipeline.sources.synthetic import generate

SKY = CLASS_NAMES.index("sky")
MAX_DEPTH = 80.0


@pytest.fixture(scope="module")
def full_frames(tmp_path_factory):
    """Three frames at 1242x375 (the seed of test_depth's full-size test), with the side-car."""
    root = tmp_path_factory.mktemp("kitti1242")
    generate("kitti", root, n_images=3, width=1242, height=375, seed=11, workers=1, progress=False)
    r = create_reader("kitti", root)
    return [(r.frame(i), r.ground_truth_depth(i)) for i in r.ids()]


@pytest.fixture(scope="module")
def full_outputs(full_frames):
    """The default backend's disparity per frame (max_depth as KITTI's: 80 m)."""
    b = create_backend("sgbm", max_depth=MAX_DEPTH)
    return [b.disparity(f.rgb, f.right_rgb) for f, _ in full_frames]


def _counts(disp: np.ndarray, frame, sidecar: np.ndarray) -> tuple[int, int, int]:
    """(covered, kept, kept but wrong) for one frame."""
    covered = (sidecar > 0) & (sidecar <= MAX_DEPTH) & (frame.label != SKY)
    d_gt = np.zeros_like(sidecar, dtype=np.float64)
    d_gt[covered] = frame.K[0, 0] * frame.baseline / sidecar[covered].astype(np.float64)
    kept = covered & (disp > 0)
    err = np.abs(disp.astype(np.float64) - d_gt)
    wrong = kept & (err > 3.0) & (err > 0.05 * d_gt)
    return int(covered.sum()), int(kept.sum()), int(wrong.sum())


def test_counts_helper_is_right():
    """The scoring helper itself, on a hand-made 1x5 frame: covered are the 3 middle pixels."""

    class F:
        K = np.array([[100.0, 0, 0], [0, 100, 0], [0, 0, 1]])
        baseline = 0.5
        label = np.array([[SKY, 0, 0, 0, 0]])

    sidecar = np.array([[10.0, 10.0, 5.0, 1.0, 0.0]], np.float32)  # d_gt: -, 5, 10, 50 (> 80 m: none), -
    disp = np.array([[5.0, 5.5, 14.0, 0.0, 3.0]], np.float32)
    # u=1: |0.5| ok; u=2: |4| > 3 and > 0.5 -> wrong; u=3: hole; u=0 sky, u=4 not covered.
    assert _counts(disp, F, sidecar) == (3, 2, 1)


def test_full_resolution_is_dense_and_right(full_frames, full_outputs):
    n = kept = wrong = 0
    for (f, sidecar), disp in zip(full_frames, full_outputs):
        assert disp.shape == (375, 1242) and disp.dtype == np.float32
        c, k, b = _counts(disp, f, sidecar)
        print(f"{f.id}: density {k / c:.3f}, D1-all {(b + c - k) / c:.3f}, D1 kept {b / max(k, 1):.4f}")
        n, kept, wrong = n + c, kept + k, wrong + b
    density, d1_all = kept / n, (wrong + n - kept) / n
    print(f"1242x375, 3 frames: density {density:.3f}, D1-all {d1_all:.3f} (holes as errors), "
          f"D1 kept {wrong / kept:.4f}")
    # Achieved on these 3 frames: density 0.950, D1-all 0.066, D1 kept 0.017 (the benchmark's 16
    # frames of seed 1: 0.943, 0.082, 0.027; issue goal for D1-all: 0.08). Small margins.
    assert density >= 0.93
    assert d1_all <= 0.075
    assert wrong / kept <= 0.025


def test_full_resolution_sky_stays_invalid(full_frames, full_outputs):
    sky = sky_valid = 0
    for (f, _), disp in zip(full_frames, full_outputs):
        sky += int((f.label == SKY).sum())
        sky_valid += int(((f.label == SKY) & (disp > 0)).sum())
    assert sky > 10000
    print(f"sky pixels with depth at 1242x375: {sky_valid / sky:.1%}")
    assert sky_valid / sky < 0.10  # achieved: 7.0 %
