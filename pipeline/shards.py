"""Sharded HDF5 train/val splits and their manifest.

Layout under ``out_dir``:
    <split>-00000.h5 ...   datasets per shard, chunked one sample per chunk:
        rgb (N, H, W, 3) uint8            label (N, H, W) uint8, 255 = ignore
        depth (N, H, W) float32 metres    depth_valid (N, H, W) bool
        normals (N, H, W, 3) float16      normal_valid (N, H, W) bool (unit vectors; float16
                                          quantisation <= 5e-4)
        K (N, 3, 3) float32               id, depth_backend (N,) UTF-8 strings
      attributes: schema_version, dataset, split
    manifest.json          schema_version, dataset, class names, image size, per split the
                           shards with sample counts, byte sizes and SHA-256 checksums

Each shard is written under a temporary name and renamed, so an interrupted run never leaves
a shard that looks complete; the manifest is written last.

Verification (``verify_shards``): by default "size" -- every shard is present, has the byte size
the manifest records, opens as HDF5 with our schema version and fields, carries the manifest's
dataset and split attributes, and holds the manifest's sample count in every field. That costs
a stat and an HDF5 open per shard (milliseconds for a split), so the loader does it at every
construction, on every DDP rank. It catches missing, truncated or grown shards, shards of another split or dataset and
other schemas; it does not catch bytes changed in place (same size). "sha256" adds the full checksum (reads every
byte once: 0.08 s vs 0.008 s for "size" on 59 MB of shards from the page cache, ~750 MB/s;
real datasets hold gigabytes and a cold disk is slower): run it once after
copying or downloading shards, or when in doubt. A manifest written before byte sizes were
recorded is checked with "sha256".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.manifests import read_versioned_json
from pipeline.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K")


@dataclass
class Sample:
    """One prepared sample: see the module docstring for shapes and units."""

    id: str
    rgb: np.ndarray
    label: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    normal_valid: np.ndarray
    K: np.ndarray
    depth_backend: str = ""

    @property
    def depth_valid(self) -> np.ndarray:
        return self.depth > 0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _compression(name: str, level: int | None) -> dict:
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}
    return {"compression": name}


def write_shard(path: Path, samples: list[Sample], dataset: str, split: str, compression: str = "lzf",
                level: int | None = None) -> dict:
    """Write one shard atomically. Returns its manifest entry."""
    n = len(samples)
    comp = _compression(compression, level)
    arrays = {
        "rgb": np.stack([s.rgb for s in samples]).astype(np.uint8),
        "label": np.stack([s.label for s in samples]).astype(np.uint8),
        "depth": np.stack([s.depth for s in samples]).astype(np.float32),
        "depth_valid": np.stack([s.depth_valid for s in samples]),
        "normals": np.stack([s.normals for s in samples]).astype(np.float16),
        "normal_valid": np.stack([s.normal_valid for s in samples]),
        "K": np.stack([s.K for s in samples]).astype(np.float32),
    }
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(schema_version=SCHEMA_VERSION, dataset=dataset, split=split)
            for name, arr in arrays.items():
                chunks = (1, *arr.shape[1:]) if arr.ndim > 1 else None
                f.create_dataset(name, data=arr, chunks=chunks, **(comp if arr.ndim > 2 else {}))
            strings = h5py.string_dtype("utf-8")
            f.create_dataset("id", data=[s.id for s in samples], dtype=strings)
            f.create_dataset("depth_backend", data=[s.depth_backend for s in samples], dtype=strings)
        entry = {"file": path.name, "count": n, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    return entry


def write_split(out_dir: Path, dataset: str, split: str, samples: Iterable[Sample], per_shard: int,
                compression: str = "lzf", level: int | None = None) -> list[dict]:
    """Write ``samples`` (an iterable, consumed once) as shards of ``per_shard`` samples."""
    entries, buf = [], []
    for s in samples:
        buf.append(s)
        if len(buf) == per_shard:
            entries.append(write_shard(out_dir / f"{split}-{len(entries):05d}.h5", buf, dataset, split,
                                       compression, level))
            buf = []
    if buf:
        entries.append(write_shard(out_dir / f"{split}-{len(entries):05d}.h5", buf, dataset, split,
                                   compression, level))
    return entries


def write_manifest(out_dir: Path, dataset: str, class_names, image_size, splits: dict[str, list[dict]],
                   extra: dict | None = None) -> dict:
    manifest = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "class_names": list(class_names),
                "image_size": list(image_size), "fields": list(FIELDS),
                "splits": {k: {"count": sum(e["count"] for e in v), "shards": v} for k, v in splits.items()},
                **(extra or {})}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict:
    return read_versioned_json(Path(out_dir) / MANIFEST, "shard manifest", SCHEMA_VERSION,
                               "run `lix prepare shards` first, or rebuild shards of an older schema")


VERIFY_METHODS = ("size", "sha256")


def verify_shards(out_dir: str | Path, split: str, method: str = "size") -> list[Path]:
    """Check every shard of ``split`` against the manifest; ``method`` "size" (cheap, the
    default) or "sha256" (also every byte), see the module docstring. Raises DataError naming
    the shard at fault. Returns the shard paths in order."""
    if method not in VERIFY_METHODS:
        raise ValueError(f"verify method {method!r}; expected one of {VERIFY_METHODS}")
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    if split not in m["splits"]:
        raise DataError(out_dir / MANIFEST, f"no split {split!r}; the manifest has {sorted(m['splits'])}")
    paths = []
    for e in m["splits"][split]["shards"]:
        p = out_dir / e["file"]
        if not p.is_file():
            raise DataError(p, "shard listed in the manifest is missing")
        size = p.stat().st_size
        if "bytes" in e and size != e["bytes"]:
            raise DataError(p, f"size {size} bytes, the manifest says {e['bytes']} (truncated or modified shard)")
        if (method == "sha256" or "bytes" not in e) and sha256_file(p) != e["sha256"]:
            raise DataError(p, "checksum does not match the manifest (truncated or modified shard)")
        with open_shard(p) as f:
            attrs = {k: f.attrs.get(k) for k in ("dataset", "split")}
            if attrs != {"dataset": m["dataset"], "split": split}:
                raise DataError(p, f"shard of {attrs}, the manifest lists it under "
                                   f"{{'dataset': {m['dataset']!r}, 'split': {split!r}}}")
            for k in (*FIELDS, "id"):
                if len(f[k]) != e["count"]:
                    raise DataError(p, f"{k} holds {len(f[k])} samples, the manifest says {e['count']}")
        paths.append(p)
    return paths


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only, checking it is one of ours with the right schema."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"not a readable HDF5 shard (truncated?): {e}") from None
    version = f.attrs.get("schema_version")
    missing = [k for k in (*FIELDS, "id") if k not in f]
    if version != SCHEMA_VERSION or missing:
        f.close()
        raise DataError(path, f"wrong shard schema (version {version!r}, expected {SCHEMA_VERSION}; "
                        f"missing fields {missing})")
    return f


def iter_samples(path: str | Path) -> Iterator[Sample]:
    with open_shard(path) as f:
        for i in range(len(f["rgb"])):
            yield Sample(id=f["id"][i].decode(), rgb=f["rgb"][i], label=f["label"][i], depth=f["depth"][i],
                         normals=f["normals"][i].astype(np.float32), normal_valid=f["normal_valid"][i],
                         K=f["K"][i].astype(np.float64), depth_backend=f["depth_backend"][i].decode())


def common_crop(shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The largest (H, W) every image can be cropped to (real KITTI frames differ by a pixel or two)."""
    return min(s[0] for s in shapes), min(s[1] for s in shapes)


def crop(sample: Sample, size: tuple[int, int]) -> Sample:
    """Crop to ``size``: bottom-aligned (keeps the road), horizontally centred; K follows."""
    h, w = sample.rgb.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return sample
    y0, x0 = h - th, (w - tw) // 2
    K = sample.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    sl = (slice(y0, y0 + th), slice(x0, x0 + tw))
    return Sample(sample.id, sample.rgb[sl], sample.label[sl], sample.depth[sl], sample.normals[sl],
                  sample.normal_valid[sl], K, sample.depth_backend)
