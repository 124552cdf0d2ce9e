"""benchmarks/shard_compression.py measures the same samples under each compression: its
rewritten shards read back equal to the source through the loader, and compress in order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import shard_compression  # noqa: E402

from lix.data import ShardDataset  # noqa: E402
from pipeline.shards import Sample, write_manifest, write_shard  # noqa: E402


def _sample(k: int, h: int = 24, w: int = 40) -> Sample:
    rng = np.random.default_rng(k)
    y, x = np.mgrid[:h, :w]
    rgb = np.stack([(3 * x + k) % 256, (5 * y) % 256, np.full_like(x, 90)], -1).astype(np.uint8)  # smooth: compressible
    depth = (1.0 + y + 0.1 * x).astype(np.float32)
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    return Sample(f"s{k}", rgb, (x % 3).astype(np.uint8), depth, normals, depth > 0, np.eye(3))


def test_rewrite_keeps_every_field_under_each_compression(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    entries = [write_shard(src / "train-00000.h5", [_sample(k) for k in range(3)], "synthetic", "train", "none"),
               write_shard(src / "train-00001.h5", [_sample(k) for k in range(3, 5)], "synthetic", "train", "none")]
    write_manifest(src, "synthetic", ["a", "b", "c"], (24, 40), {"train": entries})
    dirs = shard_compression.rewrite(src, tmp_path / "out", 4)  # spans both source shards
    assert set(dirs) == set(shard_compression.COMPRESSIONS)
    ref = ShardDataset(src, "train", verify="none")
    for comp, d in dirs.items():
        ds = ShardDataset(d, "train")
        assert len(ds) == 4, comp
        for i in range(4):
            a, b = ref[i], ds[i]
            for key in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K"):
                np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=f"{comp} {key}")
        assert shard_compression.read_all(d) > 0
    size = {c: (d / "train-00000.h5").stat().st_size for c, d in dirs.items()}
    assert size["gzip"] < size["none"] and size["lzf"] < size["none"]


def test_missing_shards_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["shard_compression.py", "--data", str(tmp_path), "--dataset", "kitti"])
    with pytest.raises(SystemExit) as e:
        shard_compression.main()
    assert "kitti" in str(e.value) and "manifest.json" in str(e.value)
