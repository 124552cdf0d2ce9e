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
copying or downloading shards, or when in doubt (``lix prepare verify-shards --sha256``). A
manifest written before byte sizes were recorded is checked with "sha256".

Errors: whatever h5py or numpy raises on a damaged shard (KeyError, OSError, ValueError,
TypeError, RuntimeError, ...) while opening it, checking it or reading a sample becomes a
``ShardError`` (a DataError) naming the shard file and the sample index and dataset read. A
ShardError can be rebuilt from its message alone, so one raised in a DataLoader worker reaches
the main process as the same one line (torch re-raises a worker's exception as
``type(message)``, and as a RuntimeError carrying the worker's traceback when that fails).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import DataError
from pipeline.manifests import read_versioned_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K")
# dtype and trailing shape (after the sample axis) of each field; "H", "W": the image size (rgb's).
LAYOUT = {"rgb": ("uint8", ("H", "W", 3)), "label": ("uint8", ("H", "W")), "depth": ("float32", ("H", "W")),
          "depth_valid": ("bool", ("H", "W")), "normals": ("float16", ("H", "W", 3)),
          "normal_valid": ("bool", ("H", "W")), "K": ("float32", (3, 3))}
CORRUPT_HINT = ("the shard is corrupt: check the shards with `lix prepare verify-shards --sha256`, "
                "rebuild them with `lix prepare shards`")


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` in at most 200 characters (just ``Type`` when empty)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


class ShardError(DataError):
    """A shard file that cannot be read as one of ours. ``ShardError(path, problem)`` like any
    DataError; ``ShardError(message)`` rebuilds one from its message, which is what torch's
    DataLoader does with a worker's exception (``exc_type(text)``, the text ending in the
    worker's traceback, whose last line is ``...ShardError: <path>: <problem>``): so the main
    process raises the worker's error with the same one-line message."""

    def __init__(self, path: str | Path, problem: str | None = None):
        if problem is None:
            path, problem = _split_message(str(path))
        super().__init__(path, problem)

    def __reduce__(self):
        return type(self), (str(self.path), self.problem)


def _split_message(text: str) -> tuple[str, str]:
    """(path, problem) from ``"<path>: <problem>"`` or from a DataLoader's ``"Caught ShardError
    in DataLoader worker process 0.\nOriginal Traceback ...\npipeline.shards.ShardError:
    <path>: <problem>"``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = next((ln.split("ShardError: ", 1)[1] for ln in reversed(lines) if "ShardError: " in ln),
                lines[-1] if lines else text)
    cuts = [i for i in range(len(line)) if line.startswith(": ", i)]
    if not cuts:
        return "shard", line
    # the path ends at the first ": " after a shard or manifest file name (a path may hold ": ")
    cut = next((i for i in cuts if line[:i].endswith((".h5", ".json"))), cuts[0])
    return line[:cut], line[cut + 2:]


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
    """The shard manifest of ``out_dir``; DataError naming manifest.json when it is missing, not
    JSON, of another schema version, or lacks the entries the loader reads."""
    path = Path(out_dir) / MANIFEST
    try:
        m = read_versioned_json(path, "shard manifest", SCHEMA_VERSION,
                                "run `lix prepare shards` first, or rebuild shards of an older schema")
    except (AttributeError, TypeError):  # valid JSON, but not an object
        raise DataError(path, "not a shard manifest (expected a JSON object with schema_version, dataset, "
                              "class_names and splits)") from None
    _check_manifest(path, m)
    return m


def _check_manifest(path: Path, m: dict) -> None:
    def bad(what: str):
        raise DataError(path, f"malformed shard manifest: {what} (rebuild the shards with `lix prepare shards`)")

    if not isinstance(m.get("dataset"), str):
        bad(f"'dataset' is {m.get('dataset')!r}, expected a name")
    names = m.get("class_names")
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        bad("'class_names' is not a list of names")
    splits = m.get("splits")
    if not isinstance(splits, dict):
        bad("'splits' is not an object of splits")
    for split, v in splits.items():
        shards = v.get("shards") if isinstance(v, dict) else None
        if not isinstance(shards, list):
            bad(f"splits.{split}.shards is not a list")
        for k, e in enumerate(shards):
            where = f"splits.{split}.shards[{k}]"
            if not isinstance(e, dict):
                bad(f"{where} is not an object")
            if not isinstance(e.get("file"), str) or Path(e["file"]).name != e["file"]:
                bad(f"{where}.file is {e.get('file')!r}, expected a file name")
            if not isinstance(e.get("count"), int) or isinstance(e["count"], bool) or e["count"] < 0:
                bad(f"{where}.count is {e.get('count')!r}, expected a sample count")
            if not isinstance(e.get("sha256"), str):
                bad(f"{where}.sha256 is {e.get('sha256')!r}, expected a hex digest")
            if "bytes" in e and (not isinstance(e["bytes"], int) or isinstance(e["bytes"], bool)):
                bad(f"{where}.bytes is {e['bytes']!r}, expected a byte count")


def split_entries(out_dir: str | Path, split: str, manifest: dict | None = None) -> list[dict]:
    """The manifest entries ({file, count, bytes, sha256}) of ``split``'s shards; DataError
    naming manifest.json when the split is not there."""
    m = read_manifest(out_dir) if manifest is None else manifest
    if split not in m["splits"]:
        raise DataError(Path(out_dir) / MANIFEST, f"no split {split!r}; the manifest has {sorted(m['splits'])}")
    return m["splits"][split]["shards"]


VERIFY_METHODS = ("size", "sha256")


def verify_shards(out_dir: str | Path, split: str, method: str = "size",
                  on_shard: Callable[[Path], None] | None = None) -> list[Path]:
    """Check every shard of ``split`` against the manifest; ``method`` "size" (cheap, the
    default) or "sha256" (also every byte), see the module docstring. Raises DataError naming
    the shard at fault. ``on_shard(path)`` is called after each shard passed (progress bars).
    Returns the shard paths in order."""
    if method not in VERIFY_METHODS:
        raise ValueError(f"verify method {method!r}; expected one of {VERIFY_METHODS}")
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    paths = []
    for e in split_entries(out_dir, split, m):
        p = out_dir / e["file"]
        if not p.is_file():
            raise DataError(p, "shard listed in the manifest is missing")
        size = p.stat().st_size
        if "bytes" in e and size != e["bytes"]:
            raise DataError(p, f"size {size} bytes, the manifest says {e['bytes']} (truncated or modified shard)")
        if method == "sha256" or "bytes" not in e:
            try:
                digest = sha256_file(p)
            except OSError as err:
                raise ShardError(p, f"cannot be read ({_first_line(err)})") from None
            if digest != e["sha256"]:
                raise DataError(p, "checksum does not match the manifest (truncated or modified shard)")
        with open_shard(p) as f:
            with reading(p, "the dataset and split attributes"):
                attrs = {k: _attr(f.attrs.get(k)) for k in ("dataset", "split")}
            if attrs != {"dataset": m["dataset"], "split": split}:
                raise DataError(p, f"shard of {attrs}, the manifest lists it under "
                                   f"{{'dataset': {m['dataset']!r}, 'split': {split!r}}}")
            with reading(p, "the sample counts"):
                for k in (*FIELDS, "id"):
                    n = len(f[k])
                    if n != e["count"]:
                        raise DataError(p, f"{k} holds {n} samples, the manifest says {e['count']}")
                hw = list(f["rgb"].shape[1:3])
            size_hw = m.get("image_size")
            if isinstance(size_hw, list) and len(size_hw) == 2 and hw != size_hw:
                raise ShardError(p, f"images of {tuple(hw)} (H, W), the manifest says {tuple(size_hw)}; "
                                    f"{CORRUPT_HINT}")
        paths.append(p)
        if on_shard is not None:
            on_shard(p)
    return paths


def _attr(v):
    return v.decode() if isinstance(v, bytes) else v


class reading:
    """``with reading(path, what):`` turns any error of h5py or numpy inside into a ShardError
    naming the shard and ``what`` was being read (DataErrors pass as they are)."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or isinstance(e, DataError) or not isinstance(e, Exception):
            return False
        raise ShardError(self.path, f"cannot read {self.what} ({_first_line(e)}); {CORRUPT_HINT}") from None


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only, checking it is one of ours: schema version, every field present
    with its dtype and shape, every field holding as many samples. ShardError naming the file
    (and the field) otherwise, whatever h5py raised."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # OSError mostly; a damaged superblock can give others
        raise ShardError(path, f"not a readable HDF5 shard (truncated?): {_first_line(e)}") from None
    try:
        _check_schema(path, f)
    except BaseException:
        f.close()
        raise
    return f


def _check_schema(path: Path, f: h5py.File) -> None:
    with reading(path, "the shard's header (schema version, field names)"):
        version = f.attrs.get("schema_version")
        missing = [k for k in (*FIELDS, "id") if k not in f]
    if version != SCHEMA_VERSION:
        raise ShardError(path, f"wrong shard schema (version {version!r}, expected {SCHEMA_VERSION}; "
                               f"missing fields {missing}): not a shard of this code, rebuild with "
                               f"`lix prepare shards`")
    if missing:
        raise ShardError(path, f"wrong shard schema (missing fields {missing}); {CORRUPT_HINT}")
    n = hw = None
    for k in (*FIELDS, "id"):
        with reading(path, f"the header of dataset {k!r}"):
            ds = f[k]
            if not isinstance(ds, h5py.Dataset):
                raise ShardError(path, f"{k!r} is a {type(ds).__name__}, expected a dataset; {CORRUPT_HINT}")
            dtype, shape = ds.dtype, ds.shape
            is_string = h5py.check_string_dtype(dtype) is not None
        if k == "id":
            want, ok = "(N,) strings", is_string and len(shape) == 1
        else:
            kind, trailing = LAYOUT[k]
            hw = hw or (shape[1:3] if k == "rgb" and len(shape) == 4 else None)
            dims = tuple(hw[0] if t == "H" else hw[1] if t == "W" else t for t in trailing) if hw else None
            want = f"(N, {', '.join(map(str, trailing))}) {kind}"
            ok = dtype == np.dtype(kind) and dims is not None and tuple(shape[1:]) == dims
        if ok and n is not None and shape[0] != n:
            raise ShardError(path, f"dataset {k!r} holds {shape[0]} samples, 'rgb' {n}; {CORRUPT_HINT}")
        if not ok:
            raise ShardError(path, f"dataset {k!r} is {shape} {dtype}, expected {want}; {CORRUPT_HINT}")
        n = shape[0] if n is None else n


def read_field(f, path: Path, key: str, i: int):
    """``f[key][i]`` (``f``: an open shard or its datasets by name), strings decoded; ShardError
    naming the shard, the sample and the dataset when it cannot be read."""
    try:
        v = f[key][i]
        return v.decode() if key in ("id", "depth_backend") else v
    except Exception as e:
        raise ShardError(path, f"sample {i}, dataset {key!r}: cannot be read ({_first_line(e)}); "
                               f"{CORRUPT_HINT}") from None


def iter_samples(path: str | Path) -> Iterator[Sample]:
    path = Path(path)
    with open_shard(path) as f:
        def get(k, i):
            return read_field(f, path, k, i)

        for i in range(len(f["rgb"])):
            yield Sample(id=get("id", i), rgb=get("rgb", i), label=get("label", i), depth=get("depth", i),
                         normals=get("normals", i).astype(np.float32), normal_valid=get("normal_valid", i),
                         K=get("K", i).astype(np.float64), depth_backend=get("depth_backend", i))


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
