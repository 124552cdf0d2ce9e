"""Samples/s through the shard loader vs decoding the same samples from the native files.

    python benchmarks/loader_throughput.py                   # after `dvc repro`, all datasets
    python benchmarks/loader_throughput.py --dataset kitti --samples 100
    python benchmarks/loader_throughput.py --dataset kitti --loader   # + the DataLoader item dtypes

Both paths run single-process in one run on the same samples, in ``--repeats`` alternating
passes (the best of each is reported; the first pass also warms the page cache): the native
path decodes the dataset's own files (JPG/PNG image, label encoding, the depth PNG and the
normals PNG); the shard path reads the same fields through ``lix.data.ShardDataset`` (no
augmentation; items in the stored dtypes, as the native readers return them).

``--loader`` also measures a DataLoader (``--workers`` workers, ``--batch-size``, persistent,
one warm-up epoch, then the median of ``--repeats`` timed epochs, alternating between the
variants) shipping the items in their stored dtypes (uint8 RGB and labels, float16 normals;
``lix.data.to_device`` converts in the main process) against float32/int64 items converted
inside the workers (what the loader shipped before), without and with augmentation (random
rescale, flip, photometric; crop to the stored size). On a small machine pass
``--main-threads 1``: the main process's intra-op threads otherwise compete with the workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lix.data import AugmentConfig, ShardDataset, to_device
from pipeline.depth_codec import read_depth
from pipeline.imageio import read_raw
from pipeline.normals import decode_normals
from pipeline.sources import create_reader


class FloatItems(Dataset):
    """The dataset's items converted to float32 rgb / int64 labels / float32 normals in the worker."""

    def __init__(self, ds: ShardDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return to_device(self.ds[i], "cpu")


def loader_rates(datasets: dict[str, tuple[Dataset, bool]], workers: int, batch_size: int,
                 repeats: int) -> dict[str, float]:
    """Samples/s of each (dataset, convert in main) through a persistent DataLoader; the timed
    epochs alternate between the variants so that load from elsewhere hits them alike."""
    loaders = {k: (DataLoader(ds, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0),
                   convert) for k, (ds, convert) in datasets.items()}

    def epoch(loader, convert) -> float:
        t = time.perf_counter()
        for b in loader:
            if convert:
                to_device(b, "cpu")
        return time.perf_counter() - t

    for loader, convert in loaders.values():
        epoch(loader, convert)  # start the workers, open the shards
    times = {k: [] for k in loaders}
    for _ in range(repeats):
        for k, (loader, convert) in loaders.items():
            times[k].append(epoch(loader, convert))
    return {k: len(datasets[k][0]) / statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="*", default=["vkitti2", "kitti", "nuimages"])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--loader", action="store_true", help="also time a DataLoader: stored vs float32 items")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes (epochs with --loader)")
    ap.add_argument("--main-threads", type=int, default=None,
                    help="torch threads of the main process (default: torch's); workers run on one")
    args = ap.parse_args()
    if args.main_threads:
        torch.set_num_threads(args.main_threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
          f"{torch.__version__}; native vs shards single process")
    for d in args.dataset:
        shard_dir = args.data / "shards" / d
        ds = ShardDataset(shard_dir, "train")
        n = min(args.samples, len(ds))
        sample_ids = [ds.raw(i)["id"] for i in range(n)]
        reader = create_reader(d, args.data / "raw" / d)
        ds = ShardDataset(shard_dir, "train", verify=False)  # fresh handles

        def native():
            for sid in sample_ids:
                reader.rgb(sid), reader.label(sid), reader.intrinsics(sid)
                read_depth(args.data / "depth" / d, sid)
                decode_normals(read_raw(args.data / "normals" / d / f"{sid}.png", np.uint16, channels=3))

        def shards():
            for i in range(n):
                ds[i]

        t_native, t_shards = [], []
        for _ in range(args.repeats):  # alternating passes, best of each: load from elsewhere only slows
            t0 = time.perf_counter()
            native()
            t1 = time.perf_counter()
            shards()
            t2 = time.perf_counter()
            t_native.append(t1 - t0)
            t_shards.append(t2 - t1)
        tn, ts = min(t_native), min(t_shards)
        print(f"{d:9s} {n} samples, best of {args.repeats}: native {n / tn:8.1f} samples/s | shards {n / ts:8.1f} "
              f"samples/s | {tn / ts:.1f}x")
        if args.loader:
            print(f"{d:9s} DataLoader, {args.workers} workers, batch {args.batch_size}, {len(ds)} samples/epoch, "
                  f"main process on {torch.get_num_threads()} threads:")
            for name, cfg in (("no augmentation", None), ("augmentation", AugmentConfig())):
                ds = ShardDataset(shard_dir, "train", augment=cfg, verify=False)
                r = loader_rates({"stored": (ds, False), "stored+cpu": (ds, True), "float": (FloatItems(ds), False)},
                                 args.workers, args.batch_size, args.repeats)
                print(f"    {name:16s} stored dtypes {r['stored']:7.1f} samples/s ({r['stored'] / r['float']:.2f}x) | "
                      f"+ to_device('cpu') in the main process {r['stored+cpu']:7.1f} "
                      f"({r['stored+cpu'] / r['float']:.2f}x) | float32 items {r['float']:7.1f}")


if __name__ == "__main__":
    main()
