"""KITTI Semantics (data_semantics.zip) merged with KITTI 2015 stereo (data_scene_flow*.zip).

Layout under the root (both archives extract into ``training/``):
    training/image_2/000000_10.png        left colour image
    training/image_3/000000_10.png        right colour image
    training/semantic/000000_10.png       Cityscapes label ids, uint8
    training/semantic_rgb/000000_10.png   the same in Cityscapes colours
    training/disp_occ_0/000000_10.png     uint16 disparity * 256, 0 = invalid (sparse)
    training/calib_cam_to_cam/000000.txt  P_rect_02 / P_rect_03 among others

Labels: the 19 Cityscapes train ids (CLASS_NAMES order, from pipeline.labels); every other id -> 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.depth_codec import decode_depth_cm
from pipeline.errors import DataError
from pipeline.imageio import read_raw, read_rgb
from pipeline.labels import CITYSCAPES_IDS
from pipeline.labels import KITTI_CLASSES as CLASS_NAMES
from pipeline.sources.base import DatasetReader, lut_from_pairs, register_reader

ID_TO_TRAIN = lut_from_pairs({cid: tid for tid, cid in enumerate(CITYSCAPES_IDS)})
SIDECAR_DIR = "lix_depth_sidecar"


def parse_calib(path: Path) -> dict[str, np.ndarray]:
    """Parse a KITTI ``key: v1 v2 ...`` calibration file into float arrays."""
    if not path.is_file():
        raise DataError(path, "calibration file not found")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if ":" not in line:
            continue
        key, _, vals = line.partition(":")
        try:
            out[key.strip()] = np.array([float(v) for v in vals.split()])
        except ValueError:
            if key.strip() != "calib_time":
                raise DataError(path, f"line {n}: non-numeric values for {key.strip()!r}") from None
    return out


def stereo_from_calib(calib: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, float]:
    """K of the left rectified camera and the stereo baseline (m) from P_rect_02 / P_rect_03."""
    for key in ("P_rect_02", "P_rect_03"):
        if key not in calib or calib[key].size != 12:
            raise DataError(path, f"expected {key} with 12 values")
    p2, p3 = calib["P_rect_02"].reshape(3, 4), calib["P_rect_03"].reshape(3, 4)
    fx = p2[0, 0]
    return p2[:, :3].copy(), float((p2[0, 3] - p3[0, 3]) / fx)


def decode_disparity(raw: np.ndarray) -> np.ndarray:
    """uint16 KITTI disparity PNG -> float32 pixels, 0 = invalid."""
    return raw.astype(np.float32) / 256.0


@register_reader("kitti")
class KittiReader(DatasetReader):
    GROUND_CLASSES = (0,)  # road
    def __init__(self, root: str | Path):
        super().__init__(root)
        self.class_names = CLASS_NAMES
        self.train = self.root / "training"
        for sub in ("image_2", "semantic"):
            if not (self.train / sub).is_dir():
                raise DataError(self.train / sub, "missing directory: expected KITTI Semantics layout "
                                "training/{image_2,semantic}/XXXXXX_10.png (extract data_semantics.zip here)")

    def ids(self) -> list[str]:
        return sorted(p.name[: -len("_10.png")] for p in (self.train / "semantic").glob("*_10.png"))

    def _png(self, sub: str, sample_id: str) -> Path:
        return self.train / sub / f"{sample_id}_10.png"

    def rgb(self, sample_id: str) -> np.ndarray:
        return read_rgb(self._png("image_2", sample_id))

    def label_path(self, sample_id: str) -> Path:
        return self._png("semantic", sample_id)

    def label(self, sample_id: str) -> np.ndarray:
        return ID_TO_TRAIN[read_raw(self.label_path(sample_id), np.uint8)]

    def calib_path(self, sample_id: str) -> Path:
        return self.train / "calib_cam_to_cam" / f"{sample_id}.txt"

    def _calib(self, sample_id: str) -> tuple[np.ndarray, float]:
        path = self.calib_path(sample_id)
        return stereo_from_calib(parse_calib(path), path)

    def intrinsics(self, sample_id: str) -> np.ndarray:
        return self._calib(sample_id)[0]

    def right_path(self, sample_id: str) -> Path:
        return self._png("image_3", sample_id)

    def baseline(self, sample_id: str) -> float | None:
        if not (self.train / "image_3").is_dir():
            return None
        return self._calib(sample_id)[1]

    def disparity_path(self, sample_id: str) -> Path:
        return self._png("disp_occ_0", sample_id)

    def sparse_disparity(self, sample_id: str) -> np.ndarray | None:
        if not (self.train / "disp_occ_0").is_dir():
            return None
        return decode_disparity(read_raw(self.disparity_path(sample_id), np.uint16))

    def depth_path(self, sample_id: str) -> Path:
        return self.root / SIDECAR_DIR / f"{sample_id}_10.png"

    def ground_truth_depth(self, sample_id: str) -> np.ndarray | None:
        """Dense metric depth from the synthetic side-car (real KITTI has none)."""
        path = self.depth_path(sample_id)
        return decode_depth_cm(read_raw(path, np.uint16)) if path.is_file() else None
