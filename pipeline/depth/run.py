"""Write dense depth for a dataset: split into parts, resumable, atomic per frame.

Outputs under ``out_dir``:
    <sample_id>.png            uint16, depth in metres * 256, 0 = invalid (KITTI depth convention)
    .log/part-I-of-N.jsonl     one line per finished frame: id, backend, config fingerprint
    manifest.json               merged record: backend per frame, resolution reason (finalize)

A frame counts as done only when its PNG exists *and* its log line carries the current
fingerprint, so a rerun skips finished frames, an interrupted run resumes, and a changed
parameter recomputes everything.
"""

from __future__ import annotations

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
from pipeline.errors import DataError
from pipeline.depth_codec import encode_depth, read_depth
from pipeline.imageio import write_image
from pipeline.sources import create_reader
from pipeline.progress import progress_bar
from pipeline.splits import read_manifest

def fingerprint(dataset: str, cfg) -> str:
    blob = json.dumps({"dataset": dataset, **asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def sample_ids(reader, split_path: str | Path | None) -> list[str]:
    if split_path is None:
        return reader.ids()
    m = read_manifest(split_path)
    return sorted(m["train"] + m["val"])


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
    todo = [i for i in mine if not (done.get(i, {}).get("fingerprint") == fp and (out_dir / f"{i}.png").is_file())]
    if todo and backend is None:
        backend = create_backend(name, **options)
    with progress_bar(f"depth {dataset} [{name}]", len(todo), progress) as advance, open(log_path, "a") as log:
        for k in range(0, len(todo), backend.batch_size if todo else 1):
            batch = todo[k : k + backend.batch_size]
            frames = [reader.frame(i) for i in batch]
            for sid, depth in zip(batch, backend.predict(frames)):
                write_image(out_dir / f"{sid}.png", encode_depth(depth))
                log.write(json.dumps({"id": sid, "backend": name, "fingerprint": fp}) + "\n")
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
    missing = [i for i in ids if entries.get(i, {}).get("fingerprint") != fp or not (out_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(out_dir, f"{len(missing)} frame(s) have no depth yet (first: {missing[0]}); "
                        "run the remaining parts first")
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
