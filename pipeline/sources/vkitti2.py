"""Virtual KITTI 2 (vkitti_2.0.3_{rgb,depth,classSegmentation,textgt}.tar merged in one root).

Layout:
    SceneXX/<variation>/frames/rgb/Camera_{0,1}/rgb_00000.jpg
    SceneXX/<variation>/frames/depth/Camera_{0,1}/depth_00000.png       uint16 cm, 65535 = sky
    SceneXX/<variation>/frames/classSegmentation/Camera_{0,1}/classgt_00000.png  colour-coded
    SceneXX/<variation>/colors.txt      "Category r g b"
    SceneXX/<variation>/intrinsic.txt   "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
    SceneXX/<variation>/extrinsic.txt   "frame cameraID r1,1 r1,2 r1,3 t1 ... 0 0 0 1" (world -> camera)

Sample ids: ``SceneXX/<variation>/00000`` (Camera_0 is the reference view).
Labels: train ids in CLASS_NAMES order (pipeline.labels), matched by category name; "Undefined" -> 255.
Variations: the folder names of pipeline.datasets.VKITTI2_VARIATIONS; ``variations`` keeps a subset.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.depth_codec import decode_depth_cm
from pipeline.errors import DataError
from pipeline.imageio import read_raw, read_rgb
from pipeline.labels import VKITTI2_CLASSES as CLASS_NAMES
from pipeline.sources.base import IGNORE_INDEX, DatasetReader, register_reader

SKY_DEPTH_CM = 65535


def parse_colors(path: Path) -> dict[int, int]:
    """colors.txt -> {packed 0xRRGGBB: train id}."""
    if not path.is_file():
        raise DataError(path, "colors.txt not found (extract vkitti_2.0.3_textgt.tar.gz here)")
    lines = path.read_text().split("\n")
    if not lines or lines[0].split() != ["Category", "r", "g", "b"]:
        raise DataError(path, "expected the header 'Category r g b'")
    table = {}
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise DataError(path, f"line {n}: expected 'Category r g b', got {line!r}")
        name, (r, g, b) = parts[0], (int(x) for x in parts[1:])
        tid = CLASS_NAMES.index(name) if name in CLASS_NAMES else IGNORE_INDEX
        table[(r << 16) | (g << 8) | b] = tid
    return table


def parse_camera_table(path: Path, n_values: int) -> dict[tuple[int, int], np.ndarray]:
    """intrinsic.txt / extrinsic.txt -> {(frame, camera): values}."""
    if not path.is_file():
        raise DataError(path, "camera table not found (extract vkitti_2.0.3_textgt.tar.gz here)")
    rows = {}
    for n, line in enumerate(path.read_text().splitlines()[1:], 2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 + n_values:
            raise DataError(path, f"line {n}: expected {2 + n_values} columns, found {len(parts)}")
        rows[(int(parts[0]), int(parts[1]))] = np.array([float(x) for x in parts[2:]])
    return rows


@register_reader("vkitti2")
class VKitti2Reader(DatasetReader):
    OPTIONS = ("variations",)
    GROUND_CLASSES = (5,)  # Road

    def __init__(self, root: str | Path, variations: tuple[str, ...] | None = None):
        super().__init__(root)
        self.class_names = CLASS_NAMES
        seqs = sorted(p.parents[2] for p in self.root.glob("Scene*/*/frames/rgb/Camera_0"))
        if variations:
            seqs = [s for s in seqs if s.name in variations]
        if not seqs:
            raise DataError(self.root, "no vKITTI2 sequences: expected Scene*/<variation>/frames/rgb/Camera_0/"
                            "rgb_00000.jpg (extract vkitti_2.0.3_rgb.tar here)")
        self.sequences = seqs

    def ids(self) -> list[str]:
        out = []
        for seq in self.sequences:
            rel = seq.relative_to(self.root).as_posix()
            out += [f"{rel}/{p.stem[4:]}" for p in sorted((seq / "frames/rgb/Camera_0").glob("rgb_*.jpg"))]
        return out

    def frame_group(self, sample_id: str) -> str:
        """``SceneXX/00000``: every weather variation of a frame shares its layout and pose."""
        scene, _variation, frame = sample_id.split("/")
        return f"{scene}/{frame}"

    def scene_group(self, sample_id: str) -> str:
        return sample_id.split("/")[0]

    def _split(self, sample_id: str) -> tuple[Path, str]:
        seq, _, frame = sample_id.rpartition("/")
        return self.root / seq, frame

    def _file(self, sample_id: str, kind: str, prefix: str, ext: str, camera: int = 0) -> Path:
        seq, frame = self._split(sample_id)
        return seq / "frames" / kind / f"Camera_{camera}" / f"{prefix}_{frame}.{ext}"

    def rgb(self, sample_id: str) -> np.ndarray:
        return read_rgb(self._file(sample_id, "rgb", "rgb", "jpg"))

    def label_path(self, sample_id: str) -> Path:
        return self._file(sample_id, "classSegmentation", "classgt", "png")

    @lru_cache(maxsize=64)
    def _colors(self, seq: Path) -> dict[int, int]:
        return parse_colors(seq / "colors.txt")

    def label(self, sample_id: str) -> np.ndarray:
        path = self.label_path(sample_id)
        rgb = read_raw(path, np.uint8, channels=3).astype(np.int32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = self._colors(self._split(sample_id)[0])
        colours, inverse = np.unique(packed, return_inverse=True)
        unknown = [c for c in colours if int(c) not in table]
        if unknown:
            c = int(unknown[0])
            y, x = np.argwhere(packed == c)[0]
            raise DataError(path, f"colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) at pixel (x={x}, y={y}) "
                            f"is not in {self._split(sample_id)[0] / 'colors.txt'}")
        return np.array([table[int(c)] for c in colours], dtype=np.uint8)[inverse].reshape(packed.shape)

    @lru_cache(maxsize=64)
    def _intrinsics(self, seq: Path):
        return parse_camera_table(seq / "intrinsic.txt", 4)

    @lru_cache(maxsize=64)
    def _extrinsics(self, seq: Path):
        return parse_camera_table(seq / "extrinsic.txt", 16)

    def _row(self, table, seq: Path, name: str, frame: str, camera: int) -> np.ndarray:
        key = (int(frame), camera)
        if key not in table:
            raise DataError(seq / name, f"no row for frame {int(frame)}, camera {camera}")
        return table[key]

    def intrinsics(self, sample_id: str) -> np.ndarray:
        seq, frame = self._split(sample_id)
        fx, fy, cx, cy = self._row(self._intrinsics(seq), seq, "intrinsic.txt", frame, 0)
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])

    def right_path(self, sample_id: str) -> Path:
        return self._file(sample_id, "rgb", "rgb", "jpg", camera=1)

    def baseline(self, sample_id: str) -> float | None:
        """Distance between the Camera_0 and Camera_1 centres, from extrinsic.txt."""
        if not self.right_path(sample_id).parent.is_dir():
            return None
        seq, frame = self._split(sample_id)
        table = self._extrinsics(seq)
        centres = []
        for cam in (0, 1):
            e = self._row(table, seq, "extrinsic.txt", frame, cam).reshape(4, 4)
            centres.append(-e[:3, :3].T @ e[:3, 3])
        return float(np.linalg.norm(centres[1] - centres[0]))

    def depth_path(self, sample_id: str) -> Path:
        return self._file(sample_id, "depth", "depth", "png")

    def ground_truth_depth(self, sample_id: str) -> np.ndarray | None:
        """Rendered z-depth in metres; sky (65535 cm) -> 0 (invalid)."""
        return decode_depth_cm(read_raw(self.depth_path(sample_id), np.uint16), invalid=SKY_DEPTH_CM)
