"""Normals stage, HDF5 shards (round trip, refusal of damaged shards), the loader and previews."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lix.data
import pipeline.shards
from lix.config import NormalsConfig
from lix.data import AugmentConfig, ShardDataset
from pipeline.depth_codec import read_depth
from pipeline.errors import DataError
from pipeline.imageio import read_rgb
from pipeline.normals import surface_normals
from pipeline.shards import iter_samples, read_manifest, verify_shards
from pipeline.sources import create_reader


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory):
    """kitti: split -> depth (side-car reference) -> normals -> shards, in a temp data dir."""
    from prep_utils import prepare_kitti

    d = tmp_path_factory.mktemp("prepared")
    root = synth_root / "kitti"
    summary = prepare_kitti(root, d, preview_path=d / "preview.png", metrics_path=d / "shards.json")
    return d, root, summary


def test_shards_round_trip_every_field(prepared):
    d, root, summary = prepared
    assert summary["train_samples"] == 6 and summary["val_samples"] == 2 and summary["train_shards"] == 2
    reader = create_reader("kitti", root)
    split = json.loads((d / "split.json").read_text())
    paths = verify_shards(d / "shards", "train")
    got = [s for p in paths for s in iter_samples(p)]
    assert [s.id for s in got] == split["train"]
    for s in got:
        np.testing.assert_array_equal(s.rgb, reader.rgb(s.id))
        np.testing.assert_array_equal(s.label, reader.label(s.id))
        np.testing.assert_array_equal(s.depth, read_depth(d / "depth", s.id))  # float32, exact
        np.testing.assert_array_equal(s.depth_valid, s.depth > 0)
        np.testing.assert_allclose(s.K, reader.intrinsics(s.id), atol=1e-4)
        n, ok = surface_normals(s.depth, reader.intrinsics(s.id), max_depth=200.0, return_mask=True,
                                estimator=NormalsConfig().estimator)  # what compute_normals ran
        np.testing.assert_array_equal(s.normal_valid, ok)
        np.testing.assert_allclose(s.normals, n, atol=6e-4)  # uint16 PNG, then float16
        assert s.depth_backend == "ground_truth"
    m = read_manifest(d / "shards")
    assert m["class_names"][0] == "road" and m["image_size"] == [48, 160]
    assert json.loads((d / "shards.json").read_text())["train_samples"] == 6


def test_damaged_shards_are_refused(prepared, tmp_path):
    d, _, _ = prepared
    shards = tmp_path / "shards"
    shutil.copytree(d / "shards", shards)
    p = shards / "train-00001.h5"
    whole = p.read_bytes()
    entry = read_manifest(shards)["splits"]["train"]["shards"][1]
    assert entry["bytes"] == len(whole)
    # The default check (size + schema) refuses a truncated or grown shard, naming it.
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"train-00001.h5: size {len(whole) // 2} bytes, the manifest says "
                                        rf"{len(whole)} \(truncated"):
        ShardDataset(shards, "train")
    p.write_bytes(whole + b"\0")
    with pytest.raises(DataError, match=rf"train-00001.h5: size {len(whole) + 1} bytes"):
        ShardDataset(shards, "train")
    # A byte changed in place (same size) passes the default check; the full one catches it.
    p.write_bytes(whole[:-100] + bytes([whole[-100] ^ 0xFF]) + whole[-99:])
    assert len(ShardDataset(shards, "train")) == 6
    with pytest.raises(DataError, match="train-00001.h5: checksum does not match"):
        ShardDataset(shards, "train", verify="sha256")
    with pytest.raises(DataError, match="train-00001.h5: checksum does not match"):
        verify_shards(shards, "train", "sha256")
    with pytest.raises(ValueError, match=r"verify='md5'; expected one of \['size', 'sha256', 'none'\]"):
        ShardDataset(shards, "train", verify="md5")
    # A shard of another split under this one's name.
    import h5py

    p.write_bytes(whole)
    with h5py.File(p, "r+") as f:
        f.attrs["split"] = "val"
    m = json.loads((shards / "manifest.json").read_text())
    m["splits"]["train"]["shards"][1]["bytes"] = p.stat().st_size
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"train-00001.h5: shard of \{'dataset': 'kitti', 'split': 'val'\}, "
                                        r"the manifest lists it under \{'dataset': 'kitti', 'split': 'train'\}"):
        ShardDataset(shards, "train")
    m["schema_version"] = 99
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="shard manifest schema version 99"):
        ShardDataset(shards, "val")

    from pipeline.shards import open_shard

    with h5py.File(tmp_path / "alien.h5", "w") as f:
        f["rgb"] = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(DataError, match="wrong shard schema"):
        open_shard(tmp_path / "alien.h5")
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="not a readable HDF5 shard"):
        open_shard(p)


def test_default_verification_reads_no_shard_through(prepared, monkeypatch):
    """Constructing the dataset (every DDP rank, every run) must not hash the shards."""
    d, _, _ = prepared
    hashed = []
    real = pipeline.shards.sha256_file
    monkeypatch.setattr(pipeline.shards, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    assert len(ShardDataset(d / "shards", "train")) == 6 and len(ShardDataset(d / "shards", "val")) == 2
    assert hashed == []
    ShardDataset(d / "shards", "train", verify="sha256")
    assert hashed == ["train-00000.h5", "train-00001.h5"]


def _collect(ds, workers):
    loader = DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
    return [b for b in loader]


def test_loader_same_samples_with_0_and_2_workers(prepared):
    d, _, _ = prepared
    ds = ShardDataset(d / "shards", "train", augment=AugmentConfig(crop=(40, 120)), seed=3)
    ds.set_epoch(1)
    a, b = _collect(ds, 0), _collect(ds, 2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["id"] == y["id"]
        for k in ("rgb", "label", "depth", "normals", "normal_valid", "K"):
            assert torch.equal(x[k], y[k]), k
    assert a[0]["rgb"].shape == (2, 3, 40, 120) and a[0]["label"].dtype == torch.uint8


def test_flip_negates_x_normal(prepared):
    d, _, _ = prepared
    plain = ShardDataset(d / "shards", "val")
    flip = ShardDataset(d / "shards", "val", augment=AugmentConfig(scale=(1.0, 1.0), flip=1.0, photometric=0.0))
    a, b = plain[0], flip[0]
    assert torch.equal(b["rgb"], a["rgb"].flip(-1))
    assert torch.equal(b["label"], a["label"].flip(-1))
    assert torch.equal(b["normals"][0], -a["normals"][0].flip(-1))
    assert torch.equal(b["normals"][1:], a["normals"][1:].flip(-1))
    W = a["rgb"].shape[-1]
    assert b["K"][0, 2].item() == pytest.approx(W - 1 - a["K"][0, 2].item(), abs=1e-4)


def test_photometric_touches_rgb_only(prepared):
    d, _, _ = prepared
    plain = ShardDataset(d / "shards", "val")
    photo = ShardDataset(d / "shards", "val", augment=AugmentConfig(scale=(1.0, 1.0), flip=0.0, photometric=1.0))
    a, b = plain[1], photo[1]
    assert not torch.equal(a["rgb"], b["rgb"])
    for k in ("label", "depth", "normals", "depth_valid", "normal_valid"):
        assert torch.equal(a[k], b[k])


def test_rescale_keeps_geometry_consistent(prepared):
    """Rescale by exactly 2 (stored 48x160 -> 96x320 = the crop, so no offset): every stored pixel
    becomes a 2x2 block in every discrete map, RGB is bilinear with align_corners=False and K
    follows the pixel-centre convention u' = (u + 0.5) * 2 - 0.5."""
    d, _, _ = prepared
    ds = ShardDataset(d / "shards", "train", augment=AugmentConfig(scale=(2.0, 2.0), flip=0.0, photometric=0.0,
                                                                    crop=(96, 320)))
    for i in (0, 4):
        s, raw = ds[i], ds.raw(i)
        assert s["rgb"].shape == (3, 96, 320)

        def up(x):
            return x.repeat_interleave(2, -2).repeat_interleave(2, -1)

        for k in ("label", "depth", "depth_valid", "normals", "normal_valid"):
            assert torch.equal(s[k], up(raw[k])), k
        # Bilinear x2, align_corners=False: output 2j+1 = 3/4 x[j] + 1/4 x[j+1] (interior).
        x = raw["rgb"].double()
        odd = 0.75 * x[:, :, 1:-1] + 0.25 * x[:, :, 2:]
        want = 0.75 * odd[:, 1:-1] + 0.25 * odd[:, 2:]
        got = s["rgb"].double()[:, 3:-2:2, 3:-2:2]
        assert (got - want).abs().max() <= 0.5 + 1e-6  # rounded back to uint8
        K, K0 = s["K"].double(), raw["K"].double()
        torch.testing.assert_close(K[0, 0], K0[0, 0] * 2)
        torch.testing.assert_close(K[1, 1], K0[1, 1] * 2)
        torch.testing.assert_close(K[0, 2], (K0[0, 2] + 0.5) * 2 - 0.5)
        torch.testing.assert_close(K[1, 2], (K0[1, 2] + 0.5) * 2 - 0.5)
    b = lix.data.to_device(torch.utils.data.default_collate([ds[0], ds[1]]), "cpu")
    assert b["rgb"].dtype == torch.float32 and 0.0 <= b["rgb"].min() and b["rgb"].max() <= 1.0


def test_preview_png(prepared):
    d, _, _ = prepared
    img = read_rgb(d / "preview.png")
    assert img.shape == (5 * 48 + 4 * 2, 4 * 160 + 3 * 2, 3)  # 3 train + 2 val rows; 4 panels


def test_preview_command_from_shards(prepared, tmp_path):
    from typer.testing import CliRunner

    from lix.cli import app

    d, _, _ = prepared
    res = CliRunner().invoke(app, ["prepare", "preview", "-d", "kitti", "--shards", str(d / "shards"),
                                   "--out", str(tmp_path / "p.png"), "--rows", "1"])
    assert res.exit_code == 0, res.output
    assert read_rgb(tmp_path / "p.png").shape == (2 * 48 + 2, 4 * 160 + 3 * 2, 3)
