"""The reader interface shared by every dataset, and the reader registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.constants import IGNORE_INDEX
from pipeline.datasets import READER_CLASSES
from pipeline.errors import DataError
from pipeline.imageio import check_same_size, read_rgb
from pipeline.registry import Registry


@dataclass
class Frame:
    """One sample as read from a dataset's native files.

    rgb: (H, W, 3) uint8. label: (H, W) uint8 train ids, 255 = ignore. K: (3, 3) float64
    intrinsics in pixels. Optional: right_rgb (H, W, 3) uint8 and baseline in metres (stereo);
    disparity (H, W) float32 pixels, 0 = invalid (sparse ground truth); depth (H, W) float32
    metres, 0 = invalid (depth the source carries: rendered or side-car); camera_height in
    metres above the ground plane and camera_up, the unit 'up' vector in the camera frame.
    """

    id: str
    rgb: np.ndarray
    label: np.ndarray
    K: np.ndarray
    right_rgb: np.ndarray | None = None
    baseline: float | None = None
    disparity: np.ndarray | None = None
    depth: np.ndarray | None = None
    camera_height: float | None = None
    camera_up: np.ndarray | None = None


class DatasetReader(ABC):
    """Reads one dataset from its native on-disk layout.

    Subclasses validate the layout in ``__init__`` (raising :class:`DataError` naming the
    missing path) and implement the per-sample accessors. Optional accessors return None
    where the dataset does not carry that modality.
    """

    name: str = ""
    class_names: tuple[str, ...] = ()
    OPTIONS: tuple[str, ...] = ()  # keyword options taken from the params' reader section
    GROUND_CLASSES: tuple[int, ...] = ()  # train ids of drivable ground (for depth alignment)

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, f"{self.name} dataset root not found (expected a directory)")

    @abstractmethod
    def ids(self) -> list[str]:
        """Sorted sample ids."""

    @abstractmethod
    def rgb(self, sample_id: str) -> np.ndarray: ...

    @abstractmethod
    def label(self, sample_id: str) -> np.ndarray: ...

    @abstractmethod
    def intrinsics(self, sample_id: str) -> np.ndarray: ...

    def baseline(self, sample_id: str) -> float | None:
        """Stereo baseline in metres, if the dataset is stereo (no image is read)."""
        return None

    def stereo(self, sample_id: str) -> tuple[np.ndarray, float] | None:
        """Right image (H, W, 3) uint8 and baseline in metres, if the dataset is stereo."""
        b = self.baseline(sample_id)
        return None if b is None else (read_rgb(self.right_path(sample_id)), b)

    def sparse_disparity(self, sample_id: str) -> np.ndarray | None:
        return None

    def group(self, sample_id: str, by: str) -> str:
        """The group of ``sample_id`` that must not straddle a train/val split.

        ``by``: 'none' or 'frame' (the sample itself unless a dataset renders one frame several
        times, as vKITTI2's weather variations) or 'scene' (a recording: a vKITTI2 scene, a
        nuImages log; KITTI Semantics publishes no sequence for its 200 frames, so its frames
        stand alone). Readers override :meth:`frame_group` and :meth:`scene_group`.
        """
        if by == "none":
            return sample_id
        if by == "frame":
            return self.frame_group(sample_id)
        if by == "scene":
            return self.scene_group(sample_id)
        raise ValueError(f"unknown grouping {by!r}; expected none, frame or scene")

    def frame_group(self, sample_id: str) -> str:
        return sample_id

    def scene_group(self, sample_id: str) -> str:
        return sample_id

    def ground_truth_depth(self, sample_id: str) -> np.ndarray | None:
        return None

    def camera_height(self, sample_id: str) -> float | None:
        return None

    def camera_up(self, sample_id: str) -> np.ndarray | None:
        return None

    def frame(self, sample_id: str) -> Frame:
        """Everything the dataset carries for ``sample_id``, with sizes cross-checked."""
        rgb = self.rgb(sample_id)
        label = self.label(sample_id)
        check_same_size(rgb, label, self.label_path(sample_id), "label")
        st = self.stereo(sample_id)
        right, baseline = st if st is not None else (None, None)
        if right is not None:
            check_same_size(rgb, right, self.right_path(sample_id), "right image")
        disp = self.sparse_disparity(sample_id)
        if disp is not None:
            check_same_size(rgb, disp, self.disparity_path(sample_id), "disparity map")
        depth = self.ground_truth_depth(sample_id)
        if depth is not None:
            check_same_size(rgb, depth, self.depth_path(sample_id), "depth map")
        return Frame(sample_id, rgb, label, self.intrinsics(sample_id), right, baseline, disp, depth,
                     self.camera_height(sample_id), self.camera_up(sample_id))

    # Paths used in error messages; readers override the ones they have.
    def label_path(self, sample_id: str) -> Path:
        return self.root / sample_id

    right_path = disparity_path = depth_path = label_path


# A reader module is imported when its dataset is first asked for (create_reader), so a stage
# imports only the reader it uses.
READERS: Registry[DatasetReader] = Registry("dataset", lazy=READER_CLASSES)
register_reader = READERS.register


def create_reader(name: str, root: str | Path, options: object | None = None, **kwargs) -> DatasetReader:
    """Build the reader registered as ``name``. ``options`` (e.g. a ReaderConfig) supplies
    the attributes named in the reader's OPTIONS; explicit ``kwargs`` win."""
    cls = READERS[name]
    opts = {k: getattr(options, k) for k in cls.OPTIONS} if options is not None else {}
    return cls(root, **{**opts, **kwargs})


def lut_from_pairs(pairs: dict[int, int], size: int = 256, fill: int = IGNORE_INDEX) -> np.ndarray:
    lut = np.full(size, fill, dtype=np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut
