"""SGBM depth at the default size and at KITTI's full resolution: the old backend against the new.

Issue 18: the ``sgbm`` backend's pixel settings were tuned at 320x96 and did not scale; on real
KITTI 2015 frames (1242x375) it kept only 33-42 % of the LiDAR-covered pixels. This renders
synthetic KITTI with the project's generator (pipeline.sources.synthetic, unchanged) at both
sizes, runs the backend as it was before the change (``--old-ref``, read with ``git show``) and
as it is in the working tree, and prints one table.

Ground truth is the generator's side-car depth (what ``ground_truth_depth`` reads); its
disparity is fx B / depth. Two coverages of it are scored:

* dense: every pixel with a side-car depth in (0, 80] m that is not labelled sky (LiDAR
  coverage without its sparsity);
* lidar: the pixels of ``disp_occ_0``, the generator's emulation of KITTI's 64-beam LiDAR
  ground truth (rows near the beams' elevations, < 80 m, no sky), as KITTI's own D1 uses.

Columns: density (share of the covered pixels with a depth), D1-all (a pixel is an error where
|d - d_gt| > 3 px and > 5 % of d_gt, and where it has no depth: holes count as errors, as in
KITTI's D1-all of a method that leaves pixels empty), D1 and EPE (px) on the kept pixels, AbsRel
of the depth on kept pixels (< 80 m), the median angle of SNE normals against those of the
side-car depth (pixels valid in both), the share of sky pixels given a depth, and seconds per
frame (the backend's ``disparity`` call alone).

The old backend reads ``max_disparity`` in pixels of the image at hand, so it runs with 64 at
320 px and 192 at 1242 px (the setting of the report); the new one reads it at 320 px width and
runs with the default 64 at both (256 px at 1242).

    python benchmarks/sgbm_density.py                      # 50 frames at 320x96, 8 at 1242x375
    python benchmarks/sgbm_density.py --small 200 --full 16
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_model  # noqa: E402  (a sibling module: the benchmarks run as scripts)

from pipeline.depth import base  # noqa: E402
from pipeline.depth.base import disparity_to_depth  # noqa: E402
from pipeline.geometry_quality import angular_error_deg  # noqa: E402
from pipeline.normals import surface_normals  # noqa: E402
from pipeline.sources import create_reader  # noqa: E402
from pipeline.sources.kitti import CLASS_NAMES  # noqa: E402
from pipeline.sources.synthetic import generate  # noqa: E402

SKY = CLASS_NAMES.index("sky")
MAX_DEPTH = 80.0
OLD_REF = "343c253"  # the last commit with the fixed-pixel backend


def load_old(ref: str):
    """The sgbm module as it was at ``ref``, imported under another name (its register call is
    made a no-op so it does not clash with the current backend's registration)."""
    src = subprocess.run(["git", "show", f"{ref}:pipeline/depth/sgbm.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sgbm_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sgbm_old", path)
    mod = importlib.util.module_from_spec(spec)
    register = base.register_backend
    base.register_backend = lambda name: (lambda cls: cls)
    try:
        spec.loader.exec_module(mod)
    finally:
        base.register_backend = register
    return mod


def machine() -> str:
    import cv2

    cpu = cpu_model()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {os.cpu_count()} logical CPUs (load average {load}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")


def score(disp: np.ndarray, frame, sidecar: np.ndarray, sparse: np.ndarray | None) -> dict:
    """Sums for one frame; pooled by :func:`summarise`. Independent of the backend's code."""
    fxb = frame.K[0, 0] * frame.baseline
    covered = (sidecar > 0) & (sidecar <= MAX_DEPTH) & (frame.label != SKY)
    d_gt = np.where(covered, fxb / np.where(covered, sidecar, 1.0), 0.0)
    out = {}
    for name, cov, gt in (("dense", covered, d_gt), ("lidar", sparse > 0 if sparse is not None else None, sparse)):
        if cov is None:
            continue
        kept = cov & (disp > 0)
        err = np.abs(disp - gt)
        bad = kept & (err > 3.0) & (err > 0.05 * gt)
        out[name] = (int(cov.sum()), int(kept.sum()), int(bad.sum()), float(err[kept].sum()))
    depth = disparity_to_depth(disp, frame.K[0, 0], frame.baseline, MAX_DEPTH)
    m = (depth > 0) & covered
    out["absrel"] = (int(m.sum()), float((np.abs(depth[m] - sidecar[m]) / sidecar[m]).sum()))
    n, ok = surface_normals(depth, frame.K, 200.0, return_mask=True, estimator="sne")
    n_ref, ok_ref = surface_normals(np.where(covered, sidecar, 0).astype(np.float32), frame.K, 200.0,
                                    return_mask=True, estimator="sne")
    both = ok & ok_ref
    out["normals"] = angular_error_deg(n[both], n_ref[both])
    sky = frame.label == SKY
    out["sky"] = (int(sky.sum()), int((sky & (disp > 0)).sum()))
    return out


def summarise(parts: list[dict], seconds: list[float]) -> dict:
    row = {}
    for name in ("dense", "lidar"):
        n, k, b, e = (sum(p[name][i] for p in parts) for i in range(4))
        row[name] = {"density": k / n, "d1_all": (b + n - k) / n, "d1_kept": b / max(k, 1), "epe": e / max(k, 1)}
    n, s = sum(p["absrel"][0] for p in parts), sum(p["absrel"][1] for p in parts)
    row["abs_rel"] = s / max(n, 1)
    errs = np.concatenate([p["normals"] for p in parts])
    row["normals_deg"] = float(np.nanmedian(errs)) if errs.size else float("nan")
    sky, sky_valid = sum(p["sky"][0] for p in parts), sum(p["sky"][1] for p in parts)
    row["sky_valid"] = sky_valid / max(sky, 1)
    row["s_per_frame"] = float(np.mean(seconds))
    return row


def run(backend, frames: list) -> dict:
    parts, seconds = [], []
    for f, sidecar, sparse in frames:
        t = time.perf_counter()
        disp = backend.disparity(f.rgb, f.right_rgb)
        seconds.append(time.perf_counter() - t)
        parts.append(score(disp, f, sidecar, sparse))
    return summarise(parts, seconds)


def render(root: Path, n: int, width: int, height: int, seed: int) -> list:
    generate("kitti", root, n_images=n, width=width, height=height, seed=seed, workers=1, progress=False)
    r = create_reader("kitti", root)
    return [(r.frame(i), r.ground_truth_depth(i), r.sparse_disparity(i)) for i in r.ids()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=50, help="frames at 320x96")
    ap.add_argument("--full", type=int, default=8, help="frames at 1242x375")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (params.yaml synthetic.kitti: 1)")
    ap.add_argument("--old-ref", default=OLD_REF, help="git revision of the old backend")
    args = ap.parse_args(argv)

    from pipeline.depth.sgbm import SGBMBackend

    old = load_old(args.old_ref)
    print(f"machine: {machine()}")
    print(f"old: pipeline/depth/sgbm.py at {args.old_ref}; new: the working tree; seed {args.seed}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h, n) in ((320, 96, args.small), (1242, 375, args.full)):
            if n <= 0:
                continue
            frames = render(Path(tmp) / f"kitti{w}", n, w, h, args.seed)
            versions = (("old", old.SGBMBackend(max_disparity=64 if w == 320 else 192, max_depth=MAX_DEPTH)),
                        ("new", SGBMBackend(max_depth=MAX_DEPTH)))
            for name, backend in versions:
                rows.append((f"{w}x{h}", n, name, run(backend, frames)))
                print(".", end="", flush=True)
    print()
    head = (f"{'size':9s} {'frames':>6s} {'code':4s} | {'density':>7s} {'D1-all':>6s} {'D1 kept':>7s} "
            f"{'EPE':>5s} | {'LiDAR: dens':>11s} {'D1-all':>6s} {'D1 kept':>7s} | {'AbsRel':>6s} {'SNE deg':>7s} "
            f"{'sky':>5s} | s/frame")
    print(head)
    print("-" * len(head))
    for size, n, name, r in rows:
        d, lid = r["dense"], r["lidar"]
        print(f"{size:9s} {n:6d} {name:4s} | {d['density']:7.3f} {d['d1_all']:6.3f} {d['d1_kept']:7.4f} "
              f"{d['epe']:5.2f} | {lid['density']:11.3f} {lid['d1_all']:6.3f} {lid['d1_kept']:7.4f} | "
              f"{r['abs_rel']:6.3f} {r['normals_deg']:7.1f} {r['sky_valid']:5.3f} | {r['s_per_frame']:.2f}")
    print("density / D1: share of the covered pixels; D1-all counts holes as errors (see the docstring).")


if __name__ == "__main__":
    main()
