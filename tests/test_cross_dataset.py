"""Cross-dataset evaluation: the common label spaces (every class of every dataset, the
semantics, symmetry), golden confusion matrices and scores computed here with explicit loops
over pixels, the refusals, and evaluate_cross / lix cross-evaluate end to end on tiny shards (a
kitti student on vkitti2 and on nuimages val splits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lix.cross_dataset as cd
from lix.config import TrainConfig
from lix.cross_dataset import (
    COMMON,
    cross_confusion,
    cross_metrics,
    evaluate_cross,
    label_map,
    mapping_table,
    markdown_table,
)
from pipeline.errors import ConfigError, DataError

# The class lists as the brief and the readers give them (train-id order), spelled out here.
CLASSES = {
    "vkitti2": ("Terrain", "Sky", "Tree", "Vegetation", "Building", "Road", "GuardRail", "TrafficSign",
                "TrafficLight", "Pole", "Misc", "Truck", "Car", "Van"),
    "kitti": ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
              "bicycle"),
    "nuimages": ("background", "driveable_surface", "car", "truck", "bus", "pedestrian", "cycle", "barrier",
                 "traffic_cone", "other_object"),
}
# The expected shared spaces, written independently of the module: common class -> (classes of
# the first dataset of the pair, classes of the second). Everything not listed has no counterpart.
EXPECTED = {
    ("kitti", "nuimages"): {
        "road": (("road",), ("driveable_surface",)),
        "car": (("car",), ("car",)),
        "truck": (("truck",), ("truck",)),
        "bus": (("bus",), ("bus",)),
        "pedestrian": (("person",), ("pedestrian",)),
        "cycle": (("rider", "motorcycle", "bicycle"), ("cycle",)),
    },
    ("kitti", "vkitti2"): {
        "road": (("road", "sidewalk"), ("Road",)),
        "building": (("building",), ("Building",)),
        "pole": (("pole",), ("Pole",)),
        "traffic light": (("traffic light",), ("TrafficLight",)),
        "traffic sign": (("traffic sign",), ("TrafficSign",)),
        "vegetation": (("vegetation",), ("Tree", "Vegetation")),
        "terrain": (("terrain",), ("Terrain",)),
        "sky": (("sky",), ("Sky",)),
        "car": (("car",), ("Car", "Van")),
        "truck": (("truck",), ("Truck",)),
    },
    ("nuimages", "vkitti2"): {
        "road": (("driveable_surface",), ("Road",)),
        "car": (("car",), ("Car", "Van")),
        "truck": (("truck",), ("Truck",)),
    },
}
ORDERED = [(a, b) for a, b in EXPECTED] + [(b, a) for a, b in EXPECTED]


def expected_common(source: str, target: str) -> tuple[list[str], dict[str, str | None], dict[str, str | None]]:
    """(common names, source class -> common, target class -> common) from EXPECTED."""
    key = (source, target) if (source, target) in EXPECTED else (target, source)
    table = EXPECTED[key]
    per = {key[0]: {}, key[1]: {}}
    for common, (xs, ys) in table.items():
        per[key[0]].update({c: common for c in xs})
        per[key[1]].update({c: common for c in ys})
    full = {ds: {c: per[ds].get(c) for c in CLASSES[ds]} for ds in key}
    return list(table), full[source], full[target]


def golden_matrix(pred, gt, source: str, target: str) -> np.ndarray:
    """The cross matrix by a Python loop over the pixels, with EXPECTED's names."""
    names, m_src, m_tgt = expected_common(source, target)
    k = len(names)
    out = np.zeros((k, k + 1), dtype=np.int64)
    for p, g in zip(np.asarray(pred).reshape(-1).tolist(), np.asarray(gt).reshape(-1).tolist()):
        if g == 255:
            continue
        gc = m_tgt[CLASSES[target][g]]
        if gc is None:
            continue
        pc = m_src[CLASSES[source][p]]
        out[names.index(gc), k if pc is None else names.index(pc)] += 1
    return out


