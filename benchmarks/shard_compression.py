"""Per-sample read time and size of the HDF5 shards under each compression of ``shards.compression``.

    python benchmarks/shard_compression.py                        # vkitti2's first train shard
    python benchmarks/shard_compression.py --dataset nuimages --samples 40 --repeats 5

The same samples (the first ``--samples`` of the dataset's train shards, from ``data/shards/<dataset>``
after ``dvc repro``) are rewritten with ``pipeline.shards.write_shard`` as ``none``, ``lzf`` and
``gzip`` shards in a temporary folder, then read back through ``lix.data.ShardDataset`` (no
augmentation: the loader's own read path), one process, one thread. The variants alternate over
``--repeats`` passes so the machine's load drifts over all of them alike; the best pass of each is
reported (the first pass also warms the page cache). Ratios are read times over ``none``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from itertools import chain, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model  # noqa: E402

COMPRESSIONS = ("none", "lzf", "gzip")


def rewrite(shard_dir: Path, out_root: Path, n: int, compressions=COMPRESSIONS) -> dict[str, Path]:
    """The first ``n`` train samples of ``shard_dir`` rewritten as one shard per compression:
    compression -> a shard folder (manifest + ``train-00000.h5``) ``ShardDataset`` reads."""
    from pipeline.shards import iter_samples, read_manifest, split_entries, write_manifest, write_shard

    manifest = read_manifest(shard_dir)
    entries = split_entries(shard_dir, "train", manifest)
    every = chain.from_iterable(iter_samples(shard_dir / e["file"]) for e in entries)
    samples = list(islice(every, n))
    if not samples:
        raise SystemExit(f"{shard_dir}: no train samples; run `dvc repro` (or `lix prepare shards`) first")
    out = {}
    for comp in compressions:
        d = out_root / comp
        d.mkdir(parents=True)
        entry = write_shard(d / "train-00000.h5", samples, manifest["dataset"], "train", comp)
        write_manifest(d, manifest["dataset"], manifest["class_names"], manifest["image_size"], {"train": [entry]})
        out[comp] = d
    return out


def read_all(shard_dir: Path) -> float:
    """Seconds to read every sample of ``shard_dir``'s train split through ShardDataset."""
    from lix.data import ShardDataset

    ds = ShardDataset(shard_dir, "train", verify="none")
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="vkitti2")
    ap.add_argument("--data", default="data/shards", help="folder of the datasets' shard folders")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    from pipeline.errors import DataError

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            dirs = rewrite(Path(args.data) / args.dataset, Path(tmp), args.samples)
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        best = {c: float("inf") for c in dirs}
        for _ in range(args.repeats):
            for c, d in dirs.items():
                best[c] = min(best[c], read_all(d))
        size = {c: (d / "train-00000.h5").stat().st_size for c, d in dirs.items()}
    print(f"# shard_compression on {cpu_model()}, {os.cpu_count()} cores, 1 thread, torch {torch.__version__}; "
          f"{args.dataset}, {args.samples} samples, best of {args.repeats} alternating passes; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| compression | ms per sample | x none's time | MiB per sample | x none's size |")
    print("|---|---|---|---|---|")
    for c in dirs:
        ms = 1000 * best[c] / args.samples
        print(f"| {c} | {ms:.2f} | {best[c] / best['none']:.2f} | {size[c] / args.samples / 2**20:.3f} | "
              f"{size[c] / size['none']:.2f} |")


if __name__ == "__main__":
    main()
