"""Every class of every label space is rendered, often enough to be in both splits of the
default run, and its pixel share is reported.

Presence, statistically: each frame's scene depends only on (seed, frame index), so whether a
class shows in a frame is an independent Bernoulli draw with some rate p, whichever frames a
split picks. From k of N frames of a smaller set (the default resolution and scene statistics,
another seed) the one-sided 99 % Clopper-Pearson bound gives p >= p_lo, so the chance that the
class is absent from all n_val frames of the default val split is at most (1 - p_lo)^n_val
(n_val = 50 for KITTI, 240 for nuImages, 100 (scene, frame) layouts for vKITTI2: its weather
variations of one layout share their objects and are grouped into one split). Example: 23 of
96 KITTI frames -> p_lo = 0.146 -> (1 - 0.146)^50 = 3.7e-4. The test asks for at most 1e-3
per class and split, and at most 1 % summed over all classes and both splits (union bound).
"Present" means at least one pixel (what a per-class IoU over the split sees); that the new
classes are not specks when present is checked separately.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
MIN_PIXELS = 1
CONFIDENCE = 0.99
MAX_ABSENT = 1e-3  # per class and split
MAX_ABSENT_TOTAL = 1e-2  # summed over classes and splits
N_FRAMES = {"kitti": 96, "nuimages": 64, "vkitti2": 48}
TEST_SEED = 404  # not a default seed: the rates are the scenes', not one seed's


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound of a binomial rate: the p with
    P(X >= k | p) = alpha (0 when k = 0)."""
    if k == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_sf(k, n, mid) < alpha else (lo, mid)
    return (lo + hi) / 2


def test_clopper_pearson_bound_matches_the_beta_quantile():
    # Golden values: the Beta(alpha; k, n - k + 1) quantile (scipy.stats.beta.ppf), and for
    # k = n the closed form alpha ** (1 / n).
    assert clopper_pearson_lower(5, 10, 0.05) == pytest.approx(0.2224411, abs=1e-6)
    assert clopper_pearson_lower(23, 96, 0.01) == pytest.approx(0.1457717, abs=1e-6)
    assert clopper_pearson_lower(10, 10, 0.01) == pytest.approx(0.01**0.1, abs=1e-9)
    assert clopper_pearson_lower(0, 10, 0.01) == 0.0


def _default_run(dataset: str):
    from lix.config import load_params
    from pipeline.splits import split_counts

    p = load_params(REPO / "params.yaml")
    syn, split = p.synthetic[dataset], p.splits[dataset]
    n_train, n_val = split_counts(split.n_images, split.ratio)
    units = 1
    if dataset == "vkitti2" and split.group_by == "frame":  # variations of one layout go together
        units = len(syn.variations)
    return syn, n_train // units, n_val // units


@pytest.fixture(scope="module")
def presence(tmp_path_factory):
    """dataset -> (class names, (N, C) pixel counts per frame) from a generated set read back
    through its reader."""
    out = {}
    for dataset, n in N_FRAMES.items():
        syn, _, _ = _default_run(dataset)
        root = tmp_path_factory.mktemp("present") / dataset
        # vKITTI2: one variation, so every sample is one layout (an independent draw).
        generate(dataset, root, n_images=n, width=syn.width, height=syn.height, seed=TEST_SEED, workers=2,
                 progress=False, variations=("clone",))
        r = create_reader(dataset, root)
        counts = np.stack([np.bincount(r.label(i).ravel(), minlength=256)[: len(r.class_names)] for i in r.ids()])
        out[dataset] = (r.class_names, counts)
    return out


@pytest.mark.parametrize("dataset", sorted(N_FRAMES))
def test_every_class_occurs_in_both_splits_of_the_default_run(presence, dataset):
    names, counts = presence[dataset]
    _, n_train, n_val = _default_run(dataset)
    n = len(counts)
    rows, total = [], 0.0
    for c, name in enumerate(names):
        k = int((counts[:, c] >= MIN_PIXELS).sum())
        p_lo = clopper_pearson_lower(k, n, 1 - CONFIDENCE)
        absent = {split: (1 - p_lo) ** m for split, m in (("train", n_train), ("val", n_val))}
        total += sum(absent.values())
        rows.append((name, k, p_lo, absent["val"]))
    table = "\n".join(f"{name:18s} {k:3d}/{n} frames  p >= {p_lo:.3f}  P(absent from val) <= {a:.1e}"
                      for name, k, p_lo, a in rows)
    print(f"\n{dataset} ({n_val} val units):\n{table}")
    assert all(a <= MAX_ABSENT for *_, a in rows), table
    assert total <= MAX_ABSENT_TOTAL, table


