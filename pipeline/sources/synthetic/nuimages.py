"""Synthetic nuImages in the native layout: the ten JSON tables, JPEG key frames under
``samples/CAM_FRONT/`` and masks as base64-encoded COCO RLE, loadable by nuscenes-devkit.

Metric depth, which real nuImages lacks, goes to the separate ``lix_depth_sidecar/`` folder
(uint16 cm, 0 = invalid) for evaluation and as a documented fallback only.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as cocomask

from pipeline.atomic import write_json
from pipeline.depth_codec import depth_to_cm
from pipeline.imageio import write_image
from pipeline.sources.nuimages import CATEGORIES, SIDECAR_DIR
from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.common import frame_rng, run_jobs
from pipeline.sources.synthetic.render import render
from pipeline.sources.synthetic.scene import (
    NUIMAGES_POPULATION,
    NUIMAGES_STYLE,
    make_camera,
    sample_scene,
    scaled_intrinsics,
)

FULL_SIZE = (1600, 900)
FULL_K = (1266.417, 1266.417, 816.267, 491.507)  # CAM_FRONT of a nuScenes car
CAMERA_TRANSLATION_XY = (1.70, 0.016)  # metres, ego frame (x forward, y left); z = camera height
# Renderer world (X right, Y down, Z forward) -> ego (x forward, y left, z up).
WORLD_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_to_ego_quaternion(R_wc: np.ndarray) -> list[float]:
    """The calibrated_sensor rotation (w, x, y, z) of a camera with camera-to-world ``R_wc``."""
    from pyquaternion import Quaternion

    q = Quaternion(matrix=WORLD_TO_EGO @ R_wc, atol=1e-6)
    return [float(v) for v in q.elements]
LOG_NAME = "n013-2018-08-01-16-33-08+0800"
# The renderer's object kinds (ObjectInfo.kind) -> nuImages category. A cyclist is one object,
# the cycle with its rider (nuScenes: "if there is a rider, include the rider in the box");
# each section of a bendy bus is its own object; a rack includes the bicycles parked in it.
# Trams have no nuImages category and are never placed in nuImages scenes.
OBJECT_CATEGORY = {
    "car": "vehicle.car", "van": "vehicle.car", "truck": "vehicle.truck", "bus.rigid": "vehicle.bus.rigid",
    "bus.bendy": "vehicle.bus.bendy", "pedestrian.adult": "human.pedestrian.adult",
    "pedestrian.child": "human.pedestrian.child", "bicycle": "vehicle.bicycle", "motorcycle": "vehicle.motorcycle",
    "barrier": "movable_object.barrier", "trafficcone": "movable_object.trafficcone",
    "debris": "movable_object.debris", "pushable_pullable": "movable_object.pushable_pullable",
    "bicycle_rack": "static_object.bicycle_rack",
}
SURFACE_CLASSES = (C.ROAD, C.LANE_MARKING, C.RAIL)
# nuImages' attribute table (nuScenes' eight plus four of its own).
ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.sitting_lying_down",
              "pedestrian.standing", "vehicle.moving", "vehicle.parked", "vehicle.stopped",
              "vehicle_light.emergency.flashing", "vehicle_light.emergency.not_flashing",
              "vertical_position.off_ground", "vertical_position.on_ground")


def object_attributes(category: str, state: str) -> list[str]:
    """The attribute names nuImages gives an object of ``category`` in ``state``: vehicles
    their activity, cycles their rider status, pedestrians theirs; movable and static objects
    none."""
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        names = [f"cycle.{state}"]
    elif category.startswith("vehicle."):
        names = [f"vehicle.{state}"]
    elif category.startswith("human.pedestrian."):
        names = [f"pedestrian.{state}"]
    else:
        names = []
    for n in names:
        if n not in ATTRIBUTES:
            raise KeyError(f"no nuImages attribute {n!r} for a {category} that is {state!r}")
    return names


def token(*parts) -> str:
    """A 32-hex-digit token like nuScenes', stable for the same parts."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def encode_mask(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> nuImages' {"size", "counts"} with base64 COCO RLE counts."""
    rle = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": base64.b64encode(rle["counts"]).decode("ascii")}


@dataclass(frozen=True)
class NuJob:
    root: str
    index: int
    width: int
    height: int
    seed: int


def render_frame(job: NuJob):
    """(K, camera, render) of one frame: a pure function of the job."""
    rng = frame_rng(job.seed, "nuimages", job.index)
    scene, cam_x = sample_scene(rng, n_vehicles=12, population=NUIMAGES_POPULATION)
    K = scaled_intrinsics(*FULL_K, job.width / FULL_SIZE[0], job.height / FULL_SIZE[1])
    cam = make_camera(rng, K, job.width, job.height, cam_x, NUIMAGES_STYLE)
    return K, cam, render(scene, cam, rng)


def annotate(out) -> tuple[np.ndarray, list[tuple[int, str, list[str], np.ndarray]]]:
    """The driveable-surface mask and, per visible object, (id, category, attributes, mask)."""
    annotations = []
    for obj in np.unique(out.obj[out.obj > 0]):
        info = out.objects[int(obj)]
        category = OBJECT_CATEGORY[info.kind]
        annotations.append((int(obj), category, object_attributes(category, info.state), out.obj == obj))
    return np.isin(out.cls, SURFACE_CLASSES), annotations


def _frame(job: NuJob) -> dict:
    K, cam, out = render_frame(job)
    timestamp = 1533112388000000 + job.index * 500_000
    filename = f"samples/CAM_FRONT/{LOG_NAME}__CAM_FRONT__{timestamp}.jpg"
    sd_token = token("sample_data", job.seed, job.index)
    write_image(Path(job.root) / filename, out.rgb)
    write_image(Path(job.root) / SIDECAR_DIR / f"{sd_token}.png", depth_to_cm(out.depth, 0))
    surface, annotations = annotate(out)
    objects = []
    for obj, category, attributes, m in annotations:
        ys, xs = np.nonzero(m)
        objects.append({"category": category, "attributes": attributes, "mask": encode_mask(m),
                        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                        "token": token("object_ann", job.seed, job.index, int(obj))})
    return {"index": job.index, "sd_token": sd_token, "filename": filename, "timestamp": timestamp,
            "height_m": float(-cam.position[1]), "K": K.tolist(), "rotation": camera_to_ego_quaternion(cam.R_wc),
            "surface": encode_mask(surface) if surface.any() else None, "objects": objects}


def write_nuimages(root: Path, n_images: int, width: int, height: int, seed: int, version: str = "v1.0-train",
                   workers: int = 1, progress: bool = True) -> None:
    jobs = [NuJob(str(root), i, width, height, seed) for i in range(n_images)]
    frames = run_jobs(_frame, jobs, workers, "synthesising nuImages", progress)

    cat_token = {name: token("category", name) for name in CATEGORIES}
    attr_token = {name: token("attribute", name) for name in ATTRIBUTES}
    sensor = {"token": token("sensor", "CAM_FRONT"), "channel": "CAM_FRONT", "modality": "camera"}
    log = {"token": token("log", LOG_NAME), "logfile": LOG_NAME, "vehicle": "n013",
           "date_captured": "2018-08-01", "location": "singapore-onenorth"}
    tables: dict[str, list] = {k: [] for k in ("calibrated_sensor", "ego_pose", "sample", "sample_data",
                                               "object_ann", "surface_ann")}
    for f in frames:
        i, sd = f["index"], f["sd_token"]
        cs_token, ep_token, s_token = (token(k, seed, i) for k in ("calibrated_sensor", "ego_pose", "sample"))
        tables["calibrated_sensor"].append({
            "token": cs_token, "sensor_token": sensor["token"],
            "translation": [*CAMERA_TRANSLATION_XY, f["height_m"]], "rotation": f["rotation"],
            "camera_intrinsic": f["K"], "camera_distortion": [0.0] * 5})
        tables["ego_pose"].append({
            "token": ep_token, "translation": [float(i * 10.0), 0.0, 0.0], "rotation": [1.0, 0.0, 0.0, 0.0],
            "timestamp": f["timestamp"], "rotation_rate": [0.0] * 3, "acceleration": [0.0] * 3, "speed": 8.0})
        tables["sample"].append({"token": s_token, "timestamp": f["timestamp"], "log_token": log["token"],
                                 "key_camera_token": sd})
        tables["sample_data"].append({
            "token": sd, "sample_token": s_token, "ego_pose_token": ep_token, "calibrated_sensor_token": cs_token,
            "filename": f["filename"], "fileformat": "jpg", "width": width, "height": height,
            "timestamp": f["timestamp"], "is_key_frame": True, "prev": "", "next": ""})
        if f["surface"] is not None:
            tables["surface_ann"].append({"token": token("surface_ann", seed, i), "sample_data_token": sd,
                                          "category_token": cat_token["flat.driveable_surface"],
                                          "mask": f["surface"]})
        for o in f["objects"]:
            tables["object_ann"].append({
                "token": o["token"], "sample_data_token": sd, "category_token": cat_token[o["category"]],
                "attribute_tokens": [attr_token[a] for a in o["attributes"]], "bbox": o["bbox"], "mask": o["mask"]})
    tables["category"] = [{"token": cat_token[n], "name": n, "description": f"synthetic {n}"} for n in CATEGORIES]
    tables["attribute"] = [{"token": attr_token[n], "name": n, "description": n} for n in ATTRIBUTES]
    tables["sensor"] = [sensor]
    tables["log"] = [log]
    for name, rows in tables.items():
        write_json(Path(root) / version / f"{name}.json", rows)
