"""Synthetic Virtual KITTI 2 in the native layout (see pipeline.sources.vkitti2).

As in the real dataset, each scene is one set of layouts rendered under several
variations (weather, time of day, camera rotated by 15/30 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import write_text
from pipeline.depth_codec import depth_to_cm
from pipeline.imageio import write_image
from pipeline.labels import VKITTI2_COLORS
from pipeline.sources.synthetic.classes import N_INTERNAL, C
from pipeline.sources.synthetic.common import frame_rng, run_jobs, split_evenly
from pipeline.sources.synthetic.render import render
from pipeline.sources.synthetic.scene import KITTI_STYLE, lighting, make_camera, sample_scene, scaled_intrinsics
from pipeline.sources.vkitti2 import SKY_DEPTH_CM

SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
FULL_SIZE = (1242, 375)
FULL_K = (725.0087, 725.0087, 620.5, 187.0)
BASELINE = 0.532725
YAW_OF_VARIATION = {"15-deg-left": -15.0, "15-deg-right": 15.0, "30-deg-left": -30.0, "30-deg-right": 30.0}

_CATEGORY_OF_INTERNAL = {
    C.SKY: "Sky", C.ROAD: "Road", C.LANE_MARKING: "Road", C.SIDEWALK: "Road", C.CURB: "Road",
    C.TERRAIN: "Terrain", C.BUILDING: "Building", C.WALL: "GuardRail", C.FENCE: "Misc", C.POLE: "Pole",
    C.TRAFFIC_SIGN: "TrafficSign", C.TRAFFIC_LIGHT: "TrafficLight", C.VEGETATION: "Vegetation",
    C.TREE: "Tree", C.CAR: "Car", C.VAN: "Van", C.TRUCK: "Truck",
    # vKITTI2 scenes are sampled without road users beyond cars, vans and trucks and without
    # street clutter (as the real dataset, whose clones of KITTI sequences have no pedestrians,
    # cyclists, buses or trams), so these never occur; were they drawn, vKITTI2 has no class
    # for them and they would be Undefined (ignored), never a colour colors.txt lacks.
    C.RAIL: "Road", **{c: "Undefined" for c in (C.PERSON, C.RIDER, C.BICYCLE, C.MOTORCYCLE, C.BUS, C.TRAM,
                                                C.BARRIER, C.TRAFFIC_CONE, C.DEBRIS, C.PUSHABLE, C.BICYCLE_RACK)},
}
_COLOR_OF_INTERNAL = np.array([VKITTI2_COLORS[_CATEGORY_OF_INTERNAL[C(i)]] for i in range(N_INTERNAL)],
                              dtype=np.uint8)


@dataclass(frozen=True)
class VKittiJob:
    root: str
    scene_index: int
    variation: str
    frame: int
    width: int
    height: int
    seed: int


def colors_text() -> str:
    return "Category r g b\n" + "".join(f"{k} {r} {g} {b}\n" for k, (r, g, b) in VKITTI2_COLORS.items())


def render_views(job: VKittiJob):
    """[(camera, render)] for Camera_0 and Camera_1 of one frame: a pure function of the job."""
    # The layout depends on (scene, frame) only, so every variation shows the same street.
    layout_rng = frame_rng(job.seed, "vkitti2", job.scene_index, job.frame)
    scene, cam_x = sample_scene(layout_rng)
    K = scaled_intrinsics(*FULL_K, job.width / FULL_SIZE[0], job.height / FULL_SIZE[1])
    cam0 = make_camera(layout_rng, K, job.width, job.height, cam_x, KITTI_STYLE,
                       yaw_offset=np.radians(YAW_OF_VARIATION.get(job.variation, 0.0)))
    light_rng = frame_rng(job.seed, "vkitti2/" + job.variation, job.scene_index, job.frame)
    scene.lighting = lighting(light_rng, job.variation)
    return [(cam, render(scene, cam, light_rng)) for cam in (cam0, cam0.shifted(BASELINE))]


def _frame(job: VKittiJob) -> list[str]:
    """Render and write one frame from both cameras; returns its extrinsic.txt rows."""
    seq = Path(job.root) / SCENES[job.scene_index] / job.variation / "frames"
    rows = []
    for cam_id, (cam, out) in enumerate(render_views(job)):
        write_image(seq / "rgb" / f"Camera_{cam_id}" / f"rgb_{job.frame:05d}.jpg", out.rgb)
        write_image(seq / "depth" / f"Camera_{cam_id}" / f"depth_{job.frame:05d}.png",
                    depth_to_cm(out.depth, SKY_DEPTH_CM))
        write_image(seq / "classSegmentation" / f"Camera_{cam_id}" / f"classgt_{job.frame:05d}.png",
                    _COLOR_OF_INTERNAL[out.cls])
        R_cw = cam.R_wc.T
        t = -R_cw @ cam.position
        E = np.eye(4)
        E[:3, :3], E[:3, 3] = R_cw, t
        rows.append(f"{job.frame} {cam_id} " + " ".join(f"{v:.6f}" for v in E.ravel()))
    return rows


def write_vkitti2(root: Path, n_images: int, width: int, height: int, seed: int,
                  variations: tuple[str, ...] = ("clone",), workers: int = 1, progress: bool = True) -> None:
    sequences = [(si, var) for si in range(len(SCENES)) for var in variations]
    jobs = [VKittiJob(str(root), si, var, f, width, height, seed)
            for (si, var), n in zip(sequences, split_evenly(n_images, len(sequences)))
            for f in range(n)]
    rows = run_jobs(_frame, jobs, workers, "synthesising vKITTI2", progress)
    K = scaled_intrinsics(*FULL_K, width / FULL_SIZE[0], height / FULL_SIZE[1])
    by_seq: dict[tuple[int, str], list] = {}
    for job, r in zip(jobs, rows):
        by_seq.setdefault((job.scene_index, job.variation), []).append((job.frame, r))
    for (si, var), frames in by_seq.items():
        seq = Path(root) / SCENES[si] / var
        write_text(seq / "colors.txt", colors_text())
        write_text(seq / "intrinsic.txt", "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n" + "".join(
            f"{f} {c} {K[0, 0]:.4f} {K[1, 1]:.4f} {K[0, 2]:.4f} {K[1, 2]:.4f}\n" for f, _ in frames for c in (0, 1)))
        header = "frame cameraID " + " ".join(f"r{i},{j}" if j < 4 else f"t{i}" for i in range(1, 4)
                                              for j in range(1, 5)) + " 0 0 0 1\n"
        write_text(seq / "extrinsic.txt", header + "".join(row + "\n" for _, rr in frames for row in rr))
