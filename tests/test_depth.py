"""Depth backends: Depth Anything batching and alignment,
SGBM accuracy, 'auto' selection, the validity rule, devices, and the resumable runner."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lix.config import DepthConfig, ReaderConfig
from pipeline.depth import align, create_backend
from pipeline.depth.base import disparity_to_depth
from pipeline.depth.crestereo import CREStereoBackend
from pipeline.depth.crestereo_net import CREStereo
from pipeline.depth.depth_anything import DepthAnythingBackend, preprocess, target_size
from pipeline.depth.metrics import depth_errors, summarise
from pipeline.depth.run import finalize, generate_depth
from pipeline.depth.select import resolve
from pipeline.depth_codec import read_depth
from pipeline.device import resolve_device, use_device
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
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y[0, :, 0, 0], (1 - mean) / std)


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


def test_runner_resumes_parts_and_scores(synth_root, tmp_path):
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


def test_runner_recomputes_changed_inputs_and_code(dataset_copy, tmp_path, monkeypatch):
    """Under DVC the depth outputs persist, so the runner itself must notice what is stale: a
    frame whose input changed, and every frame when the depth code changed."""
    import shutil

    from pipeline.depth import run
    from pipeline.imageio import read_rgb, write_image

    root = dataset_copy("kitti")
    out, cfg = tmp_path / "depth", DepthConfig(backend="sgbm", max_disparity=32)
    assert generate_depth("kitti", root, out, cfg, progress=False)["computed"] == 8
    right = root / "training/image_3/000002_10.png"
    write_image(right, np.roll(read_rgb(right), 2, axis=1))  # the scene moved: new disparities
    again = generate_depth("kitti", root, out, cfg, progress=False)
    assert again["computed"] == 1 and again["skipped"] == 7
    monkeypatch.setattr(run, "code_digest", lambda: "another-version")
    assert generate_depth("kitti", root, out, cfg, progress=False)["computed"] == 8
    # A frame that left the split loses its map at finalize (persisted outputs hold no strays).
    shutil.copy(out / "000001.png", out / "999999.png")
    run.finalize("kitti", root, out, cfg, progress=False)
    assert not (out / "999999.png").exists() and (out / "000001.png").exists()


def test_ground_truth_backend_needs_depth(synth_root):
    f = create_reader("kitti", synth_root / "kitti").frame("000000")
    f.depth = None
    with pytest.raises(DataError, match="carries no depth"):
        create_backend("ground_truth").predict([f])
    assert ReaderConfig().version == "v1.0-train"


# --- Ground truth never leaks into estimated depth ---------------------------------------------


def _relative_from(depth, s=3.7, t=0.2):
    """A relative inverse depth pred = s / Z + t made from metric depth (t where Z is 0: sky)."""
    return np.where(depth > 0, s / np.maximum(depth, 1e-3) + t, t).astype(np.float32)


def test_depth_anything_aligns_to_measurements_not_ground_truth(synth_root):
    b = DepthAnythingBackend(network=_tiny_depth_anything(), device="cpu", input_size=70, alignment="auto",
                             ground_classes=(1,))
    # nuImages: the frame carries the dense side-car (ground truth) but nothing measured, so
    # 'auto' must use the camera height, and the side-car must not change the output.
    nu = create_reader("nuimages", synth_root / "nuimages")
    f = nu.frame(nu.ids()[0])
    assert f.depth is not None and f.disparity is None and f.camera_height is not None
    b.raw = lambda images: [_relative_from(f.depth) for _ in images]
    out = b.predict([f])[0]
    near = (f.depth > 0) & (f.depth < 60)
    assert np.median(np.abs(out[near] - f.depth[near]) / f.depth[near]) < 0.03  # the ground plane's scale
    for other in (f.depth * 2.0 + 5.0, np.zeros_like(f.depth), None):  # a side-car that disagrees, or none
        np.testing.assert_array_equal(b.predict([dataclasses.replace(f, depth=other)])[0], out)
    ground = DepthAnythingBackend(network=b.net, device="cpu", input_size=70, alignment="ground",
                                  ground_classes=(1,))
    ground.raw = b.raw
    np.testing.assert_array_equal(ground.predict([f])[0], out)
    # 'sparse' asked for explicitly on a frame without measured sparse depth is an error, not the side-car.
    sparse = DepthAnythingBackend(network=b.net, device="cpu", input_size=70, alignment="sparse")
    sparse.raw = b.raw
    with pytest.raises(DataError, match="needs measured sparse depth"):
        sparse.predict([f])
    # KITTI: LiDAR disparity is measured, so 'auto' fits to it; the side-car still does not count.
    k = create_reader("kitti", synth_root / "kitti").frame("000001")
    b.raw = lambda images: [_relative_from(k.depth) for _ in images]
    out = b.predict([k])[0]
    near = (k.depth > 0) & (k.depth < 60)
    assert np.median(np.abs(out[near] - k.depth[near]) / k.depth[near]) < 0.03
    np.testing.assert_array_equal(b.predict([dataclasses.replace(k, depth=k.depth * 2.0 + 5.0)])[0], out)


# --- 'auto' resolution: no ground-truth fallback, no network unless hub ------------------------


@pytest.fixture
def no_hf(monkeypatch):
    """An empty Hugging Face cache and a hub that records every question asked of it."""
    import huggingface_hub

    asked = []

    def model_info(repo_id, *a, **k):
        asked.append(repo_id)
        return object()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    return asked


def test_auto_never_falls_back_to_ground_truth(synth_root, no_hf):
    nu = create_reader("nuimages", synth_root / "nuimages")
    assert nu.ground_truth_depth(nu.ids()[0]) is not None  # the side-car is there, and still not taken
    with pytest.raises(LixError) as e:
        resolve("nuimages", DepthConfig(), nu, nu.ids()[0])
    msg = str(e.value)
    assert "depth.nuimages.model_path" in msg and "backend: ground_truth" in msg
    assert "not found in the Hugging Face cache" in msg
    # vKITTI2's rendered depth is auto's first choice (the paper's), not a fallback.
    v = create_reader("vkitti2", synth_root / "vkitti2")
    name, _, reason = resolve("vkitti2", DepthConfig(), v, v.ids()[0])
    assert name == "ground_truth" and reason == "auto: the source carries depth"
    # Explicitly chosen, ground truth is still allowed.
    assert resolve("nuimages", DepthConfig(backend="ground_truth"), nu, nu.ids()[0])[0] == "ground_truth"


def test_auto_asks_the_hub_only_when_allowed(synth_root, no_hf):
    nu = create_reader("nuimages", synth_root / "nuimages")
    with pytest.raises(LixError, match="hub: false"):
        resolve("nuimages", DepthConfig(), nu, nu.ids()[0])
    assert no_hf == []
    name, opts, reason = resolve("nuimages", DepthConfig(hub=True), nu, nu.ids()[0])
    assert no_hf == ["depth-anything/Depth-Anything-V2-Small-hf"]
    assert name == "depth_anything" and opts["local_only"] is False and "on the hub" in reason


# --- One validity rule: 0 where nothing was measured or estimated, never clipped ----------------


def test_disparity_to_depth_marks_out_of_range_invalid():
    disp = np.array([[0.0, -1.0, 1.0, 0.5, 2.0, np.nan]], np.float32)
    # fx * B = 100 * 0.5 = 50: depths 50, 100, 25 m; 100 m lies beyond max_depth = 60.
    np.testing.assert_array_equal(disparity_to_depth(disp, 100.0, 0.5, max_depth=60.0),
                                  np.array([[0, 0, 50, 0, 25, 0]], np.float32))
    assert disparity_to_depth(disp, 100.0, 0.5, max_depth=100.0)[0, 3] == 100.0  # the bound itself is valid


def test_depth_anything_out_of_range_and_sky_are_invalid(synth_root):
    nu = create_reader("nuimages", synth_root / "nuimages")
    f = nu.frame(nu.ids()[0])
    net = _tiny_depth_anything()
    far = DepthAnythingBackend(network=net, device="cpu", input_size=70, alignment="ground", ground_classes=(1,))
    raw = far.raw([f.rgb])[0].astype(np.float64)
    s, t = align.fit_to_ground(raw, f.label == 1, f.K, f.camera_up, f.camera_height)
    inv = (raw - t) / s
    z = np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), 0.0)
    # a threshold between two distinct depths near the median, so that no pixel lies on it and the
    # float32 backend and this float64 reference cannot round a pixel to different sides
    zs = np.unique(z[z > 0])
    i = len(zs) // 2
    while zs[i + 1] - zs[i] < 1e-3 * zs[i]:  # a gap far wider than float32's rounding
        i += 1
    max_depth = float((zs[i] + zs[i + 1]) / 2)
    assert (inv <= 0).any() and (z > max_depth).any()  # both kinds of invalid pixel occur
    expected = np.where((z > 0) & (z <= max_depth), z, 0.0)
    b = DepthAnythingBackend(network=net, device="cpu", input_size=70, alignment="ground", ground_classes=(1,),
                             max_depth=max_depth)
    np.testing.assert_allclose(b.predict([f])[0], expected, rtol=1e-5, atol=0)
    # A relative prediction of the sky (inverse depth at the offset t) is 0, not max_depth.
    b.raw = lambda images: [_relative_from(f.depth) for _ in images]
    out = b.predict([f])[0]
    assert (out[f.depth == 0] == 0).all() and (f.depth == 0).any()
    # Metric variant: metres straight from the network, 0 beyond max_depth.
    met = DepthAnythingBackend(network=_tiny_depth_anything(metric=True), device="cpu", input_size=70)
    m = met.raw([f.rgb])[0]
    met.max_depth = float(np.median(m))
    np.testing.assert_array_equal(met.predict([f])[0], np.where((m > 0) & (m <= met.max_depth), m, 0))


def _random_crestereo():
    shapes = json.loads((Path(__file__).parent / "fixtures/reference/crestereo_state_dict.json").read_text())
    g = torch.Generator().manual_seed(0)
    net = CREStereo()
    net.load_state_dict({k: torch.randn(v, generator=g) * 0.02 for k, v in shapes.items()}, strict=True)
    return net.eval()


def test_crestereo_out_of_range_is_invalid(synth_root):
    f = create_reader("kitti", synth_root / "kitti").frame("000000")
    b = CREStereoBackend(network=_random_crestereo(), device="cpu", iters=1)
    d = b.disparity(f.rgb[None], f.right_rgb[None])[0].astype(np.float64)
    z = np.where(d > 0, f.K[0, 0] * f.baseline / np.where(d > 0, d, 1.0), 0.0)
    # a threshold between two distinct depths, so float32 vs float64 rounding cannot move a pixel
    # across it (the median itself is a pixel's depth: flaky)
    u = np.unique(z[z > 0])
    k = len(u) // 2
    b.max_depth = float((u[k] + u[k + 1]) / 2)
    assert (d <= 0).any() and (z > b.max_depth).any()
    # rtol 1e-3: predict runs the network again, and two CPU forward passes of it differ by up to
    # ~1e-4 relative (oneDNN's reductions depend on the thread schedule); the mask is what is tested
    np.testing.assert_allclose(b.predict([f])[0], np.where((z > 0) & (z <= b.max_depth), z, 0.0), rtol=1e-3, atol=0)


def test_ground_truth_keeps_sky_invalid_and_drops_out_of_range(dataset_copy):
    root = dataset_copy("vkitti2")
    r = create_reader("vkitti2", root)
    sid = r.ids()[0]
    raw = cv2.imread(str(r.depth_path(sid)), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    raw[:3] = 65535  # vKITTI2's sky
    raw[3, :10] = 30000  # 300 m: rendered, but beyond max_depth
    cv2.imwrite(str(r.depth_path(sid)), raw)
    out = create_backend("ground_truth", max_depth=250.0).predict([r.frame(sid)])[0]
    expected = np.where((raw == 65535) | (raw > 25000), 0.0, raw / 100.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)
    assert out.dtype == np.float32


# --- Devices under torchrun -------------------------------------------------------------------


def test_resolve_device_uses_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "2")  # torchrun's; read from the environment by default
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda", env={"LOCAL_RANK": "3"}) == torch.device("cuda", 3)
    assert resolve_device("auto", env={"LOCAL_RANK": "1"}) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", env={"LOCAL_RANK": "2"}) == torch.device("cuda", 0)  # explicit index stays
    assert resolve_device("cuda", env={}) == torch.device("cuda")
    assert resolve_device("cpu", env={"LOCAL_RANK": "2"}) == torch.device("cpu")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert use_device("cuda") == torch.device("cuda", 2) and current == [torch.device("cuda", 2)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", env={"LOCAL_RANK": "1"}) == torch.device("cpu")
