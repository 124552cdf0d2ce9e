"""The shard loader as the trainer uses it: alignment of every modality under rescale / crop /
pad / flip, pickling for spawn workers, set_epoch with persistent workers, item dtypes.

The shards here are written directly (pipeline.shards.write_shard) with coded content, so that
every output pixel tells which stored pixel it came from:
  depth = 1 + row * W + col (0 = invalid on a sparse pattern), label = col,
  normals = (col / 64, row / 64, 1 / 2) (exact in float16), normal_valid on another pattern,
  rgb = (5 col, 7 row, 128): linear ramps, so bilinear resampling gives back the continuous
  source coordinate of each output pixel.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lix.data as lixdata
from lix.data import AugmentConfig, ShardDataset
from pipeline.shards import Sample, write_manifest, write_shard

H, W, N = 32, 48, 6
CX, CY, F_PX = 20.0, 13.0, 50.0


def coded_sample(k: int) -> Sample:
    y, x = np.mgrid[:H, :W]
    depth = (1 + y * W + x).astype(np.float32)
    depth[(3 * x + 5 * y + k) % 7 == 0] = 0.0  # invalid depth: depth_valid carries a pattern too
    normals = np.stack([x / 64, y / 64, np.full_like(x, 0.5, dtype=float)], -1).astype(np.float32)
    rgb = np.stack([5 * x, 7 * y, np.full_like(x, 128)], -1).astype(np.uint8)
    K = np.array([[F_PX, 0, CX], [0, F_PX, CY], [0, 0, 1]])
    return Sample(f"s{k}", rgb, x.astype(np.uint8), depth, normals, (2 * x + y + k) % 5 != 0, K)


@pytest.fixture(scope="module")
def coded_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("coded_shards")
    samples = [coded_sample(k) for k in range(N)]
    entries = [write_shard(d / "train-00000.h5", samples[:4], "synthetic", "train", "none"),
               write_shard(d / "train-00001.h5", samples[4:], "synthetic", "train", "lzf")]
    write_manifest(d, "synthetic", ["a", "b"], (H, W), {"train": entries})
    return d


def _src_index(n_out: int, n_in: int, origin: int, crop: int) -> np.ndarray:
    """Stored pixel each output pixel should come from under the pixel-centre convention (output
    pixel j of the rescaled image has its centre at (j + 0.5) * n_in / n_out in stored pixel
    units, so it lies in stored pixel floor of that), -1 in the padding."""
    j = np.arange(origin, origin + crop)
    return np.where(j < n_out, ((2 * j + 1) * n_in) // (2 * n_out), -1)


def _decode(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) maps of the stored pixel each output pixel holds, from every discrete modality
    (they must agree); -1 where a modality says padding."""
    label = s["label"].numpy().astype(int)
    depth = s["depth"][0].numpy().astype(np.float64)
    normals = s["normals"].numpy().astype(np.float64)
    valid = s["depth_valid"].numpy()
    pad = label == 255
    col = np.where(pad, -1, label)
    n_col = np.rint(np.abs(normals[0]) * 64).astype(int)  # |x|: a flip negates it
    n_row = np.rint(normals[1] * 64).astype(int)
    assert np.array_equal(np.where(pad, 0, n_col), np.where(pad, 0, col)), "normals vs label"
    assert np.all(normals[:, pad] == 0) and not s["normal_valid"].numpy()[pad].any() and not valid[pad].any()
    d_row, d_col = np.divmod(np.rint(depth).astype(int) - 1, W)
    assert np.array_equal(d_col[valid], col[valid]) and np.array_equal(d_row[valid], n_row[valid]), "depth"
    row = np.where(pad, -1, n_row)
    return row, col


def _match(decoded: np.ndarray, n_out: int, n_in: int, crop: int, flip: bool = False) -> int | None:
    """The crop origin that explains a decoded row/col map, None if none does."""
    for origin in range(max(n_out, crop) - crop + 1):
        want = _src_index(n_out, n_in, origin, crop)
        if np.array_equal(decoded, want[::-1] if flip else want):
            return origin
    return None


