"""Depth backends: Depth Anything batching and alignment,
SGBM accuracy, 'auto' selection, and the resumable runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lix.config import DepthConfig, ReaderConfig
from pipeline.depth import align, create_backend
from pipeline.depth.depth_anything import DepthAnythingBackend, preprocess, target_size
from pipeline.depth.metrics import depth_errors, summarise
from pipeline.depth.run import finalize, generate_depth
from pipeline.depth_codec import read_depth
from pipeline.depth.select import resolve
from pipeline.errors import DataError, LixError
from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate

def _tiny_depth_anything(metric=False):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    bb = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                      image_size=518, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                      reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=32, patch_size=14,
                              neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                              depth_estimation_type="metric" if metric else "relative", max_depth=80)
    return DepthAnythingForDepthEstimation(cfg).eval()


def test_target_size_and_preprocess():
    assert target_size(900, 1600) == (518, 924)  # nuImages: height decides, sides multiples of 14
    assert target_size(375, 1242) == (518, 1722)  # KITTI: the scale closer to 1 (upsampling) wins
    x = torch.full((2, 50, 80, 3), 255, dtype=torch.uint8)
    y = preprocess(x, size=140)
    assert y.shape[2] % 14 == 0 and y.shape[3] % 14 == 0
    torch.testing.assert_close(y[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_depth_anything_batching_and_odd_sizes():
    b = DepthAnythingBackend(network=_tiny_depth_anything(), device="cpu", batch_size=3, input_size=70)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (45, 77, 3), dtype=np.uint8) for _ in range(4)] + \
           [rng.integers(0, 255, (31, 100, 3), dtype=np.uint8)]
    batched = b.raw(imgs)
    singles = [b.raw([im])[0] for im in imgs]
    for im, p, s in zip(imgs, batched, singles):
        assert p.shape == im.shape[:2]
        np.testing.assert_allclose(p, s, atol=1e-4, rtol=1e-4)


def test_ground_alignment_recovers_known_scale(synth_root):
    r = create_reader("nuimages", synth_root / "nuimages")
    for sid in r.ids()[:3]:
        f = r.frame(sid)
        valid = f.depth > 0
        pred = np.where(valid, 3.7 / np.maximum(f.depth, 1e-3) + 0.2, 0.2)  # relative inverse depth
        s, t = align.fit_to_ground(pred, f.label == 1, f.K, f.camera_up, f.camera_height)
        assert s == pytest.approx(3.7, rel=0.03) and t == pytest.approx(0.2, abs=0.01)
        depth = align.to_metric(pred, s, t)
        near = valid & (f.depth < 60)
        assert np.median(np.abs(depth[near] - f.depth[near]) / f.depth[near]) < 0.03


def test_sparse_alignment_recovers_known_scale(synth_root):
    f = create_reader("kitti", synth_root / "kitti").frame("000001")
    lidar = np.where(f.disparity > 0, f.K[0, 0] * f.baseline / np.maximum(f.disparity, 1e-6), 0)
    pred = np.where(f.depth > 0, 12.0 / np.maximum(f.depth, 1e-3) - 0.5, -0.5)
    s, t = align.fit_to_sparse(pred, lidar)
    assert s == pytest.approx(12.0, rel=0.02) and t == pytest.approx(-0.5, abs=0.02)


def test_depth_anything_metric_variant_and_alignment_path(synth_root):
    r = create_reader("nuimages", synth_root / "nuimages")
    frames = [r.frame(i) for i in r.ids()[:2]]
    rel = DepthAnythingBackend(network=_tiny_depth_anything(), device="cpu", input_size=70, alignment="ground",
                               ground_classes=(1,))
    for d in rel.predict(frames):
        assert d.dtype == np.float32 and d.shape == frames[0].rgb.shape[:2] and (d >= 0).all()
    met = DepthAnythingBackend(network=_tiny_depth_anything(metric=True), device="cpu", input_size=70)
    assert met.metric and met.predict(frames[:1])[0].shape == frames[0].rgb.shape[:2]


def test_sgbm_recovers_synthetic_kitti_depth(tmp_path):
    root = tmp_path / "kitti"
    generate("kitti", root, n_images=4, width=1242, height=375, seed=11, workers=2, progress=False)
    r = create_reader("kitti", root)
    b = create_backend("sgbm", max_disparity=192)
    parts = [depth_errors(b.predict([f])[0], f.depth) for f in map(r.frame, r.ids())]
    m = summarise(parts)
    print("sgbm at 1242x375:", m)
    assert m["abs_rel"] < 0.10


def test_auto_selection_and_missing_weights(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    kitti = create_reader("kitti", synth_root / "kitti")
    name, _, reason = resolve("kitti", DepthConfig(), kitti, "000000")
    assert name == "sgbm" and "no CREStereo weights" in reason
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    assert resolve("kitti", DepthConfig(crestereo_weights=str(w)), kitti, "000000")[0] == "crestereo"
    nu = create_reader("nuimages", synth_root / "nuimages")
    name, _, reason = resolve("nuimages", DepthConfig(), nu, nu.ids()[0])
    assert name == "ground_truth" and "not found" in reason
    model_dir = tmp_path / "da"
    _tiny_depth_anything().save_pretrained(model_dir)
    name, opts, _ = resolve("nuimages", DepthConfig(model_path=str(model_dir)), nu, nu.ids()[0])
    assert name == "depth_anything" and opts["model_path"] == str(model_dir)
    create_backend(name, **{**opts, "device": "cpu"})  # loads from the local directory


def test_missing_weights_error_for_nuimages_without_sidecar(dataset_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = dataset_copy("nuimages")
    import shutil

    shutil.rmtree(root / "lix_depth_sidecar")
    nu = create_reader("nuimages", root)
    with pytest.raises(LixError, match="found no usable backend.*model_path"):
        resolve("nuimages", DepthConfig(), nu, nu.ids()[0])


def test_runner_resumes_shards_and_scores(synth_root, tmp_path):
    out = tmp_path / "depth"
    cfg = DepthConfig(backend="sgbm", max_disparity=32)
    calls = []

    class Counting:
        batch_size = 2

        def __init__(self):
            self.inner = create_backend("sgbm", max_disparity=32)

        def predict(self, frames):
            calls.extend(f.id for f in frames)
            return self.inner.predict(frames)

    s0 = generate_depth("kitti", synth_root / "kitti", out, cfg, part=0, num_parts=2, progress=False,
                        backend=Counting())
    with pytest.raises(DataError, match="have no depth yet"):
        finalize("kitti", synth_root / "kitti", out, cfg, progress=False)
    s1 = generate_depth("kitti", synth_root / "kitti", out, cfg, part=1, num_parts=2, progress=False,
                        backend=Counting())
    assert s0["computed"] == s1["computed"] == 4
    again = generate_depth("kitti", synth_root / "kitti", out, cfg, progress=False, backend=Counting())
    assert again["computed"] == 0 and len(calls) == 8
    m = finalize("kitti", synth_root / "kitti", out, cfg, metrics_path=tmp_path / "m.json", progress=False)
    assert m["backend"] == {"sgbm": 8} and m["vs_sparse_lidar"]["pixels"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["frames"] == 8
    d = read_depth(out, "000003")
    assert d.shape == (48, 160) and d.max() > 0
    # A changed parameter recomputes everything.
    changed = generate_depth("kitti", synth_root / "kitti", out, DepthConfig(backend="sgbm", max_disparity=48),
                             progress=False)
    assert changed["computed"] == 8


def test_ground_truth_backend_needs_depth(synth_root):
    f = create_reader("kitti", synth_root / "kitti").frame("000000")
    f.depth = None
    with pytest.raises(DataError, match="carries no depth"):
        create_backend("ground_truth").predict([f])
    assert ReaderConfig().version == "v1.0-train"
