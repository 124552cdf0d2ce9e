"""Surface-normal throughput at KITTI size (1242x375) on one CPU core, side by side with a
torch port of SNE-RoadSeg's official SNE (hlwang1124/SNE-RoadSeg, models/sne_model.py).

    python benchmarks/normals_throughput.py [--rounds 15]    # renders 3 synthetic KITTI frames first

Methods, timed in interleaved rounds (one call each per round, so that a busy machine slows all
of them alike); the table gives the median and the best round, in Mpx/s:
  numpy sne        pipeline.normals.surface_normals(estimator='sne'): the default
  numpy median4    the same with estimator='median4'
  numpy median4 (np.nanmedian)   median4 with the obvious median, for scale
  official (torch) the official module's formulas, one operation per line (the port in
                   tests/test_normals.py), torch on 1 CPU thread
  torch sne / torch median4      pipeline.normals.surface_normals_torch, 1 CPU thread
  and on CUDA when present: torch sne on a batch of 24 frames, the official port per frame.
numpy is single-threaded here; torch is set to 1 thread. The target: numpy sne >= 10x the
official port.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # a sibling module: the benchmarks run as scripts

from pipeline.normals import surface_normals, surface_normals_torch
from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def official_port():
    """``sne_official`` from tests/test_normals.py (one port of the official code, not two)."""
    spec = importlib.util.spec_from_file_location("_normals_tests", ROOT / "tests" / "test_normals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.sne_official


def nanmedian_median4(depth, K):
    """'median4' with np.nanmedian over the neighbour estimates (the obvious implementation)."""
    import pipeline.normals as N

    real = N._median_of_finite
    N._median_of_finite = lambda v: np.nanmedian(v, axis=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return surface_normals(depth, K, estimator="median4")
    finally:
        N._median_of_finite = real


def time_interleaved(methods: dict, rounds: int) -> dict:
    """{name: [seconds per call]}: every method once per round, after one warm-up call each."""
    for fn, _ in methods.values():
        fn()
    times = {name: [] for name in methods}
    for r in range(rounds):
        for name, (fn, every) in methods.items():
            if r % every:
                continue
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        generate("kitti", f"{tmp}/kitti", n_images=3, width=1242, height=375, seed=0, progress=False)
        r = create_reader("kitti", f"{tmp}/kitti")
        frames = [r.frame(i) for i in r.ids()]
    f = frames[0]
    depth, K = f.depth, f.K
    n_px = depth.size
    sne_official = official_port()
    dt, Kt = torch.from_numpy(depth)[None], torch.from_numpy(K)
    methods = {  # name: (call, run every n-th round)
        "numpy sne": (lambda: surface_normals(depth, K, max_depth=200.0), 1),
        "numpy median4": (lambda: surface_normals(depth, K, max_depth=200.0, estimator="median4"), 1),
        "numpy median4 (np.nanmedian)": (lambda: nanmedian_median4(depth, K), 3),
        "official (torch)": (lambda: sne_official(depth, K), 1),
        "torch sne": (lambda: surface_normals_torch(dt, Kt, 200.0), 1),
        "torch median4": (lambda: surface_normals_torch(dt, Kt, 200.0, estimator="median4"), 1),
    }
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}, "
          f"numpy {np.__version__} (single-threaded), torch {torch.__version__} "
          f"({torch.get_num_threads()} thread)")
    print(f"input: synthetic KITTI depth {depth.shape[1]}x{depth.shape[0]}, {args.rounds} interleaved rounds")
    times = time_interleaved(methods, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"{'method':32s} {'median Mpx/s':>12s} {'best Mpx/s':>11s} {'ms (median)':>12s}")
    for name in methods:
        print(f"{name:32s} {n_px / med[name] / 1e6:12.2f} {n_px / best[name] / 1e6:11.2f} {med[name] * 1e3:12.1f}")
    ref = "official (torch)"
    print(f"numpy sne vs official (torch, 1 thread): {med[ref] / med['numpy sne']:.1f}x (medians), "
          f"{best[ref] / best['numpy sne']:.1f}x (best rounds)")
    print(f"numpy median4 vs np.nanmedian: {med['numpy median4 (np.nanmedian)'] / med['numpy median4']:.1f}x; "
          f"torch sne (1 thread) vs official: {med[ref] / med['torch sne']:.1f}x")
    if torch.cuda.is_available():
        db = torch.from_numpy(np.stack([x.depth for x in frames] * 8)).cuda()
        Kb = torch.from_numpy(np.stack([x.K for x in frames] * 8)).cuda()

        def run_batch():
            surface_normals_torch(db, Kb, 200.0)
            torch.cuda.synchronize()

        cuda = time_interleaved({"torch sne": (run_batch, 1)}, args.rounds)
        t = statistics.median(cuda["torch sne"])
        print(f"torch sne, {torch.cuda.get_device_name()}, batch {len(db)}: {n_px * len(db) / t / 1e6:.1f} Mpx/s")
    else:
        print("CUDA: not available here")


if __name__ == "__main__":
    main()