def golden_scores(matrix: np.ndarray) -> dict:
    """IoU / F1 / means by loops over a (K, K + 1) matrix: TP on the diagonal, FP down the
    column of the class (ground-truth rows only), FN along the row (OTHER included)."""
    k = matrix.shape[0]
    total = int(matrix.sum())
    iou, f1, support = [], [], []
    for c in range(k):
        tp = int(matrix[c, c])
        fp = sum(int(matrix[t, c]) for t in range(k) if t != c)
        fn = sum(int(matrix[c, p]) for p in range(k + 1) if p != c)
        support.append(tp + fn)
        if tp + fp + fn == 0:
            iou.append(math.nan)
            f1.append(math.nan)
        else:
            iou.append(tp / (tp + fp + fn))
            f1.append(2 * tp / (2 * tp + fp + fn))
    defined = [c for c in range(k) if not math.isnan(iou[c])]

    def mean(xs):
        return sum(xs) / len(xs) if xs else math.nan

    return {
        "per_class_iou": iou, "per_class_f1": f1,
        "miou": mean([iou[c] for c in defined]), "mfsc": mean([f1[c] for c in defined]),
        "fwiou": sum(support[c] / total * iou[c] for c in defined) if total else math.nan,
        "fwfsc": sum(support[c] / total * f1[c] for c in defined) if total else math.nan,
        "pixel_acc": sum(int(matrix[c, c]) for c in range(k)) / total if total else math.nan,
    }


def close(a, b) -> bool:
    return (a is None or math.isnan(a)) and (b is None or math.isnan(b)) or (
        a is not None and b is not None and abs(a - b) < 1e-12)


# --------------------------------------------------------------------------- the table
def test_class_lists_are_the_readers():
    from pipeline.sources import kitti, nuimages, vkitti2

    readers = {"vkitti2": vkitti2.CLASS_NAMES, "kitti": kitti.CLASS_NAMES, "nuimages": nuimages.CLASS_NAMES}
    for ds, names in CLASSES.items():
        assert tuple(readers[ds]) == names == cd.CLASS_NAMES[ds]


def test_every_class_of_every_dataset_is_in_every_table():
    assert set(COMMON) == set(EXPECTED)  # each unordered pair once, sorted
    for (a, b), space in COMMON.items():
        assert set(space.maps) == {a, b}
        assert len(set(space.names)) == len(space.names)
        for ds in (a, b):
            assert list(space.maps[ds]) == list(CLASSES[ds])  # all of them, in train-id order, no typo
            assert set(space.maps[ds].values()) - {None} == set(space.names)  # each common class reached


def test_the_tables_are_the_expected_ones():
    for pair in EXPECTED:
        names, m_a, m_b = expected_common(*pair)
        space = COMMON[pair]
        assert list(space.names) == names
        assert dict(space.maps[pair[0]]) == m_a and dict(space.maps[pair[1]]) == m_b


def test_semantics_spelled_out_in_the_brief():
    kv, kn, nv = COMMON["kitti", "vkitti2"], COMMON["kitti", "nuimages"], COMMON["nuimages", "vkitti2"]
    assert kv.maps["vkitti2"]["Van"] == kv.maps["kitti"]["car"] == "car"
    assert nv.maps["vkitti2"]["Van"] == nv.maps["nuimages"]["car"]
    assert kv.maps["vkitti2"]["GuardRail"] is None and kv.maps["kitti"]["fence"] is None
    assert kn.maps["nuimages"]["background"] is None and nv.maps["nuimages"]["background"] is None
    assert {kn.maps["kitti"][c] for c in ("bicycle", "motorcycle", "rider")} == {kn.maps["nuimages"]["cycle"]}
    assert kn.maps["kitti"]["person"] == kn.maps["nuimages"]["pedestrian"]
    assert kv.maps["vkitti2"]["Tree"] == kv.maps["vkitti2"]["Vegetation"] == kv.maps["kitti"]["vegetation"]


def test_the_docstring_tables_are_the_tables():
    for a, b in COMMON:
        assert markdown_table(a, b) in cd.__doc__
        rows = mapping_table(a, b)
        assert [r[0] for r in rows[:-1]] == list(COMMON[a, b].names)


@pytest.mark.parametrize("source,target", ORDERED)
def test_label_map_luts(source, target):
    src, tgt, names = label_map(source, target)
    exp_names, m_src, m_tgt = expected_common(source, target)
    k = len(exp_names)
    assert list(names) == exp_names
    assert src.dtype == tgt.dtype == np.int64 and src.shape == (len(CLASSES[source]),) and tgt.shape == (256,)
    for i, c in enumerate(CLASSES[source]):
        assert src[i] == (k if m_src[c] is None else exp_names.index(m_src[c]))
    for i in range(256):
        c = CLASSES[target][i] if i < len(CLASSES[target]) else None
        assert tgt[i] == (255 if c is None or m_tgt[c] is None else exp_names.index(m_tgt[c]))
    # the other direction is the same space: what a maps to as source it maps to as target
    src_back, tgt_back, names_back = label_map(target, source)
    assert names_back == names
    assert np.array_equal(np.where(tgt_back[: len(src)] == 255, k, tgt_back[: len(src)]), src)
    assert np.array_equal(np.where(tgt[: len(src_back)] == 255, k, tgt[: len(src_back)]), src_back)


