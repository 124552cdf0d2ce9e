"""A torch Dataset over the HDF5 shards, with the paper's augmentations.

Safe with DataLoader workers: shard files are opened lazily in the process that reads them
(never inherited through fork). Augmentations are drawn from a generator seeded by
(seed, epoch, index), so a sample is the same whatever the number of workers.

Augmentations, applied consistently to every modality:
* random rescale (bilinear for RGB, nearest for labels, depth, normals and masks; K follows),
* random crop to ``crop`` (padding with ignore / invalid where the image is smaller),
* horizontal flip, which also negates the normals' x component (and mirrors K),
* photometric distortion on RGB only: brightness, contrast, saturation, hue (each with
  probability ``photometric``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.shards import open_shard, read_manifest, verify_shards
from pipeline.sources.base import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.75, 1.5)
    crop: tuple[int, int] | None = None  # (H, W); None keeps the stored image size
    flip: float = 0.5
    photometric: float = 0.5
    brightness: float = 32 / 255
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue_deg: float = 18.0


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor."""
    if mode == "nearest":
        return F.interpolate(x[None].float(), size=size, mode="nearest")[0].to(x.dtype)
    return F.interpolate(x[None], size=size, mode=mode, align_corners=False)[0]


def _photometric(rgb: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """rgb: (3, H, W) in 0..1."""
    if rng.random() < cfg.photometric:
        rgb = rgb + float(rng.uniform(-cfg.brightness, cfg.brightness))
    if rng.random() < cfg.photometric:
        rgb = rgb * float(rng.uniform(*cfg.contrast))
    if rng.random() < cfg.photometric:
        grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
        rgb = grey + (rgb - grey) * float(rng.uniform(*cfg.saturation))
    if rng.random() < cfg.photometric:  # hue: rotate the chroma plane of YIQ
        a = np.radians(rng.uniform(-cfg.hue_deg, cfg.hue_deg))
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        rot = torch.tensor([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], dtype=torch.float32)
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
        rgb = torch.einsum("ij,jhw->ihw", m, rgb)
    return rgb.clamp(0.0, 1.0)


def augment(s: dict, rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    """Augment one sample dict (tensors as produced by ShardDataset without augmentation)."""
    s = dict(s)
    _, h, w = s["rgb"].shape
    K = s["K"].clone()
    # Rescale.
    f = float(rng.uniform(*cfg.scale))
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    s["rgb"] = _resize(s["rgb"], (nh, nw), "bilinear")
    for k in ("label", "depth", "depth_valid", "normals", "normal_valid"):
        x = s[k] if s[k].dim() == 3 else s[k][None]
        x = _resize(x, (nh, nw), "nearest")
        s[k] = x if s[k].dim() == 3 else x[0]
    K[0, :] *= nw / w
    K[1, :] *= nh / h
    K[0, 2] += 0.5 * nw / w - 0.5  # pixel-centre convention
    K[1, 2] += 0.5 * nh / h - 0.5
    K[2] = torch.tensor([0.0, 0.0, 1.0])
    # Crop (pad first where the rescaled image is smaller).
    ch, cw = cfg.crop or (h, w)
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        pads = {"rgb": 0.0, "label": IGNORE, "depth": 0.0, "depth_valid": False, "normals": 0.0, "normal_valid": False}
        for k, v in pads.items():
            s[k] = F.pad(s[k], (0, pw, 0, ph), value=v) if s[k].dtype != torch.bool else \
                F.pad(s[k].to(torch.uint8), (0, pw, 0, ph), value=int(v)).bool()
        nh, nw = nh + ph, nw + pw
    y0, x0 = int(rng.integers(0, nh - ch + 1)), int(rng.integers(0, nw - cw + 1))
    for k in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid"):
        s[k] = s[k][..., y0 : y0 + ch, x0 : x0 + cw]
    K[0, 2] -= x0
    K[1, 2] -= y0
    # Horizontal flip: mirror every map, negate the x component of the normals, mirror K.
    if rng.random() < cfg.flip:
        for k in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid"):
            s[k] = s[k].flip(-1)
        s["normals"] = s["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        K[0, 2] = cw - 1 - K[0, 2]
    s["rgb"] = _photometric(s["rgb"], rng, cfg)
    s["K"] = K
    return s


class ShardDataset(Dataset):
    """Samples of one split. Each item is a dict:
    rgb (3, H, W) float32 0..1; label (H, W) int64 (255 = ignore); depth (1, H, W) float32 metres;
    depth_valid (H, W) bool; normals (3, H, W) float32; normal_valid (H, W) bool; K (3, 3) float32;
    id str.
    """

    def __init__(self, shard_dir: str | Path, split: str, augment: AugmentConfig | None = None, seed: int = 0,
                 verify: bool = True):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        paths = verify_shards(self.dir, split) if verify else \
            [self.dir / e["file"] for e in self.manifest["splits"][split]["shards"]]
        counts = [e["count"] for e in self.manifest["splits"][split]["shards"]]
        self.index = [(p, i) for p, n in zip(paths, counts) for i in range(n)]
        self.class_names = self.manifest["class_names"]
        self.augment_cfg, self.seed, self.epoch = augment, seed, 0
        self._files: dict[Path, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _file(self, path: Path) -> dict:
        """The shard's datasets by name (h5py's name lookup costs more than a small read)."""
        if self._pid != os.getpid():  # a fresh worker: never reuse handles across fork
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            f = open_shard(path)
            self._files[path] = {k: f[k] for k in f.keys()} | {"_file": f}
        return self._files[path]

    def raw(self, idx: int) -> dict:
        path, i = self.index[idx]
        f = self._file(path)
        return {
            "rgb": torch.from_numpy(f["rgb"][i]).permute(2, 0, 1).float() / 255.0,
            "label": torch.from_numpy(f["label"][i]).long(),
            "depth": torch.from_numpy(f["depth"][i])[None],
            "depth_valid": torch.from_numpy(f["depth_valid"][i]),
            "normals": torch.from_numpy(f["normals"][i]).float().permute(2, 0, 1),
            "normal_valid": torch.from_numpy(f["normal_valid"][i]),
            "K": torch.from_numpy(f["K"][i]),
            "id": f["id"][i].decode(),
        }

    def __getitem__(self, idx: int) -> dict:
        s = self.raw(idx)
        if self.augment_cfg is not None:
            with _one_thread():
                s = augment(s, np.random.default_rng([self.seed, self.epoch, idx]), self.augment_cfg)
        return s


class _one_thread:
    """Run torch ops on one thread. Float results of CPU kernels can differ in the last bit
    with the thread count (work is split differently between vector and scalar loops), and
    DataLoader workers run on one thread: this makes the main process agree with them."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)
