"""Synthetic KITTI Semantics + KITTI 2015 stereo in the native layout (see pipeline.sources.kitti)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import write_text
from pipeline.depth_codec import depth_to_cm
from pipeline.imageio import write_image
from pipeline.labels import CITYSCAPES_COLORS
from pipeline.sources.kitti import SIDECAR_DIR
from pipeline.sources.synthetic.classes import N_INTERNAL, C
from pipeline.sources.synthetic.common import frame_rng, lut, run_jobs
from pipeline.sources.synthetic.render import render
from pipeline.sources.synthetic.scene import KITTI_POPULATION, KITTI_STYLE, make_camera, sample_scene, scaled_intrinsics

FULL_SIZE = (1242, 375)
FULL_K = (721.5377, 721.5377, 609.5593, 172.854)  # fx, fy, cx, cy of the KITTI 2015 rectified cameras
BASELINE = 0.5327  # metres between image_2 and image_3
CAM2_OFFSET = 0.0622  # camera 2 sits this far right of camera 0 (sets P_rect_02's Tx)

# Cityscapes label ids. Tram rails set in the road are road (Cityscapes labels only rails a car
# cannot drive on as "rail track"); a tram is "train" (on rails). Cityscapes has no class for
# temporary street clutter: barriers, cones, bags and wheeled bins are "dynamic" (5) and racks
# "static" (4), void ids that the 19-class train space ignores; a bicycle parked in a rack is
# still a bicycle.
CITYSCAPES_FROM_INTERNAL = lut({
    C.SKY: 23, C.ROAD: 7, C.LANE_MARKING: 7, C.SIDEWALK: 8, C.CURB: 8, C.TERRAIN: 22, C.BUILDING: 11,
    C.WALL: 12, C.FENCE: 13, C.POLE: 17, C.TRAFFIC_SIGN: 20, C.TRAFFIC_LIGHT: 19, C.VEGETATION: 21,
    C.TREE: 21, C.CAR: 26, C.VAN: 26, C.TRUCK: 27, C.PERSON: 24, C.RIDER: 25, C.BICYCLE: 33,
    C.MOTORCYCLE: 32, C.BUS: 28, C.TRAM: 31, C.RAIL: 7, C.BARRIER: 5, C.TRAFFIC_CONE: 5, C.DEBRIS: 5,
    C.PUSHABLE: 5, C.BICYCLE_RACK: 4,
}, N_INTERNAL)
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
for _id, _rgb in CITYSCAPES_COLORS.items():
    _COLOR_LUT[_id] = _rgb

# HDL-64E: 64 beams from +2 deg to -24.8 deg, mounted 0.08 m above and 0.27 m behind camera 0.
LIDAR_BEAMS_DEG = np.linspace(2.0, -24.8, 64)
LIDAR_OFFSET = np.array([0.0, -0.08, -0.27])
LIDAR_TOL_DEG = 0.1
LIDAR_RANGE = 80.0


@dataclass(frozen=True)
class KittiJob:
    root: str
    index: int
    width: int
    height: int
    seed: int


def intrinsics(width: int, height: int) -> np.ndarray:
    return scaled_intrinsics(*FULL_K, width / FULL_SIZE[0], height / FULL_SIZE[1])


def calib_text(K: np.ndarray, baseline: float) -> str:
    """calib_cam_to_cam.txt with the rectified projections of cameras 0-3."""
    fx = K[0, 0]
    # P_rect_0k = K [I | (tx, 0, 0)]: camera k's centre sits at x = -tx in camera 0's frame.
    # Camera 1 (grey right) is unused here but present in real files.
    offsets = {0: 0.0, 1: -0.5372, 2: CAM2_OFFSET, 3: CAM2_OFFSET - baseline}
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for cam in range(4):
        P = np.hstack([K, [[fx * offsets[cam]], [0.0], [0.0]]])
        lines += [
            f"S_rect_{cam:02d}: " + " ".join(f"{v:.6e}" for v in (K[0, 2] * 2 + 1, K[1, 2] * 2 + 1)),
            f"R_rect_{cam:02d}: " + " ".join(f"{v:.6e}" for v in np.eye(3).ravel()),
            f"P_rect_{cam:02d}: " + " ".join(f"{v:.6e}" for v in P.ravel()),
        ]
    return "\n".join(lines) + "\n"


def lidar_mask(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels a 64-beam LiDAR would hit: near a beam's elevation, in range, not sky."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    z = np.where(np.isfinite(depth), depth, 0.0)
    x, y = (u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z
    rel = np.stack([x, y, z], -1) - LIDAR_OFFSET
    elev = np.degrees(np.arctan2(-rel[..., 1], np.hypot(rel[..., 0], rel[..., 2])))
    near = np.abs(elev[..., None] - LIDAR_BEAMS_DEG).min(-1) < LIDAR_TOL_DEG
    return near & np.isfinite(depth) & (depth < LIDAR_RANGE)


def render_frame(job: KittiJob):
    """The left and right renders of one frame and K: a pure function of the job."""
    rng = frame_rng(job.seed, "kitti", job.index)
    scene, cam_x = sample_scene(rng, population=KITTI_POPULATION)
    K = intrinsics(job.width, job.height)
    cam = make_camera(rng, K, job.width, job.height, cam_x, KITTI_STYLE)
    return K, render(scene, cam, rng), render(scene, cam.shifted(BASELINE), rng)


def _frame(job: KittiJob) -> None:
    K, left, right = render_frame(job)
    root, name = Path(job.root) / "training", f"{job.index:06d}_10.png"
    ids = CITYSCAPES_FROM_INTERNAL[left.cls].astype(np.uint8)
    write_image(root / "image_2" / name, left.rgb)
    write_image(root / "image_3" / name, right.rgb)
    write_image(root / "semantic" / name, ids)
    write_image(root / "semantic_rgb" / name, _COLOR_LUT[ids])
    disp = np.where(lidar_mask(left.depth, K), K[0, 0] * BASELINE / left.depth, 0.0)
    write_image(root / "disp_occ_0" / name, np.clip(np.round(disp * 256), 0, 65535).astype(np.uint16))
    write_text(root / "calib_cam_to_cam" / f"{job.index:06d}.txt", calib_text(K, BASELINE))
    write_image(Path(job.root) / SIDECAR_DIR / name, depth_to_cm(left.depth, 0))


def write_kitti(root: Path, n_images: int, width: int, height: int, seed: int, workers: int = 1,
                progress: bool = True) -> None:
    jobs = [KittiJob(str(root), i, width, height, seed) for i in range(n_images)]
    run_jobs(_frame, jobs, workers, "synthesising KITTI", progress)