NEW_CLASSES = {"kitti": ("person", "rider", "bus", "train", "motorcycle", "bicycle"),
               "nuimages": ("bus", "pedestrian", "cycle", "barrier", "traffic_cone", "other_object")}


@pytest.mark.parametrize("dataset", sorted(NEW_CLASSES))
def test_new_classes_are_objects_not_specks(presence, dataset):
    """Where they show, people, riders, two-wheelers, buses, trams, barriers, cones and clutter
    cover a median of at least 15 pixels (at the default 320x96 / 256x144)."""
    names, counts = presence[dataset]
    for name in NEW_CLASSES[dataset]:
        c = counts[:, names.index(name)]
        assert np.median(c[c > 0]) >= 15, (name, np.median(c[c > 0]))


def test_rare_classes_stay_rare(presence):
    """People, riders, two-wheelers and clutter are a few per mille of the pixels, buses and
    trams about a percent: present, not inflated."""
    for dataset, rare, cap in (("kitti", ("person", "rider", "motorcycle", "bicycle"), 0.01),
                               ("kitti", ("bus", "train"), 0.03),
                               ("nuimages", ("pedestrian", "cycle", "barrier", "traffic_cone", "other_object"), 0.01),
                               ("nuimages", ("bus",), 0.03)):
        names, counts = presence[dataset]
        share = counts.sum(0) / counts.sum()
        for name in rare:
            assert 0 < share[names.index(name)] <= cap, (dataset, name, share[names.index(name)])


def test_shards_metrics_report_the_pixel_share_of_every_class(synth_root, tmp_path):
    from prep_utils import prepare_kitti

    from pipeline.shards import iter_samples, verify_shards
    from pipeline.sources.kitti import CLASS_NAMES

    root, d = synth_root / "kitti", tmp_path
    prepare_kitti(root, d, preview_path=d / "preview.png", metrics_path=d / "metrics.json")
    metrics = json.loads((d / "metrics.json").read_text())
    for split in ("train", "val"):
        share = metrics["class_pixel_share"][split]
        assert sorted(share) == sorted(CLASS_NAMES)  # every class by name
        labels = np.concatenate([s.label.ravel() for p in verify_shards(d / "shards", split)
                                 for s in iter_samples(p)])
        for tid, name in enumerate(CLASS_NAMES):
            assert share[name] == pytest.approx((labels == tid).mean(), abs=1e-12)
        assert metrics["ignore_pixel_share"][split] == pytest.approx((labels == 255).mean(), abs=1e-12)
        assert sum(share.values()) + metrics["ignore_pixel_share"][split] == pytest.approx(1.0)
    assert 0.0 in metrics["class_pixel_share"]["val"].values()  # absent classes are listed as 0


def test_previews_colour_each_label_space_as_its_dataset_does():
    from nuscenes.utils.color_map import get_colormap

    from pipeline.preview import class_palette
    from pipeline.sources import kitti, nuimages, vkitti2

    pal = class_palette(kitti.CLASS_NAMES)
    cityscapes = {"person": (220, 20, 60), "rider": (255, 0, 0), "bus": (0, 60, 100), "train": (0, 80, 100),
                  "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32), "road": (128, 64, 128)}
    for name, colour in cityscapes.items():
        assert tuple(pal[kitti.CLASS_NAMES.index(name)]) == colour
    assert len({tuple(c) for c in pal[: len(kitti.CLASS_NAMES)]}) == len(kitti.CLASS_NAMES)
    devkit = get_colormap()
    pal = class_palette(list(nuimages.CLASS_NAMES))  # as read back from a shard manifest (a list)
    for name, category in (("pedestrian", "human.pedestrian.adult"), ("cycle", "vehicle.bicycle"),
                           ("bus", "vehicle.bus.rigid"), ("barrier", "movable_object.barrier"),
                           ("traffic_cone", "movable_object.trafficcone"), ("other_object", "movable_object.debris")):
        assert tuple(pal[nuimages.CLASS_NAMES.index(name)]) == tuple(devkit[category])
    assert len({tuple(c) for c in pal[: len(nuimages.CLASS_NAMES)]}) == len(nuimages.CLASS_NAMES)
    assert tuple(class_palette(vkitti2.CLASS_NAMES)[vkitti2.CLASS_NAMES.index("Car")]) == (255, 127, 80)
    assert tuple(class_palette(("a", "b"))[255]) == (0, 0, 0)  # unknown label space: generic hues