@pytest.mark.parametrize("scale, crop, path", [
    (1.25, (36, 56), "crop"),  # rescaled 40x60: random crop offsets
    (0.75, (36, 56), "pad"),  # rescaled 24x36: padded at the bottom and right
    (0.75, (20, 56), "crop rows, pad cols"),
])
def test_rescale_crop_flip_keep_every_modality_aligned(coded_shards, scale, crop, path):
    ds = ShardDataset(coded_shards, "train",
                      augment=AugmentConfig(scale=(scale, scale), crop=crop, flip=0.5, photometric=0.0), seed=1)
    nh, nw = round(H * scale), round(W * scale)
    ch, cw = crop
    origins, flips = set(), set()
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s["rgb"].shape == (3, ch, cw) and s["label"].shape == crop
            row, col = _decode(s)
            # Rows: one stored row per output row, the same across columns (padding aside).
            r = np.array([row[y][row[y] >= 0][0] if (row[y] >= 0).any() else -1 for y in range(ch)])
            c = np.array([col[:, x][col[:, x] >= 0][0] if (col[:, x] >= 0).any() else -1 for x in range(cw)])
            assert np.array_equal(row, np.where((r[:, None] >= 0) & (c[None] >= 0), r[:, None], -1))
            y0 = _match(r, nh, H, ch)
            flip = _match(c, nw, W, cw) is None
            x0 = _match(c, nw, W, cw, flip)
            assert y0 is not None and x0 is not None, f"item {i}: maps not on the pixel-centre grid: {r}, {c}"
            origins.add((y0, x0))
            flips.add(flip)
            # RGB (bilinear) at the same place: its ramps give the continuous stored coordinate
            # of each output pixel, (j + origin + 0.5) * n_in / n_out - 0.5 (clamped to the image).
            u = (np.arange(x0, x0 + cw) + 0.5) * W / nw - 0.5
            v = (np.arange(y0, y0 + ch) + 0.5) * H / nh - 0.5
            u = u[::-1] if flip else u
            rgb = s["rgb"].numpy().astype(np.float64)
            inside = (r >= 0)[:, None] & (c >= 0)[None]
            got_u, got_v = rgb[0] / 5, rgb[1] / 7
            want_u = np.broadcast_to(np.clip(u, 0, W - 1)[None], inside.shape)
            want_v = np.broadcast_to(np.clip(v, 0, H - 1)[:, None], inside.shape)
            np.testing.assert_allclose(got_u[inside], want_u[inside], atol=0.5 / 5 + 1e-6)
            np.testing.assert_allclose(got_v[inside], want_v[inside], atol=0.5 / 7 + 1e-6)
            # ... and the nearest rule picks the stored pixel whose centre is nearest to it.
            assert np.all(np.abs(c[c >= 0] - np.clip(u, 0, W - 1)[c >= 0]) <= 0.5 + 1e-9)
            assert np.all(rgb[:, ~inside] == 0)
            # K: u' = (u + 0.5) * s - 0.5 - x0 (then W - 1 - u' when flipped).
            cx = (CX + 0.5) * nw / W - 0.5 - x0
            cy = (CY + 0.5) * nh / H - 0.5 - y0
            K = s["K"].numpy().astype(np.float64)
            assert K[0, 0] == pytest.approx(F_PX * nw / W) and K[1, 1] == pytest.approx(F_PX * nh / H)
            assert K[0, 2] == pytest.approx(cw - 1 - cx if flip else cx, abs=1e-4)
            assert K[1, 2] == pytest.approx(cy, abs=1e-4)
            # The principal point sits where the stored principal point went.
            j = int(np.rint(K[0, 2]))
            if 0 <= j < cw and c[j] >= 0:
                assert abs(c[j] - CX) <= 1
            # Normals: x negated exactly when the image is flipped.
            n0 = s["normals"][0].numpy()[inside]
            assert np.all(n0 <= 0) if flip else np.all(n0 >= 0)
            assert ds.geometry(i) == lixdata.Geometry((nh, nw), (y0, x0), crop, flip)
    assert flips == {False, True}
    if path == "crop":
        assert len(origins) > 3 and any(y0 and x0 for y0, x0 in origins)  # the crop really moves
    if "pad" in path:
        assert all(x0 == 0 for _, x0 in origins)
        assert (W * scale) < cw


def test_items_keep_stored_dtypes_and_to_device_converts(coded_shards):
    import h5py

    ds = ShardDataset(coded_shards, "train")
    s = ds[5]  # second shard, item 1 (lzf)
    want = {"rgb": torch.uint8, "label": torch.uint8, "depth": torch.float32, "depth_valid": torch.bool,
            "normals": torch.float16, "normal_valid": torch.bool, "K": torch.float32}
    assert {k: s[k].dtype for k in want} == want
    with h5py.File(coded_shards / "train-00001.h5", "r") as f:
        rgb, label, normals = f["rgb"][1], f["label"][1], f["normals"][1]
    b = lixdata.to_device(torch.utils.data.default_collate([s, ds[4]]), "cpu")
    assert b["rgb"].dtype == torch.float32 and b["label"].dtype == torch.int64 and b["normals"].dtype == torch.float32
    np.testing.assert_array_equal(b["rgb"][0].numpy(), rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(b["label"][0].numpy(), label.astype(np.int64))
    np.testing.assert_array_equal(b["normals"][0].numpy(), normals.transpose(2, 0, 1).astype(np.float32))
    assert b["id"] == ["s5", "s4"]
    # Augmented RGB is rounded back to uint8: without a resample it is the stored RGB exactly.
    same = ShardDataset(coded_shards, "train", augment=AugmentConfig(scale=(1.0, 1.0), flip=0.0, photometric=0.0))
    a = same[5]
    assert a["rgb"].dtype == torch.uint8 and torch.equal(a["rgb"], s["rgb"])
    assert torch.equal(a["normals"], s["normals"]) and a["label"].dtype == torch.uint8


def _items(ds, n):
    return [ds[i] for i in range(n)]


def _assert_same(batches, items):
    flat = [{k: v[j] for k, v in b.items()} for b in batches for j in range(len(b["id"]))]
    assert len(flat) == len(items)
    for x, y in zip(flat, items):
        assert x["id"] == y["id"]
        for k in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K"):
            assert torch.equal(x[k], y[k]), k


AUG = AugmentConfig(crop=(30, 44))


def test_dataset_pickles_after_reading_and_spawn_workers_agree(coded_shards):
    ds = ShardDataset(coded_shards, "train", augment=AUG, seed=7)
    ds.set_epoch(2)
    want = _items(ds, len(ds))  # opens h5py handles in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.epoch == 2
    _assert_same([torch.utils.data.default_collate(_items(copy, len(copy)))], want)
    loader = DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="spawn")
    _assert_same(list(loader), want)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(coded_shards, context):
    ds = ShardDataset(coded_shards, "train", augment=AUG, seed=5)
    ref = ShardDataset(coded_shards, "train", augment=AUG, seed=5)  # the main process's view
    loader = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True, multiprocessing_context=context)
    got = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got[epoch] = list(loader)
        ref.set_epoch(epoch)
        _assert_same(got[epoch], _items(ref, len(ref)))
    assert not torch.equal(got[0][0]["rgb"], got[1][0]["rgb"])
    assert not torch.equal(got[0][0]["K"], got[1][0]["K"])
