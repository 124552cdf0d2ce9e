"""Samples/s through the shard loader vs decoding the same samples from the native files.

    python benchmarks/loader_throughput.py                   # after `dvc repro`, all datasets
    python benchmarks/loader_throughput.py --dataset kitti --samples 100

Both paths run single-process in one run on the same samples: the native path decodes the
dataset's own files (JPG/PNG image, label encoding, the depth PNG and the normals PNG); the
shard path reads the same fields through ``lix.data.ShardDataset`` (no augmentation).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from lix.data import ShardDataset
from pipeline.depth_codec import read_depth
from pipeline.imageio import read_raw
from pipeline.normals import decode_normals
from pipeline.sources import create_reader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="*", default=["vkitti2", "kitti", "nuimages"])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; single process")
    for d in args.dataset:
        ds = ShardDataset(args.data / "shards" / d, "train")
        n = min(args.samples, len(ds))
        sample_ids = [ds.raw(i)["id"] for i in range(n)]
        reader = create_reader(d, args.data / "raw" / d)
        ds = ShardDataset(args.data / "shards" / d, "train", verify=False)  # fresh handles

        def native():
            for sid in sample_ids:
                reader.rgb(sid), reader.label(sid), reader.intrinsics(sid)
                read_depth(args.data / "depth" / d, sid)
                decode_normals(read_raw(args.data / "normals" / d / f"{sid}.png", np.uint16, channels=3))

        def shards():
            for i in range(n):
                ds[i]

        t0 = time.perf_counter()
        native()
        t1 = time.perf_counter()
        shards()
        t2 = time.perf_counter()
        print(f"{d:9s} {n} samples: native {n / (t1 - t0):8.1f} samples/s | shards {n / (t2 - t1):8.1f} samples/s "
              f"| {(t1 - t0) / (t2 - t1):.1f}x")


if __name__ == "__main__":
    main()
