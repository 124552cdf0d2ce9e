"""A torch Dataset over the HDF5 shards, with the paper's augmentations.

Items ship in the shards' stored dtypes and are converted on the device with ``to_device``::

    loader = DataLoader(ShardDataset(d, "train", augment=AugmentConfig(crop=(96, 320))),
                        batch_size=8, num_workers=2, persistent_workers=True)
    for epoch in range(n):
        loader.dataset.set_epoch(epoch)        # before iterating: reaches persistent workers too
        for batch in loader:
            batch = to_device(batch, "cuda")   # rgb float 0..1, label int64, normals float32

Workers: shard files are opened lazily in the process that reads them (never inherited
through fork), and the dataset drops its open handles when pickled, so it can be handed to a
``spawn``/``forkserver`` DataLoader (or pickled) at any time, also after items were read in the
main process. The epoch lives in a shared-memory tensor, so ``set_epoch`` reaches workers that
already run (``persistent_workers=True``); call it before iterating the epoch, as with
DistributedSampler (items a worker prefetched earlier keep the epoch they were drawn with).
Augmentations are drawn from a generator seeded by (seed, epoch, index), so a sample is the
same whatever the number of workers, their start method, and in the main process.
A shard that cannot be read (a damaged file) raises ``pipeline.shards.ShardError``, a DataError
naming the shard, the sample index and the dataset; from a worker it reaches the main process
as the same one-line error (torch rebuilds it from its message), not a RuntimeError carrying
the worker's traceback.

Augmentations, applied consistently to every modality:
* random rescale: RGB bilinear (align_corners=False); labels, depth, normals and the validity
  masks with the centre-aligned nearest rule (torch's 'nearest-exact', computed exactly in
  integers: output pixel j takes input pixel floor((j + 0.5) * in / out), the stored pixel
  nearest to the point the RGB samples). Both use the pixel-centre convention, and so does K:
  u' = (u + 0.5) * s - 0.5. (Legacy 'nearest', floor(j * in / out), is up to half an output
  pixel off.)
* random crop to ``crop`` (padding at the bottom/right with 0 RGB, ignore labels and invalid
  depth/normals where the rescaled image is smaller); K's principal point moves by the offset,
* horizontal flip, which also negates the normals' x component and mirrors K
  (u' = W - 1 - u),
* photometric distortion on RGB only: brightness, contrast, saturation, hue (each with
  probability ``photometric``).
The geometric part is drawn by ``draw_geometry`` and applied by ``apply_geometry``;
``ShardDataset.geometry(idx)`` tells which draw an item got.

Item dtypes (the stored ones): shipping float32/int64 from the workers moves 2.4x the bytes
through shared memory (1.17 MB vs 0.49 MB per 96x320 sample) and then to the device. Measured
with ``python benchmarks/loader_throughput.py --dataset kitti --loader --repeats 7
--main-threads 1`` on the 120 train samples of a 160-frame synthetic KITTI at 96x320
(uncompressed shards; the machine's 2 x86 cores shared with other jobs, so three runs, ranges):
DataLoader with 2 persistent workers, batch 8, samples/s:
                      stored dtypes   + to_device('cpu') in main   float32/int64 items
    no augmentation      960-995            740-875                    625-675
    AugmentConfig()      195-340            180-335                    160-295
Stored dtypes are 1.2-1.5x faster; with the conversion on the CPU in the main process still
1.1-1.4x (to_device on a batch: ~1 ms on one thread). On a GPU the conversion runs on the device.
Caveat: with torch's default threads in the main process on a 2-core machine, the main process
competes with the workers and converting there cost more than it saved (0.5-1.0x): on a CPU-only
run, convert inside the model or with ``torch.set_num_threads(1)``.
Augmented RGB is computed in float32 and rounded back to uint8 (as torchvision's transforms do
on uint8 images): a quantisation error of at most 0.5/255, well below the photometric noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.constants import IGNORE_INDEX
from pipeline.errors import DataError
from pipeline.shards import (
    VERIFY_METHODS,
    ShardError,
    open_shard,
    read_field,
    read_manifest,
    reading,
    split_entries,
    verify_shards,
)

MAPS = ("label", "depth", "depth_valid", "normals", "normal_valid")  # resampled with the nearest rule
PAD = {"rgb": 0, "label": IGNORE_INDEX, "depth": 0.0, "depth_valid": False, "normals": 0.0, "normal_valid": False}


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


@dataclass(frozen=True)
class Geometry:
    """One draw of the geometric augmentation of an image."""

    size: tuple[int, int]  # (H, W) after rescaling, before padding
    origin: tuple[int, int]  # (y0, x0) of the crop in the rescaled (and padded) image
    crop: tuple[int, int]  # (H, W) of the output
    flip: bool


def to_device(batch: dict, device: torch.device | str, non_blocking: bool = False) -> dict:
    """Move a batch (or one item) of ShardDataset items to ``device``, then convert there:
    rgb uint8 -> float32 in 0..1, label uint8 -> int64 (255 = ignore), normals float16 ->
    float32; depth (float32), the bool masks and K (float32) only move. Other entries (ids)
    are passed through. Moving before converting carries 2.4x fewer bytes to the device."""
    out = {}
    for k, v in batch.items():
        if not torch.is_tensor(v):
            out[k] = v
            continue
        v = v.to(device, non_blocking=non_blocking)
        if k == "rgb" and v.dtype == torch.uint8:
            v = v.float().div_(255.0)
        elif k == "label":
            v = v.long()
        elif k == "normals":
            v = v.float()
        out[k] = v
    return out


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


def draw_geometry(rng: np.random.Generator, size: tuple[int, int], cfg: AugmentConfig) -> Geometry:
    """Draw the rescale factor, crop origin and flip for an image of ``size`` (H, W)."""
    h, w = size
    f = float(rng.uniform(*cfg.scale))
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    ch, cw = cfg.crop or (h, w)
    y0, x0 = int(rng.integers(0, max(nh, ch) - ch + 1)), int(rng.integers(0, max(nw, cw) - cw + 1))
    return Geometry((nh, nw), (y0, x0), (ch, cw), bool(rng.random() < cfg.flip))


def _nearest_index(n_out: int, n_in: int) -> torch.Tensor:
    """Centre-aligned nearest neighbour ('nearest-exact'): output j <- input floor((j + 0.5) * n_in / n_out)."""
    j = torch.arange(n_out)
    return torch.div((2 * j + 1) * n_in, 2 * n_out, rounding_mode="floor")


def _window_indices(g: Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, row_in, col_in): the output window's pixels in rescaled-image coordinates
    (flipped, clamped to the rescaled image) and which of them lie inside it (the rest is padding)."""
    (nh, nw), (y0, x0), (ch, cw) = g.size, g.origin, g.crop
    rows, cols = torch.arange(y0, y0 + ch), torch.arange(x0, x0 + cw)
    if g.flip:
        cols = cols.flip(0)
    row_in, col_in = rows < nh, cols < nw
    return rows.clamp(max=nh - 1), cols.clamp(max=nw - 1), row_in, col_in


