"""Splits are seeded, disjoint, at the paper's ratios, and byte-identical on rerun."""

from __future__ import annotations

import pytest

from lix.config import SplitConfig
from pipeline.errors import ConfigError
from pipeline.prepare import build_split
from pipeline.splits import make_split, read_manifest, split_counts


@pytest.mark.parametrize("n,ratio,expected", [(700, (5, 2), (500, 200)), (200, (3, 1), (150, 50)),
                                              (800, (7, 3), (560, 240))])
def test_paper_ratios(n, ratio, expected):
    assert split_counts(n, ratio) == expected
    ids = [f"id{i:05d}" for i in range(n + 37)]
    s = make_split(ids, n, ratio, seed=0)
    assert (len(s["train"]), len(s["val"])) == expected
    assert not set(s["train"]) & set(s["val"])


def test_deterministic_and_seeded():
    ids = [f"{i:06d}" for i in range(100)]
    a, b = make_split(ids, 40, (3, 1), 7), make_split(list(reversed(ids)), 40, (3, 1), 7)
    assert a == b
    assert make_split(ids, 40, (3, 1), 8) != a


def test_too_few_images():
    with pytest.raises(ConfigError, match="asks for 10 images but the dataset has 5"):
        make_split(["a", "b", "c", "d", "e"], 10, (1, 1), 0, key="splits.kitti")


def test_manifest_rerun_is_byte_identical(synth_root, tmp_path):
    cfg = SplitConfig(n_images=8, ratio=(3, 1), seed=0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    build_split("kitti", synth_root / "kitti", a, cfg, None, progress=False)
    build_split("kitti", synth_root / "kitti", b, cfg, None, progress=False)
    assert a.read_bytes() == b.read_bytes()
    m = read_manifest(a)
    assert m["counts"] == {"train": 6, "val": 2} and m["dataset"] == "kitti"
    assert len(m["class_names"]) == 19


def test_grouped_split_keeps_groups_whole_and_counts_exact():
    # 350 groups of 2 (a frame in two weather variations), as the default vKITTI2: 700 at 5:2.
    ids = [f"Scene{s:02d}/{v}/{f:05d}" for s in range(5) for v in ("clone", "fog") for f in range(70)]
    groups = {i: f"{i.split('/')[0]}/{i.split('/')[2]}" for i in ids}
    s = make_split(ids, 700, (5, 2), seed=0, groups=groups)
    assert (len(s["train"]), len(s["val"])) == (500, 200)
    assert not {groups[i] for i in s["train"]} & {groups[i] for i in s["val"]}
    # Without groups the same draw puts variations of one frame on both sides (the leak).
    plain = make_split(ids, 700, (5, 2), seed=0)
    assert {groups[i] for i in plain["train"]} & {groups[i] for i in plain["val"]}


def test_grouped_split_uneven_groups_closest_boundary():
    # Groups of sizes 1..6 (21 samples): counts land within one group of the ratio.
    ids, groups = [], {}
    for g in range(1, 7):
        for k in range(g):
            ids.append(f"g{g}_{k}")
            groups[f"g{g}_{k}"] = f"g{g}"
    s = make_split(ids, 21, (3, 1), seed=1, groups=groups)
    assert len(s["train"]) + len(s["val"]) == 21
    assert abs(len(s["train"]) - 16) < 6 and s["val"]
    assert not {groups[i] for i in s["train"]} & {groups[i] for i in s["val"]}
    # Fewer samples asked than exist: whole groups, as close to the count as groups allow.
    part = make_split(ids, 10, (1, 1), seed=2, groups=groups)
    assert abs(len(part["train"]) + len(part["val"]) - 10) <= 3


def test_vkitti2_manifest_has_no_val_layout_in_train(synth_root, tmp_path):
    from pipeline.sources import create_reader

    reader = create_reader("vkitti2", synth_root / "vkitti2")
    cfg = SplitConfig(n_images=10, ratio=(3, 2), seed=0, group_by="frame")
    path = tmp_path / "v.json"
    build_split("vkitti2", synth_root / "vkitti2", path, cfg, None, progress=False)
    m = read_manifest(path)
    frame = {i: reader.group(i, "frame") for i in m["train"] + m["val"]}
    assert frame[m["train"][0]].count("/") == 1  # SceneXX/00000: the variation is not part of it
    assert not {frame[i] for i in m["train"]} & {frame[i] for i in m["val"]}
    assert m["group_by"] == "frame" and m["counts"] == {"train": 6, "val": 4}
    assert m["groups"] == {"train": 3, "val": 2}


def test_nuimages_scene_groups_are_logs(synth_root):
    from pipeline.sources import create_reader

    reader = create_reader("nuimages", synth_root / "nuimages")
    logs = {reader.group(i, "scene") for i in reader.ids()}
    assert logs <= {log["token"] for log in reader.nuim.log}
