"""Geometry matters in the synthetic data: classes that share colour distributions are
separated far better by depth/normal features than by colour. That holds for the street's
surfaces and structures and for its people: a pedestrian's clothes are the paint of a pole,
a rider and a pedestrian dress alike.

A k-nearest-neighbour classifier per pixel is trained on each feature set for pairs of
look-alike classes: colour (RGB) versus geometry (the 3-D point from the written depth and
intrinsics, plus the normal from its finite differences). Training and test pixels come
from different images, so a classifier cannot memorise one scene's particular colours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate


def _features(reader, sample_id):
    f = reader.frame(sample_id)
    z, K = f.depth, f.K
    v, u = np.mgrid[0 : z.shape[0], 0 : z.shape[1]]
    P = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    n = np.cross(np.gradient(P, axis=1), np.gradient(P, axis=0))
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
    n *= -np.sign(n[..., 2:3] + 1e-9)
    ok = z > 0
    return f.rgb[ok] / 255.0, np.concatenate([P[ok], n[ok]], 1), f.label[ok]


def _balanced(labels, part, a, b, rng, n_per_class):
    ia, ib = np.flatnonzero(part & (labels == a)), np.flatnonzero(part & (labels == b))
    n = min(len(ia), len(ib), n_per_class)
    assert n > 300, f"too few pixels of classes {a}/{b}"
    return np.concatenate([rng.choice(ia, n, replace=False), rng.choice(ib, n, replace=False)])


def _knn_accuracy(X, labels, image, a, b, rng, n_per_class=2000, k=7):
    """Balanced accuracy of a k-NN on classes a vs b, trained on even images, tested on odd."""
    train = _balanced(labels, image % 2 == 0, a, b, rng, n_per_class)
    test = _balanced(labels, image % 2 == 1, a, b, rng, n_per_class)
    x = torch.tensor(X, dtype=torch.float32)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
    ytr, yte = torch.tensor(labels[train] == a), torch.tensor(labels[test] == a)
    nn = torch.cdist(xte, xtr).topk(k, largest=False).indices
    pred = ytr[nn].float().mean(1) > 0.5
    return (pred == yte).float().mean().item()


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo") / "kitti"
    # 64 frames: riders cover several hundred pixels per half (the k-NN needs > 300 per class),
    # and the accuracies vary little from one set of streets to another.
    generate("kitti", root, n_images=64, width=320, height=96, seed=11, workers=2, progress=False)
    r = create_reader("kitti", root)
    rgb, geo, lab = zip(*(_features(r, i) for i in r.ids()))
    image = np.concatenate([np.full(len(x), i) for i, x in enumerate(lab)])
    return np.concatenate(rgb), np.concatenate(geo), np.concatenate(lab), image, r.class_names


# (class a, class b, least geometry accuracy, least margin over colour). Measured with
# seed 11 (64 frames; seeds 12 and 13 in brackets): colour 0.44-0.59 on every pair (chance: no
# colour shortcut); geometry 0.94 (0.95, 0.95) road/terrain, 0.94 (0.94, 0.97) building/fence,
# 0.94 (0.90, 0.90) wall/fence, 0.89 (0.90, 0.90) road/sidewalk (a 15 cm curb), 0.90 (0.91,
# 0.93) sidewalk/terrain, 0.62 (0.79, 0.73) building/wall (both vertical, along the road);
# people: 0.73 (0.68, 0.77) person/pole (thin uprights both; the pole is taller, at the kerb,
# colour 0.59: only skin gives a pedestrian away), 0.82 (0.83, 0.84) rider/pole.
@pytest.mark.parametrize("a,b,min_geo,min_gap", [
    ("road", "terrain", 0.85, 0.3), ("building", "fence", 0.85, 0.3), ("wall", "fence", 0.85, 0.3),
    ("road", "sidewalk", 0.7, 0.15), ("sidewalk", "terrain", 0.7, 0.15), ("building", "wall", 0.6, 0.08),
    ("person", "pole", 0.65, 0.12), ("rider", "pole", 0.75, 0.2),
])
def test_geometry_separates_look_alike_classes(pixels, a, b, min_geo, min_gap):
    rgb, geo, lab, image, names = pixels
    ia, ib = names.index(a), names.index(b)
    acc_rgb = _knn_accuracy(rgb, lab, image, ia, ib, np.random.default_rng(0))
    acc_geo = _knn_accuracy(geo, lab, image, ia, ib, np.random.default_rng(0))
    print(f"{a}/{b}: colour {acc_rgb:.3f}  geometry {acc_geo:.3f}")
    assert acc_rgb <= 0.65, "colour alone should not separate look-alike classes"
    assert acc_geo >= min_geo
    assert acc_geo - acc_rgb >= min_gap


def test_riders_and_pedestrians_dress_alike(pixels):
    """A rider and a pedestrian draw their clothes from one distribution: colour gives no
    shortcut between them. Per-pixel geometry separates them only weakly (0.60, 0.52, 0.62 for
    seeds 11-13, colour 0.50-0.52): both are human figures of the same size, and what makes a
    rider - the two-wheeler beneath, the lane - is context a per-pixel k-NN on 3-D points does
    not see (a segmentation network, looking at neighbourhoods, does)."""
    rgb, geo, lab, image, names = pixels
    ia, ib = names.index("rider"), names.index("person")
    acc_rgb = _knn_accuracy(rgb, lab, image, ia, ib, np.random.default_rng(0))
    acc_geo = _knn_accuracy(geo, lab, image, ia, ib, np.random.default_rng(0))
    print(f"rider/person: colour {acc_rgb:.3f}  geometry {acc_geo:.3f}")
    assert acc_rgb <= 0.6, "riders and pedestrians should not be told apart by colour"
    assert acc_geo >= acc_rgb - 0.02