def _geometry_K(K: torch.Tensor, g: Geometry, size: tuple[int, int]) -> torch.Tensor:
    """The intrinsics after rescaling to ``g.size``, cropping at ``g.origin`` and the flip."""
    h, w = size
    (nh, nw), (y0, x0), (_ch, cw) = g.size, g.origin, g.crop
    K = K.clone()
    sx, sy = nw / w, nh / h
    K[0, :] *= sx
    K[1, :] *= sy
    K[0, 2] += 0.5 * sx - 0.5 - x0  # pixel-centre convention, then the crop offset
    K[1, 2] += 0.5 * sy - 0.5 - y0
    K[2] = torch.tensor([0.0, 0.0, 1.0])
    if g.flip:
        K[0, 2] = cw - 1 - K[0, 2]
        K[0, 1] = -K[0, 1]
    return K


def apply_geometry(s: dict, g: Geometry) -> dict:
    """Rescale, pad, crop and flip every map of one sample (rgb float or uint8), K following.
    Returns rgb as float32 0..1; the other maps keep their dtypes. Bitwise what
    :func:`apply_geometry_reference` returns (tests/test_distill_step_fast.py), with each window
    taken by two ``index_select`` instead of one broadcast advanced index (the same copies; 15 %
    less time per sample on the CPU)."""
    s = dict(s)
    _, h, w = s["rgb"].shape
    nh, nw = g.size
    rows, cols, row_in, col_in = _window_indices(g)
    pad_rows, pad_cols = ~row_in if not bool(row_in.all()) else None, ~col_in if not bool(col_in.all()) else None

    def window(x: torch.Tensor, r: torch.Tensor, c: torch.Tensor, fill) -> torch.Tensor:
        out = x.index_select(-2, r).index_select(-1, c)
        if pad_rows is not None:
            out[..., pad_rows, :] = fill
        if pad_cols is not None:
            out[..., :, pad_cols] = fill
        return out

    rgb = s["rgb"].float() / 255.0 if s["rgb"].dtype == torch.uint8 else s["rgb"]
    if (nh, nw) != (h, w):
        rgb = F.interpolate(rgb[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    s["rgb"] = window(rgb, rows, cols, PAD["rgb"])
    # The discrete maps index the stored map directly: rescale + crop + flip in one gather.
    src_r, src_c = _nearest_index(nh, h)[rows], _nearest_index(nw, w)[cols]
    for k in MAPS:
        s[k] = window(s[k], src_r, src_c, PAD[k])
    if g.flip:
        s["normals"] = s["normals"] * torch.tensor([-1.0, 1.0, 1.0], dtype=s["normals"].dtype).view(3, 1, 1)
    s["K"] = _geometry_K(s["K"], g, (h, w))
    return s


def apply_geometry_reference(s: dict, g: Geometry) -> dict:
    """:func:`apply_geometry` as first written (advanced indexing), kept to test the rewrite against."""
    s = dict(s)
    _, h, w = s["rgb"].shape
    nh, nw = g.size
    rows, cols, row_in, col_in = _window_indices(g)

    def window(x: torch.Tensor, r: torch.Tensor, c: torch.Tensor, fill) -> torch.Tensor:
        out = x[..., r[:, None], c]
        if not bool(row_in.all()):
            out[..., ~row_in, :] = fill
        if not bool(col_in.all()):
            out[..., :, ~col_in] = fill
        return out

    rgb = s["rgb"].float() / 255.0 if s["rgb"].dtype == torch.uint8 else s["rgb"]
    if (nh, nw) != (h, w):
        rgb = F.interpolate(rgb[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    s["rgb"] = window(rgb, rows, cols, PAD["rgb"])
    src_r, src_c = _nearest_index(nh, h)[rows], _nearest_index(nw, w)[cols]
    for k in MAPS:
        s[k] = window(s[k], src_r, src_c, PAD[k])
    if g.flip:
        s["normals"] = s["normals"] * torch.tensor([-1.0, 1.0, 1.0], dtype=s["normals"].dtype).view(3, 1, 1)
    s["K"] = _geometry_K(s["K"], g, (h, w))
    return s


def augment(s: dict, rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    """Augment one sample dict (as ShardDataset.raw gives it). RGB is computed in float32 and
    returned rounded to uint8, like the stored RGB."""
    s = apply_geometry(s, draw_geometry(rng, tuple(s["rgb"].shape[-2:]), cfg))
    rgb = _photometric(s["rgb"], rng, cfg)
    s["rgb"] = (rgb * 255.0).round_().to(torch.uint8)
    return s


class ShardDataset(Dataset):
    """Samples of one split. Each item is a dict in the shards' stored dtypes:
    rgb (3, H, W) uint8; label (H, W) uint8 (255 = ignore); depth (1, H, W) float32 metres;
    depth_valid (H, W) bool; normals (3, H, W) float16; normal_valid (H, W) bool; K (3, 3)
    float32; id str. ``to_device`` converts a batch for the model.

    ``verify``: how the shards are checked against the manifest at construction (see
    ``pipeline.shards.verify_shards``): "size" (default: presence, byte size, HDF5 schema,
    dataset/split attributes and sample counts; milliseconds, so every DDP rank can afford it),
    "sha256" (also every byte: reads every shard once; use it after copying the data), or
    "none" (True / False mean "size" / "none").
    """

    def __init__(self, shard_dir: str | Path, split: str, augment: AugmentConfig | None = None, seed: int = 0,
                 verify: str | bool = "size"):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        verify = {True: "size", False: "none"}.get(verify, verify)
        if verify not in (*VERIFY_METHODS, "none"):
            raise ValueError(f"verify={verify!r}; expected one of {[*VERIFY_METHODS, 'none']}")
        entries = split_entries(self.dir, split, self.manifest)
        paths = verify_shards(self.dir, split, verify) if verify != "none" else \
            [self.dir / e["file"] for e in entries]
        counts = [e["count"] for e in entries]
        self.index = [(p, i) for p, n in zip(paths, counts) for i in range(n)]
        self.class_names = self.manifest["class_names"]
        self.augment_cfg, self.seed = augment, seed
        # Shared memory: workers started earlier (persistent, or spawned) see set_epoch.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._files: dict[Path, dict] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the augmentation draws, in this process and in every DataLoader
        worker of this dataset (persistent or not). Call it before iterating the epoch."""
        self._epoch.fill_(int(epoch))

    def __getstate__(self) -> dict:
        # Open h5py handles do not pickle (spawn/forkserver workers, copies): drop them; the
        # receiving process reopens lazily.
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self._epoch.is_shared():  # a plain pickle / deepcopy: share again for forked workers
            self._epoch.share_memory_()

    def _file(self, path: Path) -> dict:
        """The shard's datasets by name (h5py's name lookup costs more than a small read)."""
        if self._pid != os.getpid():  # a fresh worker: never reuse handles across fork
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            try:
                f = open_shard(path)
            except DataError as e:  # rebuildable from its message: one line also from a DataLoader worker
                raise e if isinstance(e, ShardError) else ShardError(e.path, e.problem) from None
            try:
                with reading(path, "the shard's datasets"):
                    self._files[path] = {k: f[k] for k in f.keys()} | {"_file": f}
            except ShardError:
                f.close()
                raise
        return self._files[path]

    def raw(self, idx: int) -> dict:
        """Item ``idx`` without augmentation. ShardError (a DataError naming the shard, the
        sample and the dataset) when the shard cannot be read, also from a DataLoader worker."""
        path, i = self.index[idx]
        f = self._file(path)

        def get(k: str):
            return read_field(f, path, k, i)

        item = {k: get(k) for k in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K", "id")}
        with reading(path, f"sample {i}"):
            return {
                "rgb": torch.from_numpy(item["rgb"]).permute(2, 0, 1),
                "label": torch.from_numpy(item["label"]),
                "depth": torch.from_numpy(item["depth"])[None],
                "depth_valid": torch.from_numpy(item["depth_valid"]),
                "normals": torch.from_numpy(item["normals"]).permute(2, 0, 1),
                "normal_valid": torch.from_numpy(item["normal_valid"]),
                "K": torch.from_numpy(item["K"]),
                "id": item["id"],
            }

    def _rng(self, idx: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, idx])

    def geometry(self, idx: int) -> Geometry | None:
        """The geometric augmentation item ``idx`` gets at the current epoch (None without)."""
        if self.augment_cfg is None:
            return None
        path, _ = self.index[idx]
        return draw_geometry(self._rng(idx), tuple(self._file(path)["rgb"].shape[1:3]), self.augment_cfg)

    def __getitem__(self, idx: int) -> dict:
        s = self.raw(idx)
        if self.augment_cfg is not None:
            with _one_thread():
                s = augment(s, self._rng(idx), self.augment_cfg)
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