def test_unmapped_pairs_are_refused_naming_both(monkeypatch):
    with pytest.raises(ConfigError, match="kitti -> kitti.*same dataset"):
        label_map("kitti", "kitti")
    monkeypatch.delitem(COMMON, ("kitti", "vkitti2"))
    with pytest.raises(ConfigError, match="vkitti2 -> kitti: no common label space between vkitti2 and kitti"):
        label_map("vkitti2", "kitti")


# --------------------------------------------------------------------------- counting
def test_hand_made_kitti_on_vkitti2():
    # kitti predictions over a vKITTI2 ground truth; common: road building pole light sign veg terrain sky car truck
    gt = np.array([[5, 5, 13, 12, 6, 255],       # Road Road Van Car GuardRail ignore
                   [2, 3, 1, 11, 10, 0]])        # Tree Vegetation Sky Truck Misc Terrain
    pred = np.array([[1, 0, 13, 14, 4, 11],      # sidewalk road car truck fence person
                     [8, 9, 10, 14, 13, 11]])    # vegetation terrain sky truck car person
    m = cross_confusion(pred, gt, "kitti", "vkitti2")
    want = np.zeros((10, 11), np.int64)
    want[0, 0] = 2          # Road <- sidewalk, road: both the common road
    want[8, 8] = 1          # Van <- car
    want[8, 9] = 1          # Car <- truck
    want[5, 5] = 1          # Tree <- vegetation
    want[5, 6] = 1          # Vegetation <- terrain
    want[7, 7] = 1          # Sky <- sky
    want[9, 9] = 1          # Truck <- truck
    want[6, 10] = 1         # Terrain <- person: OTHER
    # GuardRail, Misc and 255 are not counted whatever the prediction
    assert np.array_equal(m, want)
    s = cross_metrics(m, label_map("kitti", "vkitti2")[2])
    assert s["per_class_iou"]["road"] == 1.0 and s["per_class_iou"]["terrain"] == 0.0
    assert s["per_class_iou"]["car"] == pytest.approx(1 / 2)      # TP 1, FN 1 (a car called truck)
    assert s["per_class_iou"]["truck"] == pytest.approx(1 / 2)    # TP 1, FP 1
    assert s["per_class_iou"]["vegetation"] == pytest.approx(1 / 2)  # TP 1, FN 1
    assert math.isnan(s["per_class_iou"]["pole"])                  # neither in gt nor predicted
    assert s["pixel_acc"] == pytest.approx(6 / 9) and s["other_rate"] == pytest.approx(1 / 9)  # 9 counted
    assert s["predicted_other"]["terrain"] == 1 and s["n_pixels"] == 9 and s["n_classes_scored"] == 6


@pytest.mark.parametrize("source,target", ORDERED)
def test_cross_confusion_golden(source, target):
    rng = np.random.default_rng(ORDERED.index((source, target)))
    shape = (3, 6, 9)
    pred = rng.integers(0, len(CLASSES[source]), shape)
    gt = rng.integers(0, len(CLASSES[target]), shape)
    gt[rng.random(shape) < 0.15] = 255
    want = golden_matrix(pred, gt, source, target)
    assert want.sum() > 0
    got = cross_confusion(pred, gt, source, target)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    # torch tensors (uint8 labels as the shards store them) count the same
    got_t = cross_confusion(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.uint8)), source, target)
    assert np.array_equal(got_t, want)


@pytest.mark.parametrize("source,target", ORDERED)
def test_cross_metrics_golden(source, target):
    names = label_map(source, target)[2]
    k = len(names)
    rng = np.random.default_rng(7 + k)
    m = rng.integers(0, 20, (k, k + 1))
    m[0, :] = 0          # a class absent from the ground truth ...
    m[1:, 0] = 0         # ... and never predicted: undefined
    m[1, :] = 0
    m[2:, 1] = 0
    m[0, 1] = 0
    m[2, 1] = 3          # class 1 absent from gt but predicted: IoU 0, counts
    want = golden_scores(m)
    got = cross_metrics(m, names)
    assert math.isnan(got["per_class_iou"][names[0]]) and got["per_class_iou"][names[1]] == 0.0
    for key in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc"):
        assert close(got[key], want[key]), key
    for c, n in enumerate(names):
        assert close(got["per_class_iou"][n], want["per_class_iou"][c])
        assert close(got["per_class_f1"][n], want["per_class_f1"][c])
    assert got["n_classes_scored"] == k - 1 and got["n_pixels"] == int(m.sum())


