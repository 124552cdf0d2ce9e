"""Each reader round-trips the synthetic data: labels, depth units, intrinsics, stereo."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sources import create_reader
from pipeline.sources.kitti import CLASS_NAMES as KITTI_NAMES
from pipeline.sources.kitti import ID_TO_TRAIN
from pipeline.sources.nuimages import CLASS_NAMES as NU_NAMES
from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.common import split_evenly
from pipeline.sources.synthetic.kitti import BASELINE as KITTI_B
from pipeline.sources.synthetic.kitti import CITYSCAPES_FROM_INTERNAL, KittiJob, render_frame
from pipeline.sources.synthetic.nuimages import NuJob
from pipeline.sources.synthetic.nuimages import render_frame as nu_render
from pipeline.sources.synthetic.vkitti2 import BASELINE as VK_B
from pipeline.sources.synthetic.vkitti2 import SCENES, VKittiJob, render_views
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


# Golden encodings, from the datasets' specifications (not from the writers).
# Cityscapes label id and colour of each internal class the road-user and clutter code draws.
CITYSCAPES_GOLDEN = {
    C.PERSON: (24, (220, 20, 60)), C.RIDER: (25, (255, 0, 0)), C.BUS: (28, (0, 60, 100)),
    C.TRAM: (31, (0, 80, 100)), C.MOTORCYCLE: (32, (0, 0, 230)), C.BICYCLE: (33, (119, 11, 32)),
    C.RAIL: (7, (128, 64, 128)),  # tram rails in the road are road
    C.BARRIER: (5, (81, 0, 81)), C.TRAFFIC_CONE: (5, (81, 0, 81)), C.DEBRIS: (5, (81, 0, 81)),  # "dynamic"
    C.PUSHABLE: (5, (81, 0, 81)), C.BICYCLE_RACK: (4, (111, 74, 0)),  # "static"
}
# nuImages category of each object kind the renderer draws, and the attributes nuImages gives.
NU_CATEGORY_GOLDEN = {
    "car": "vehicle.car", "van": "vehicle.car", "truck": "vehicle.truck", "bus.rigid": "vehicle.bus.rigid",
    "bus.bendy": "vehicle.bus.bendy", "pedestrian.adult": "human.pedestrian.adult",
    "pedestrian.child": "human.pedestrian.child", "bicycle": "vehicle.bicycle", "motorcycle": "vehicle.motorcycle",
    "barrier": "movable_object.barrier", "trafficcone": "movable_object.trafficcone",
    "debris": "movable_object.debris", "pushable_pullable": "movable_object.pushable_pullable",
    "bicycle_rack": "static_object.bicycle_rack",
}
# nuScenes annotator instructions: vehicles with four or more wheels carry their activity,
# bicycles and motorcycles their rider status, humans theirs; movable/static objects none.
NU_ATTRIBUTE_GOLDEN = {
    **{(k, st): [f"vehicle.{st}"] for k in ("car", "van", "truck", "bus.rigid", "bus.bendy")
       for st in ("moving", "parked", "stopped")},
    **{(k, st): [f"cycle.{st}"] for k in ("bicycle", "motorcycle") for st in ("with_rider", "without_rider")},
    **{(k, st): [f"pedestrian.{st}"] for k in ("pedestrian.adult", "pedestrian.child")
       for st in ("moving", "standing", "sitting_lying_down")},
    **{(k, ""): [] for k in ("barrier", "trafficcone", "debris", "pushable_pullable", "bicycle_rack")},
}


def test_kitti_new_classes_in_cityscapes_ids_and_colours(synth_root):
    """semantic/ holds the Cityscapes label id and semantic_rgb/ its colour for people, riders,
    two-wheelers, buses, trams and clutter; the reader maps them to the 19 train ids (void
    ids to 255)."""
    from pipeline.imageio import read_raw, read_rgb

    kw = SMALL["kitti"]
    root = synth_root / "kitti" / "training"
    reader = create_reader("kitti", synth_root / "kitti")
    train_name = {24: "person", 25: "rider", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle", 7: "road"}
    seen = set()
    for i in range(kw["n_images"]):
        _, left, _ = render_frame(KittiJob("", i, kw["width"], kw["height"], kw["seed"]))
        ids = read_raw(root / "semantic" / f"{i:06d}_10.png", np.uint8)
        rgb = read_rgb(root / "semantic_rgb" / f"{i:06d}_10.png")
        label = reader.label(f"{i:06d}")
        for c, (cid, colour) in CITYSCAPES_GOLDEN.items():
            m = left.cls == c
            if m.any():
                seen.add(c)
                assert (ids[m] == cid).all() and (rgb[m] == colour).all(), C(c).name
                tid = KITTI_NAMES.index(train_name[cid]) if cid in train_name else 255  # void ids ignored
                assert (label[m] == tid).all(), C(c).name
    for c, (cid, _) in CITYSCAPES_GOLDEN.items():
        assert CITYSCAPES_FROM_INTERNAL[c] == cid, C(c).name
    assert {C.PERSON, C.RIDER, C.BICYCLE} <= seen  # the small fixture shows people and riders


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
    attribute_name = {a["token"]: a["name"] for a in nuim.attribute}
    category_name = {c["token"]: c["name"] for c in nuim.category}
    categories = set()
    for i, sample in enumerate(nuim.sample):
        sd_token = sample["key_camera_token"]
        semantic, instance = nuim.get_segmentation(sd_token)
        K, cam, out = nu_render(NuJob("", i, kw["width"], kw["height"], kw["seed"]))
        expected = np.zeros_like(semantic)
        expected[np.isin(out.cls, (C.ROAD, C.LANE_MARKING, C.RAIL))] = index["flat.driveable_surface"]
        for obj in np.unique(out.obj[out.obj > 0]):  # a rider's pixels belong to the cycle's object
            expected[out.obj == obj] = index[NU_CATEGORY_GOLDEN[out.objects[int(obj)].kind]]
        np.testing.assert_array_equal(semantic, expected)
        assert instance.max() == len(np.unique(out.obj[out.obj > 0]))
        anns = [a for a in nuim.object_ann if a["sample_data_token"] == sd_token]
        by_token = {a["token"]: a for a in anns}
        for obj in np.unique(out.obj[out.obj > 0]):
            from pipeline.sources.synthetic.nuimages import token

            a = by_token[token("object_ann", kw["seed"], i, int(obj))]
            info = out.objects[int(obj)]
            categories.add(category_name[a["category_token"]])
            names = [attribute_name[t] for t in a["attribute_tokens"]]
            assert names == NU_ATTRIBUTE_GOLDEN[(info.kind, info.state)]
            ys, xs = np.nonzero(out.obj == obj)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        f = r.frame(sd_token)
        np.testing.assert_array_equal(f.label[np.isin(out.cls, (C.ROAD, C.LANE_MARKING))], 1)
        kinds = {o: v.kind for o, v in out.objects.items()}
        walkers = np.isin(out.obj, [o for o, k in kinds.items() if k.startswith("pedestrian.")])
        cycles = np.isin(out.obj, [o for o, k in kinds.items() if k in ("bicycle", "motorcycle")])
        assert (f.label[walkers] == NU_NAMES.index("pedestrian")).all()
        assert (f.label[cycles] == NU_NAMES.index("cycle")).all()  # riders included
        np.testing.assert_allclose(f.K, K, atol=1e-6)
        assert f.camera_height == pytest.approx(-cam.position[1])
        assert np.abs(f.rgb.astype(int) - out.rgb).mean() < 5.0  # JPEG, 4:2:0 chroma
        finite = np.isfinite(out.depth) & (out.depth < 600)
        np.testing.assert_allclose(f.depth[finite], out.depth[finite], atol=0.006)
    # The 8 small frames show most kinds (all of them: tests/test_classes_present.py).
    assert {"human.pedestrian.adult", "vehicle.car", "vehicle.bicycle", "vehicle.motorcycle",
            "movable_object.barrier", "movable_object.trafficcone"} <= categories


def test_nuimages_channel_filter(synth_root):
    assert create_reader("nuimages", synth_root / "nuimages", channels=("CAM_BACK",)).ids() == []
    assert len(create_reader("nuimages", synth_root / "nuimages", channels=("CAM_FRONT",)).ids()) == 8
