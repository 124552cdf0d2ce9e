"""SNE normals throughput on one CPU core at KITTI size (1242x375), and the torch variant.

    python benchmarks/normals_throughput.py            # renders 3 synthetic KITTI frames first

Prints Mpx/s for the numpy estimator (one core: numpy is single-threaded here), the torch
variant on one CPU thread, on CUDA when present, and a per-pixel-median reference
(np.nanmedian over the neighbour estimates) for scale.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

from pipeline.normals import surface_normals, surface_normals_torch
from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate


def rate(fn, n_px, repeat=5):
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n_px * repeat / (time.perf_counter() - t) / 1e6


def nanmedian_reference(depth, K):
    """The same estimator with np.nanmedian (the obvious implementation), for comparison."""
    import pipeline.normals as N

    real = N._median_of_finite
    N._median_of_finite = lambda v: np.nanmedian(v, axis=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return surface_normals(depth, K)
    finally:
        N._median_of_finite = real


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        generate("kitti", f"{tmp}/kitti", n_images=3, width=1242, height=375, seed=0, progress=False)
        r = create_reader("kitti", f"{tmp}/kitti")
        frames = [r.frame(i) for i in r.ids()]
    n_px = 1242 * 375
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"torch {torch.__version__} (1 thread)")
    for f in frames[:1]:
        fast = rate(lambda: surface_normals(f.depth, f.K), n_px)
        ref = rate(lambda: nanmedian_reference(f.depth, f.K), n_px, repeat=2)
        d, K = torch.from_numpy(f.depth)[None], torch.from_numpy(f.K)
        tch = rate(lambda: surface_normals_torch(d, K), n_px)
        print(f"numpy SNE (sorting-network median): {fast:6.2f} Mpx/s")
        print(f"numpy SNE (np.nanmedian)          : {ref:6.2f} Mpx/s   -> {fast / ref:.1f}x")
        print(f"torch SNE, CPU 1 thread           : {tch:6.2f} Mpx/s")
        if torch.cuda.is_available():
            db = torch.from_numpy(np.stack([x.depth for x in frames] * 8)).cuda()
            Kb = torch.from_numpy(np.stack([x.K for x in frames] * 8)).cuda()

            def run():
                surface_normals_torch(db, Kb)
                torch.cuda.synchronize()

            print(f"torch SNE, {torch.cuda.get_device_name()} batch {len(db)}: {rate(run, n_px * len(db)):.1f} Mpx/s")


if __name__ == "__main__":
    main()