def test_cross_metrics_hand_computed():
    # 2 common classes, columns a, b, OTHER
    m = [[4, 1, 3],      # a: TP 4, FN 1 + 3 (OTHER)
         [2, 6, 0]]      # b: TP 6, FN 2
    s = cross_metrics(m, ("a", "b"))
    assert s["per_class_iou"] == pytest.approx({"a": 4 / (4 + 2 + 4), "b": 6 / (6 + 1 + 2)})
    assert s["per_class_f1"] == pytest.approx({"a": 8 / (8 + 2 + 4), "b": 12 / (12 + 1 + 2)})
    assert s["miou"] == pytest.approx((4 / 10 + 6 / 9) / 2)
    assert s["fwiou"] == pytest.approx(8 / 16 * 4 / 10 + 8 / 16 * 6 / 9)
    assert s["pixel_acc"] == pytest.approx(10 / 16) and s["other_rate"] == pytest.approx(3 / 16)
    # OTHER is no class: predicting it is never a false positive of anything
    assert set(s["per_class_iou"]) == {"a", "b"}
    empty = cross_metrics(np.zeros((2, 3), np.int64), ("a", "b"))
    assert all(math.isnan(empty[k]) for k in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc", "other_rate"))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        cross_metrics(np.zeros((2, 2), np.int64), ("a", "b"))


def test_bad_ids_are_errors():
    pred = np.zeros((2, 2), np.int64)
    with pytest.raises(ValueError, match="shape"):
        cross_confusion(pred, np.zeros((2, 3), np.int64), "kitti", "nuimages")
    with pytest.raises(ValueError, match="ground-truth id 10"):
        cross_confusion(pred, np.full((2, 2), 10), "kitti", "nuimages")
    with pytest.raises(ValueError, match="predicted id"):
        cross_confusion(np.full((2, 2), 19), np.ones((2, 2), np.int64), "kitti", "nuimages")
    # out of range where nothing is counted (ignored, or no counterpart): not looked at
    assert cross_confusion(np.full((2, 2), 19), np.array([[255, 0], [255, 7]]), "kitti", "nuimages").sum() == 0
    with pytest.raises(TypeError):
        cross_confusion(pred.astype(np.float32), pred, "kitti", "nuimages")


# --------------------------------------------------------------------------- end to end
def _prepare(dataset: str, root: Path, d: Path, n_images: int) -> Path:
    """split -> ground-truth depth -> normals -> shards (as tests/prep_utils.py does for kitti)."""
    from lix.config import DepthConfig, NormalsConfig, ShardsConfig, SplitConfig
    from pipeline.depth.run import finalize, generate_depth
    from pipeline.prepare import build_shards, build_split, compute_normals

    build_split(dataset, root, d / "split.json", SplitConfig(n_images=n_images, ratio=(3, 1)), None, progress=False)
    depth = DepthConfig(backend="ground_truth")
    generate_depth(dataset, root, d / "depth", depth, split=d / "split.json", progress=False)
    finalize(dataset, root, d / "depth", depth, split=d / "split.json", progress=False)
    compute_normals(dataset, root, d / "split.json", d / "depth", d / "normals", NormalsConfig(), None,
                    progress=False)
    build_shards(dataset, root, d / "split.json", d / "depth", d / "normals", d / "shards",
                 ShardsConfig(samples_per_shard=4), None, progress=False)
    return d / "shards"


@pytest.fixture(scope="module")
def targets(synth_root, tmp_path_factory) -> dict[str, Path]:
    """vkitti2 (160x48) and nuimages (160x90: not a multiple of MFNet's 16) shards, 2 val each."""
    return {ds: _prepare(ds, synth_root / ds, tmp_path_factory.mktemp(f"cross_{ds}"), 8)
            for ds in ("vkitti2", "nuimages")}


@pytest.fixture(scope="module")
def student(train_shards, tmp_path_factory) -> Path:
    """An MFNet student trained one epoch on the kitti shards of conftest.py."""
    from lix.train import fit

    out = tmp_path_factory.mktemp("cross_student")
    cfg = TrainConfig(model="mfnet", epochs=1, batch_size=2, num_workers=0, device="cpu", lr=0.01, patience=0,
                      seed=3)
    fit(train_shards, out, cfg, dataset="kitti", role="student", progress=False)
    return out / "best.pt"


def independent_matrix(checkpoint: Path, shards: Path, target: str) -> tuple[np.ndarray, int]:
    """The student's predictions on the target's val split, counted by golden_matrix."""
    from torch.utils.data import DataLoader

    from lix.data import ShardDataset
    from lix.loaders import prepare_batch
    from lix.predict import load_student

    model, inputs, config = load_student(checkpoint, torch.device("cpu"))
    val = ShardDataset(shards, "val")
    k = len(expected_common("kitti", target)[0])
    m = np.zeros((k, k + 1), np.int64)
    with torch.no_grad():
        for batch in DataLoader(val, batch_size=config["train"]["batch_size"], shuffle=False):
            label = batch["label"].numpy()
            pred = model(*inputs(prepare_batch(batch, torch.device("cpu")))).argmax(1).numpy()
            assert pred.shape == label.shape
            m += golden_matrix(pred, label, "kitti", target)
    return m, len(val)


@pytest.mark.parametrize("target", ["vkitti2", "nuimages"])
def test_evaluate_cross_end_to_end(student, targets, target, tmp_path):
    r = evaluate_cross(student, target, targets[target], tmp_path / "out", device="cpu")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == r
    want, n_val = independent_matrix(student, targets[target], target)
    assert want.sum() > 0
    assert r["matrix"] == want.tolist()
    assert (r["source"], r["target"], r["val_samples"], r["checkpoint"]) == ("kitti", target, n_val, str(student))
    assert r["common_classes"] == expected_common("kitti", target)[0]
    assert r["columns"][-1] == cd.OTHER_LABEL and r["mapping"]["kitti"]["rider"] == COMMON[
        tuple(sorted(("kitti", target)))].maps["kitti"]["rider"]
    gold = golden_scores(want)
    for key in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc"):
        assert close(r[key], gold[key]), key
    for c, n in enumerate(r["common_classes"]):
        assert close(r["per_class_iou"][n], gold["per_class_iou"][c])


def test_evaluate_cross_refusals(student, targets, train_shards, tmp_path, monkeypatch):
    from lix.checkpoint import export_safetensors
    from lix.evaluate import load_run

    state, config = load_run(student)
    teacher = tmp_path / "teacher.safetensors"
    export_safetensors(state, teacher, config | {"role": "teacher", "x": "depth"})
    with pytest.raises(DataError, match="teacher") as e:
        evaluate_cross(teacher, "vkitti2", targets["vkitti2"], tmp_path / "o")
    assert str(teacher) in str(e.value)
    with pytest.raises(ConfigError, match="kitti -> kitti"):
        evaluate_cross(student, "kitti", train_shards, tmp_path / "o")
    with pytest.raises(DataError, match="holds nuimages shards, not vkitti2"):
        evaluate_cross(student, "vkitti2", targets["nuimages"], tmp_path / "o")
    with pytest.raises(ConfigError, match="run's own directory"):
        evaluate_cross(student, "vkitti2", targets["vkitti2"], student.parent)
    monkeypatch.delitem(COMMON, ("kitti", "vkitti2"))
    with pytest.raises(ConfigError, match="no common label space between kitti and vkitti2"):
        evaluate_cross(student, "vkitti2", targets["vkitti2"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_cross_evaluate(student, targets, tmp_path):
    import typer
    from typer.testing import CliRunner

    from lix.cli.cross import cross_app

    app = typer.Typer()
    app.add_typer(cross_app)  # as lix/cli.py mounts it
    runner = CliRunner()
    r = runner.invoke(app, ["cross-evaluate", "--checkpoint", str(student), "--dataset", "nuimages", "--shards",
                            str(targets["nuimages"]), "--out", str(tmp_path / "x"), "--device", "cpu",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "kitti -> nuimages" in r.output and "mIoU" in r.output
    assert json.loads((tmp_path / "x" / "metrics.json").read_text())["target"] == "nuimages"
    r = runner.invoke(app, ["cross-evaluate", "--checkpoint", str(student), "--dataset", "kitti", "--shards",
                            str(targets["nuimages"]), "--out", str(tmp_path / "y"), "--no-progress"])
    assert r.exit_code == 2 and "error:" in r.output and "same dataset" in r.output
