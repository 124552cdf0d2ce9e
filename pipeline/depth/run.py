"""Write dense depth for a dataset: split into parts, resumable, atomic per frame.

Outputs under ``out_dir``:
    <sample_id>.png            uint16, depth in metres * 256, 0 = invalid (KITTI depth convention)
    .log/part-I-of-N.jsonl     one line per finished frame: id, backend, fingerprint, input digest
    manifest.json               merged record: backend per frame, resolution reason (finalize)

A frame counts as done only when its PNG exists *and* its log line carries the current
fingerprint (the depth config and the code that computes depth) and the digest of the frame's
current input. So a rerun skips finished frames, an interrupted run resumes (also under DVC,
whose depth outputs are ``persist``-ed), and a changed parameter, depth code or input frame is
recomputed. ``finalize`` removes maps of frames no longer in the split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.atomic import write_json
from pipeline.depth.base import create_backend
from pipeline.depth.metrics import depth_errors, summarise
from pipeline.depth.select import resolve
from pipeline.depth_codec import encode_depth, read_depth
from pipeline.errors import DataError
from pipeline.imageio import write_image
from pipeline.progress import progress_bar
from pipeline.sources import create_reader
from pipeline.sources.base import Frame
from pipeline.splits import sample_ids

# The code whose change changes a depth map: the backends, the readers, the encodings.
_PIPELINE = Path(__file__).resolve().parents[1]
CODE = ("depth/*.py", "sources/*.py", "depth_codec.py", "imageio.py")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    h = hashlib.sha256()
    for pattern in CODE:
        for path in sorted(_PIPELINE.glob(pattern)):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(dataset: str, cfg) -> str:
    """The depth config and the depth code, hashed: what makes a finished map current."""
    blob = json.dumps({"dataset": dataset, **asdict(cfg), "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def frame_digest(frame: Frame) -> str:
    """Every input a backend may read for this frame (images, calibration, sparse depth, labels
    for ground alignment), hashed, so a changed dataset recomputes the frames that changed."""
    h = hashlib.sha256()
    for value in (frame.rgb, frame.right_rgb, frame.label, frame.K, frame.disparity, frame.depth,
                  frame.baseline, frame.camera_height, frame.camera_up):
        a = np.asarray(value if value is not None else np.zeros(0))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _is_done(entry: dict, fp: str, out_dir: Path, sid: str, reader) -> bool:
    return (entry.get("fingerprint") == fp and (out_dir / f"{sid}.png").is_file()
            and entry.get("input") == frame_digest(reader.frame(sid)))


def _log_entries(out_dir: Path) -> dict[str, dict]:
    entries = {}
    for log in sorted((out_dir / ".log").glob("part-*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:  # a line cut by an interruption
                continue
            entries[e["id"]] = e
    return entries


def part_of(ids: Sequence[str], part: int, num_parts: int) -> list[str]:
    if not 0 <= part < num_parts:
        raise DataError("--part", f"part {part} is not in [0, {num_parts})")
    return list(ids[part::num_parts])


def generate_depth(dataset: str, root, out_dir, cfg, reader_options=None, *, split=None, part: int = 0,
                   num_parts: int = 1, progress: bool = True, backend=None) -> dict:
    """Compute depth for this part's frames that are not done yet. Returns a summary."""
    out_dir = Path(out_dir)
    reader = create_reader(dataset, root, reader_options)
    ids = sample_ids(reader, split)
    if not ids:
        raise DataError(root, "no samples to compute depth for")
    name, options, reason = resolve(dataset, cfg, reader, ids[0])
    fp = fingerprint(dataset, cfg)
    log_path = out_dir / ".log" / f"part-{part}-of-{num_parts}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = _log_entries(out_dir)
    mine = part_of(ids, part, num_parts)
    todo = [i for i in mine if not _is_done(done.get(i, {}), fp, out_dir, i, reader)]
    if todo and backend is None:
        backend = create_backend(name, **options)
    with progress_bar(f"depth {dataset} [{name}]", len(todo), progress) as advance, open(log_path, "a") as log:
        for k in range(0, len(todo), backend.batch_size if todo else 1):
            batch = todo[k : k + backend.batch_size]
            frames = [reader.frame(i) for i in batch]
            for sid, frame, depth in zip(batch, frames, backend.predict(frames)):
                write_image(out_dir / f"{sid}.png", encode_depth(depth))
                log.write(json.dumps({"id": sid, "backend": name, "fingerprint": fp,
                                      "input": frame_digest(frame)}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                advance()
    return {"backend": name, "reason": reason, "computed": len(todo), "skipped": len(mine) - len(todo)}


def finalize(dataset: str, root, out_dir, cfg, reader_options=None, *, split=None, metrics_path=None,
             reason: str = "", progress: bool = True) -> dict:
    """Check every frame is done, write manifest.json and the depth-quality metrics."""
    out_dir = Path(out_dir)
    reader = create_reader(dataset, root, reader_options)
    ids = sample_ids(reader, split)
    fp = fingerprint(dataset, cfg)
    entries = _log_entries(out_dir)
    missing = [i for i in ids if not _is_done(entries.get(i, {}), fp, out_dir, i, reader)]
    if missing:
        raise DataError(out_dir, f"{len(missing)} frame(s) have no depth yet for this config, code and input "
                                 f"(first: {missing[0]}); run the remaining parts first")
    wanted = {f"{i}.png" for i in ids}
    for png in out_dir.rglob("*.png"):  # maps of frames that left the split (kept by persist)
        if png.relative_to(out_dir).as_posix() not in wanted:
            png.unlink()
    backends = {i: entries[i]["backend"] for i in ids}
    write_json(out_dir / "manifest.json", {"dataset": dataset, "fingerprint": fp, "reason": reason,
                                           "encoding": "uint16 PNG, metres * 256, 0 = invalid",
                                           "backend": backends})
    dense, sparse = [], []
    with progress_bar(f"depth metrics {dataset}", len(ids), progress) as advance:
        for i in ids:
            pred = read_depth(out_dir, i)
            gt = reader.ground_truth_depth(i)
            if gt is not None:
                dense.append(depth_errors(pred, gt))
            disp = reader.sparse_disparity(i)
            baseline = reader.baseline(i) if disp is not None else None
            if disp is not None and baseline is not None:
                lidar = np.where(disp > 0, reader.intrinsics(i)[0, 0] * baseline / np.maximum(disp, 1e-6), 0)
                sparse.append(depth_errors(pred, lidar))
            advance()
    counts: dict[str, int] = {}
    for b in backends.values():
        counts[b] = counts.get(b, 0) + 1
    metrics = {"dataset": dataset, "frames": len(ids), "backend": counts, "reason": reason,
               "vs_ground_truth": summarise(dense) if dense else None,
               "vs_sparse_lidar": summarise(sparse) if sparse else None}
    if metrics_path:
        write_json(metrics_path, metrics)
    return metrics
