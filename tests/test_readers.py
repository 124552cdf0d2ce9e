"""Each reader round-trips the synthetic data: labels, depth units, intrinsics, stereo."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sources import create_reader
from pipeline.sources.kitti import ID_TO_TRAIN
from pipeline.sources.synthetic.common import split_evenly
from pipeline.sources.synthetic.kitti import BASELINE as KITTI_B, CITYSCAPES_FROM_INTERNAL, KittiJob, render_frame
from pipeline.sources.synthetic.nuimages import NuJob
from pipeline.sources.synthetic.nuimages import render_frame as nu_render
from pipeline.sources.synthetic.vkitti2 import BASELINE as VK_B, SCENES, VKittiJob, render_views
from pipeline.sources.vkitti2 import CLASS_NAMES as VK_NAMES
from tests.conftest import SMALL


def test_kitti_roundtrip(synth_root):
    r = create_reader("kitti", synth_root / "kitti")
    kw = SMALL["kitti"]
    assert r.ids() == [f"{i:06d}" for i in range(kw["n_images"])]
    for i in (0, 5):
        f = r.frame(f"{i:06d}")
        K, left, right = render_frame(KittiJob("", i, kw["width"], kw["height"], kw["seed"]))
        np.testing.assert_array_equal(f.rgb, left.rgb)  # PNG is lossless
        np.testing.assert_array_equal(f.right_rgb, right.rgb)
        np.testing.assert_array_equal(f.label, ID_TO_TRAIN[CITYSCAPES_FROM_INTERNAL[left.cls]])
        np.testing.assert_allclose(f.K, K, atol=1e-4)
        assert f.baseline == pytest.approx(KITTI_B, abs=1e-5)
        # Dense side-car depth in metres (cm quantisation), sky invalid.
        finite = np.isfinite(left.depth) & (left.depth < 600)
        np.testing.assert_allclose(f.depth[finite], left.depth[finite], atol=0.006)
        assert (f.depth[~np.isfinite(left.depth)] == 0).all()
        # Sparse disparity: fx * B / Z where valid, like a projected LiDAR (scan lines, not dense).
        valid = f.disparity > 0
        assert 0.05 < valid.mean() < 0.6
        np.testing.assert_allclose(f.disparity[valid], K[0, 0] * KITTI_B / left.depth[valid], atol=1 / 256 + 1e-3)
        assert (f.label[valid] != 10).all()  # never on sky (train id 10)


def test_vkitti2_roundtrip(synth_root):
    kw = SMALL["vkitti2"]
    r = create_reader("vkitti2", synth_root / "vkitti2")
    ids = r.ids()
    assert len(ids) == kw["n_images"]
    n_seq = len(SCENES) * len(kw["variations"])
    assert sorted({i.rsplit("/", 1)[0] for i in ids}) == sorted(
        f"{s}/{v}" for s in SCENES for v in kw["variations"])[: n_seq]
    sid = f"{SCENES[1]}/fog/00000"
    f = r.frame(sid)
    views = render_views(VKittiJob("", 1, "fog", 0, kw["width"], kw["height"], kw["seed"]))
    (cam0, v0), (cam1, _) = views
    assert np.abs(f.rgb.astype(int) - v0.rgb).mean() < 5.0  # JPEG, 4:2:0 chroma
    assert set(np.unique(f.label)) <= set(range(len(VK_NAMES)))
    sky = v0.cls == 0
    assert (f.label[sky] == VK_NAMES.index("Sky")).all()
    assert (f.depth[sky] == 0).all()  # 65535 cm (sky) decodes as invalid
    np.testing.assert_allclose(f.depth[~sky], np.minimum(v0.depth[~sky], 655.34), atol=0.006)
    np.testing.assert_allclose(f.K, cam0.K, atol=1e-3)
    assert f.baseline == pytest.approx(VK_B, abs=1e-5)
    assert split_evenly(10, 3) == [4, 3, 3]


def test_vkitti2_variation_filter(synth_root):
    r = create_reader("vkitti2", synth_root / "vkitti2", variations=("fog",))
    assert r.ids() and all("/fog/" in i for i in r.ids())


def test_nuimages_loads_in_devkit_and_segmentation_matches(synth_root):
    from nuimages import NuImages
    from nuimages.utils.utils import name_to_index_mapping

    kw = SMALL["nuimages"]
    nuim = NuImages(version="v1.0-train", dataroot=str(synth_root / "nuimages"), lazy=False, verbose=False)
    assert len(nuim.category) == 25 and len(nuim.sample) == kw["n_images"]
    index = name_to_index_mapping(nuim.category)
    r = create_reader("nuimages", synth_root / "nuimages")
    for i, sample in enumerate(nuim.sample[:4]):
        sd_token = sample["key_camera_token"]
        semantic, instance = nuim.get_segmentation(sd_token)
        K, cam, out = nu_render(NuJob("", i, kw["width"], kw["height"], kw["seed"]))
        expected = np.zeros_like(semantic)
        expected[np.isin(out.cls, (1, 2))] = index["flat.driveable_surface"]
        expected[np.isin(out.cls, (14, 15))] = index["vehicle.car"]
        expected[out.cls == 16] = index["vehicle.truck"]
        np.testing.assert_array_equal(semantic, expected)
        assert instance.max() == len(np.unique(out.obj[out.obj > 0]))
        f = r.frame(sd_token)
        np.testing.assert_array_equal(f.label[np.isin(out.cls, (1, 2))], 1)
        np.testing.assert_allclose(f.K, K, atol=1e-6)
        assert f.camera_height == pytest.approx(-cam.position[1])
        assert np.abs(f.rgb.astype(int) - out.rgb).mean() < 5.0  # JPEG, 4:2:0 chroma
        finite = np.isfinite(out.depth) & (out.depth < 600)
        np.testing.assert_allclose(f.depth[finite], out.depth[finite], atol=0.006)


def test_nuimages_channel_filter(synth_root):
    assert create_reader("nuimages", synth_root / "nuimages", channels=("CAM_BACK",)).ids() == []
    assert len(create_reader("nuimages", synth_root / "nuimages", channels=("CAM_FRONT",)).ids()) == 8
