"""nuImages, read through nuscenes-devkit.

Layout under the root (``dataroot`` in devkit terms):
    v1.0-train/{attribute,calibrated_sensor,category,ego_pose,log,object_ann,sample,
                sample_data,sensor,surface_ann}.json
    samples/CAM_*/<log>__CAM_*__<timestamp>.jpg
    lix_depth_sidecar/<sample_data_token>.png   (synthetic data only: uint16 cm, 0 = invalid)

Sample ids are key-frame ``sample_data`` tokens. The devkit's semantic mask (category
index per pixel, 0 = unannotated background) is mapped by category name to CLASS_NAMES (pipeline.labels).
nuImages annotates only driveable surface and objects, so "background" covers buildings,
vegetation, sky and the like.
"""

from __future__ import annotations

import contextlib
import io
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.depth_codec import decode_depth_cm
from pipeline.errors import DataError
from pipeline.imageio import read_raw, read_rgb
from pipeline.labels import NUIMAGES_CLASSES as CLASS_NAMES
from pipeline.sources.base import IGNORE_INDEX, DatasetReader, register_reader

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "log", "object_ann", "sample",
          "sample_data", "sensor", "surface_ann")
CATEGORIES = (
    "animal", "flat.driveable_surface", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck", "vehicle.ego",
)
# Category name prefix -> train id; the longest matching prefix wins.
_PREFIX_TO_TRAIN = {
    "flat.driveable_surface": 1, "vehicle.car": 2, "vehicle.emergency": 2, "vehicle.truck": 3,
    "vehicle.trailer": 3, "vehicle.construction": 3, "vehicle.bus": 4, "human.": 5, "vehicle.bicycle": 6,
    "vehicle.motorcycle": 6, "movable_object.barrier": 7, "movable_object.trafficcone": 8, "animal": 9,
    "movable_object.debris": 9, "movable_object.pushable_pullable": 9, "static_object.bicycle_rack": 9,
    "vehicle.ego": IGNORE_INDEX,
}
SIDECAR_DIR = "lix_depth_sidecar"


def train_id(category: str) -> int:
    best = max((p for p in _PREFIX_TO_TRAIN if category.startswith(p)), key=len, default=None)
    if best is None:
        raise KeyError(f"nuImages category {category!r} has no train id")
    return _PREFIX_TO_TRAIN[best]


@register_reader("nuimages")
class NuImagesReader(DatasetReader):
    OPTIONS = ("version", "channels")
    GROUND_CLASSES = (1,)

    def __init__(self, root: str | Path, version: str = "v1.0-train", channels: tuple[str, ...] | None = None):
        super().__init__(root)
        from nuimages import NuImages  # heavy import, only when this dataset is read
        from nuimages.utils.utils import name_to_index_mapping

        self.class_names = CLASS_NAMES
        table_dir = self.root / version
        if not table_dir.is_dir():
            raise DataError(table_dir, f"nuImages version folder not found: expected {version}/category.json and "
                            "the other 9 tables (extract the nuImages metadata archive here)")
        for t in TABLES:
            if not (table_dir / f"{t}.json").is_file():
                raise DataError(table_dir / f"{t}.json", f"nuImages table missing: expected the 10 tables "
                                f"{', '.join(TABLES)} under {table_dir}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.nuim = NuImages(version=version, dataroot=str(self.root), lazy=True, verbose=False)
                categories = self.nuim.category
        except (AssertionError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise DataError(table_dir, f"nuscenes-devkit could not load the tables: {e}") from None
        self.channels = channels
        # devkit semantic index -> our train id
        lut = np.zeros(256, dtype=np.uint8)
        for name, index in name_to_index_mapping(categories).items():
            lut[index] = train_id(name)
        self._lut = lut

    @cached_property
    def _sample_data(self) -> dict[str, dict]:
        nuim = self.nuim
        channel_of = {cs["token"]: nuim.get("sensor", cs["sensor_token"])["channel"]
                      for cs in nuim.calibrated_sensor}
        out = {}
        for s in nuim.sample:
            sd = nuim.get("sample_data", s["key_camera_token"])
            if self.channels is None or channel_of[sd["calibrated_sensor_token"]] in self.channels:
                out[sd["token"]] = sd
        return out

    def ids(self) -> list[str]:
        return sorted(self._sample_data, key=lambda t: (self._sample_data[t]["filename"], t))

    def scene_group(self, sample_id: str) -> str:
        """The log (one drive) the key frame was recorded in."""
        return self.nuim.get("sample", self._sd(sample_id)["sample_token"])["log_token"]

    def _sd(self, sample_id: str) -> dict:
        if sample_id not in self._sample_data:
            raise DataError(self.root, f"no key-frame sample_data with token {sample_id!r}")
        return self._sample_data[sample_id]

    def image_path(self, sample_id: str) -> Path:
        return self.root / self._sd(sample_id)["filename"]

    def rgb(self, sample_id: str) -> np.ndarray:
        return read_rgb(self.image_path(sample_id))

    label_path = image_path

    def label(self, sample_id: str) -> np.ndarray:
        self.image_path(sample_id)  # validates the token
        try:
            semantic, _ = self.nuim.get_segmentation(sample_id)
        except (FileNotFoundError, OSError) as e:
            raise DataError(self.image_path(sample_id), f"devkit could not open the image: {e}") from None
        return self._lut[semantic]

    def _calibration(self, sample_id: str) -> dict:
        return self.nuim.get("calibrated_sensor", self._sd(sample_id)["calibrated_sensor_token"])

    def intrinsics(self, sample_id: str) -> np.ndarray:
        return np.asarray(self._calibration(sample_id)["camera_intrinsic"], dtype=np.float64)

    def camera_height(self, sample_id: str) -> float | None:
        """Camera height above the ground (m): the sensor's z in the ego frame, whose origin
        is on the ground under the rear axle."""
        return float(self._calibration(sample_id)["translation"][2])

    def camera_up(self, sample_id: str) -> np.ndarray | None:
        """The ego frame's 'up' (z) axis in camera coordinates, from the sensor's rotation
        (a camera-to-ego quaternion, w x y z)."""
        from pyquaternion import Quaternion

        R = Quaternion(self._calibration(sample_id)["rotation"]).rotation_matrix
        return R.T @ np.array([0.0, 0.0, 1.0])

    def depth_path(self, sample_id: str) -> Path:
        return self.root / SIDECAR_DIR / f"{sample_id}.png"

    def ground_truth_depth(self, sample_id: str) -> np.ndarray | None:
        path = self.depth_path(sample_id)
        return decode_depth_cm(read_raw(path, np.uint16)) if path.is_file() else None
