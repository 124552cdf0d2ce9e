"""Generalisation across datasets: an RGB-only student trained on dataset A, evaluated on the
val split of dataset B over the classes the two label spaces share.

    evaluate_cross("data/runs/kitti/mfnet/student/seed0/best.pt", "vkitti2", "data/shards/vkitti2", "out/")

The common label space
----------------------
For each unordered pair of datasets, :data:`COMMON` holds the tuple of common class names and,
per dataset, every class name -> its common class, or ``None`` when the other dataset has no
counterpart for it. With the source's predictions and the target's ground truth both mapped:

* a target pixel whose class has no counterpart (or is 255) is ignored: nothing the other
  dataset was taught can be right or wrong there;
* a prediction of a source class without counterpart lands in the ``OTHER`` column
  (``OTHER = len(common)``): "predicted a class the other dataset has no counterpart for". It is
  wrong (a false negative of the pixel's ground-truth class) but not a class of its own, so it
  has no IoU and no false positives.

Scores are those of :mod:`lix.metrics` (IoU, F1 = the paper's Fsc, the frequency-weighted
versions, pixel accuracy) over the ``K`` common classes of the ``(K, K + 1)`` matrix.

Sources of the semantics: the readers' docstrings (``pipeline/sources/``), ``pipeline/labels.py``, the
synthetic writers' ``*_FROM_INTERNAL`` / ``_CATEGORY_OF_INTERNAL`` / ``OBJECT_CATEGORY``
tables (``pipeline/sources/synthetic/``), the Cityscapes label definitions and the nuScenes /
nuImages annotator instructions. The judgement calls:

* vKITTI2 has no sidewalk class: its ``Road`` covers the sidewalk and the curb (the synthetic
  writer renders SIDEWALK and CURB as ``Road``), so with kitti the common ``road`` is Cityscapes'
  road + sidewalk. nuImages' ``driveable_surface`` excludes sidewalks, so with nuImages the
  common ``road`` is Cityscapes' road alone and vKITTI2's Road as a whole (its sidewalk pixels
  are the one known mismatch of that pair: a nuImages student calling them background is
  counted wrong, a vKITTI2 student calling nuImages sidewalks Road is not counted).
* vKITTI2 ``Tree`` and ``Vegetation`` are both Cityscapes ``vegetation`` (trees, hedges, all
  vertical vegetation); vKITTI2 ``Terrain`` is Cityscapes ``terrain``.
* vKITTI2 ``Van`` is a Cityscapes ``car`` (Cityscapes: "car, jeep, SUV, van") and a nuImages
  ``car`` (vehicle.car includes vans).
* vKITTI2 ``GuardRail`` is Cityscapes' void "guard rail" (label id 14, no train id), not
  ``fence``; vKITTI2 ``Misc`` is a catch-all: no counterpart for either.
* nuImages ``background`` is everything left unannotated (buildings, vegetation, sky,
  sidewalks, poles, signs, ...): a catch-all, not a class of the others, so it has no
  counterpart. Consequence: on nuImages targets a false alarm on background pixels is not
  counted; on the other targets a nuImages student's ``background`` is ``OTHER``.
* nuImages ``pedestrian`` is every ``human.*`` category = Cityscapes ``person``. A person on a
  bicycle or motorcycle is part of the cycle in nuImages (nuScenes: "if there is a rider,
  include the rider in the box"; people on vehicles are not pedestrians), so Cityscapes
  ``rider`` goes with ``bicycle`` and ``motorcycle`` to the common ``cycle``.
* nuImages ``truck`` (vehicle.truck, trailer, construction) = Cityscapes ``truck``; ``bus``
  (rigid and bendy) = ``bus``; ``driveable_surface`` = Cityscapes ``road``.
* nuImages ``barrier``, ``traffic_cone``, ``other_object`` (debris, pushables, bicycle racks,
  animals) are void in Cityscapes (static / dynamic) and absent from vKITTI2; Cityscapes
  ``train`` (trams) has no nuImages or vKITTI2 category.

The tables (``markdown_table(a, b)``; a class absent from a cell has no counterpart):

kitti <-> nuimages (6 common classes)

| common | kitti | nuimages |
|---|---|---|
| road | road | driveable_surface |
| car | car | car |
| truck | truck | truck |
| bus | bus | bus |
| pedestrian | person | pedestrian |
| cycle | rider, motorcycle, bicycle | cycle |
| (no counterpart) | sidewalk, building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, sky, train | background, barrier, traffic_cone, other_object |

kitti <-> vkitti2 (10 common classes)

| common | kitti | vkitti2 |
|---|---|---|
| road | road, sidewalk | Road |
| building | building | Building |
| pole | pole | Pole |
| traffic light | traffic light | TrafficLight |
| traffic sign | traffic sign | TrafficSign |
| vegetation | vegetation | Tree, Vegetation |
| terrain | terrain | Terrain |
| sky | sky | Sky |
| car | car | Car, Van |
| truck | truck | Truck |
| (no counterpart) | wall, fence, person, rider, bus, train, motorcycle, bicycle | GuardRail, Misc |

nuimages <-> vkitti2 (3 common classes)

| common | nuimages | vkitti2 |
|---|---|---|
| road | driveable_surface | Road |
| car | car | Car, Van |
| truck | truck | Truck |
| (no counterpart) | background, bus, pedestrian, cycle, barrier, traffic_cone, other_object | Terrain, Sky, Tree, Vegetation, Building, GuardRail, TrafficSign, TrafficLight, Pole, Misc |

A dataset against itself has no entry (``lix evaluate`` scores it on all its classes).
"""  # noqa: E501  (the tables are markdown_table's rows verbatim, a test checks; a markdown row cannot wrap)

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline.constants import IGNORE_INDEX
from pipeline.errors import ConfigError, DataError
from pipeline.labels import CLASS_NAMES  # train ids of each dataset, in order, as the shards record them

OTHER_LABEL = "other (no counterpart)"  # the name of the OTHER column in metrics.json


@dataclass(frozen=True)
class CommonSpace:
    """The shared label space of two datasets: ``names`` (the common classes, in order) and,
    per dataset, ``maps[dataset][class name]`` -> a common name or None (no counterpart)."""

    names: tuple[str, ...]
    maps: Mapping[str, Mapping[str, str | None]]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.maps)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


# One entry per unordered pair, keyed by the sorted pair; every class of both datasets listed.
COMMON: dict[tuple[str, str], CommonSpace] = {
    ("kitti", "nuimages"): CommonSpace(
        names=("road", "car", "truck", "bus", "pedestrian", "cycle"),
        maps={
            "kitti": {
                "road": "road", "sidewalk": None, "building": None, "wall": None, "fence": None, "pole": None,
                "traffic light": None, "traffic sign": None, "vegetation": None, "terrain": None, "sky": None,
                "person": "pedestrian", "rider": "cycle", "car": "car", "truck": "truck", "bus": "bus",
                "train": None, "motorcycle": "cycle", "bicycle": "cycle",
            },
            "nuimages": {
                "background": None, "driveable_surface": "road", "car": "car", "truck": "truck", "bus": "bus",
                "pedestrian": "pedestrian", "cycle": "cycle", "barrier": None, "traffic_cone": None,
                "other_object": None,
            },
        }),
    ("kitti", "vkitti2"): CommonSpace(
        names=("road", "building", "pole", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "car",
               "truck"),
        maps={
            "kitti": {
                "road": "road", "sidewalk": "road", "building": "building", "wall": None, "fence": None,
                "pole": "pole", "traffic light": "traffic light", "traffic sign": "traffic sign",
                "vegetation": "vegetation", "terrain": "terrain", "sky": "sky", "person": None, "rider": None,
                "car": "car", "truck": "truck", "bus": None, "train": None, "motorcycle": None, "bicycle": None,
            },
            "vkitti2": {
                "Terrain": "terrain", "Sky": "sky", "Tree": "vegetation", "Vegetation": "vegetation",
                "Building": "building", "Road": "road", "GuardRail": None, "TrafficSign": "traffic sign",
                "TrafficLight": "traffic light", "Pole": "pole", "Misc": None, "Truck": "truck", "Car": "car",
                "Van": "car",
            },
        }),
    ("nuimages", "vkitti2"): CommonSpace(
        names=("road", "car", "truck"),
        maps={
            "nuimages": {
                "background": None, "driveable_surface": "road", "car": "car", "truck": "truck", "bus": None,
                "pedestrian": None, "cycle": None, "barrier": None, "traffic_cone": None, "other_object": None,
            },
            "vkitti2": {
                "Terrain": None, "Sky": None, "Tree": None, "Vegetation": None, "Building": None, "Road": "road",
                "GuardRail": None, "TrafficSign": None, "TrafficLight": None, "Pole": None, "Misc": None,
                "Truck": "truck", "Car": "car", "Van": "car",
            },
        }),
}


# --------------------------------------------------------------------------- the table
def dataset_classes(dataset: str) -> tuple[str, ...]:
    """The train-id class names of ``dataset`` (ConfigError for one this module does not know)."""
    if dataset not in CLASS_NAMES:
        raise ConfigError("dataset", f"no class list for {dataset!r}; known: {sorted(CLASS_NAMES)}")
    return CLASS_NAMES[dataset]


def common_space(a: str, b: str) -> CommonSpace:
    """The shared label space of datasets ``a`` and ``b`` (either order). ConfigError naming
    both when there is none (the same dataset twice, or a pair without a mapping)."""
    if a == b:
        raise ConfigError(f"{a} -> {b}", f"source and target are the same dataset ({a}); cross-dataset "
                                         f"evaluation needs two (lix evaluate scores a model on its own dataset)")
    space = COMMON.get(_pair(a, b))
    if space is None:
        pairs = ", ".join(f"{x} <-> {y}" for x, y in COMMON)
        raise ConfigError(f"{a} -> {b}", f"no common label space between {a} and {b}; mapped pairs: {pairs}")
    return space


def mapping_table(a: str, b: str) -> list[tuple[str, str, str]]:
    """Rows (common class, classes of ``a``, classes of ``b``) in the common order, then
    ("(no counterpart)", unmapped classes of ``a``, of ``b``); names in train-id order,
    comma-separated."""
    space = common_space(a, b)

    def of(dataset: str, common: str | None) -> str:
        return ", ".join(c for c in dataset_classes(dataset) if space.maps[dataset][c] == common)

    return [(n, of(a, n), of(b, n)) for n in space.names] + [("(no counterpart)", of(a, None), of(b, None))]


def markdown_table(a: str, b: str) -> str:
    """:func:`mapping_table` as a markdown table (the module docstring holds the three)."""
    lines = [f"| common | {a} | {b} |", "|---|---|---|"]
    lines += [f"| {c} | {x} | {y} |" for c, x, y in mapping_table(a, b)]
    return "\n".join(lines)


def label_map(source: str, target: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(src_lut, tgt_lut, common_names) for a ``source`` model evaluated on ``target`` labels.

    ``src_lut`` (int64, one entry per source train id): the common id, or ``OTHER`` =
    ``len(common_names)`` for a class without counterpart. ``tgt_lut`` (int64, 256 entries, so
    that any uint8 label indexes it): the common id of each target train id, 255 (ignored) for a
    class without counterpart, and 255 from ``n_classes`` on (255 passes through)."""
    space = common_space(source, target)
    index = {n: i for i, n in enumerate(space.names)}
    k = len(space.names)
    m_src, m_tgt = space.maps[source], space.maps[target]
    src_lut = np.array([k if m_src[c] is None else index[m_src[c]] for c in dataset_classes(source)], np.int64)
    tgt_lut = np.full(256, IGNORE_INDEX, np.int64)
    for i, c in enumerate(dataset_classes(target)):
        if m_tgt[c] is not None:
            tgt_lut[i] = index[m_tgt[c]]
    return src_lut, tgt_lut, space.names


# --------------------------------------------------------------------------- counting and scores
def _ids(a: Any, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer class ids, got {a.dtype}")
    return a.astype(np.int64, copy=False)


def cross_confusion(pred_src_ids: Any, gt_tgt_ids: Any, source: str, target: str) -> np.ndarray:
    """The ``(K, K + 1)`` int64 matrix of a ``source`` model's class ids ``pred_src_ids`` against
    ``target`` train ids ``gt_tgt_ids`` (same shape; numpy or torch): rows the common ground-truth
    class, columns the common predicted class and, last, ``OTHER``. Target pixels without a
    counterpart (or 255) are not counted. Ids out of range on a counted pixel: ValueError."""
    src_lut, tgt_lut, names = label_map(source, target)
    return _count(pred_src_ids, gt_tgt_ids, src_lut, tgt_lut, len(dataset_classes(target)), len(names))


def _count(pred: Any, gt: Any, src_lut: np.ndarray, tgt_lut: np.ndarray, n_target: int, k: int) -> np.ndarray:
    p, g = _ids(pred, "predictions"), _ids(gt, "ground truth")
    if p.shape != g.shape:
        raise ValueError(f"predictions {p.shape} and ground truth {g.shape} differ in shape")
    p, g = p.reshape(-1), g.reshape(-1)
    labelled = g != IGNORE_INDEX
    bad = labelled & ((g < 0) | (g >= n_target))
    if bad.any():
        raise ValueError(f"ground-truth id {int(g[bad][0])} out of range [0, {n_target}) (255 = ignore)")
    gc = tgt_lut[g[labelled]]
    keep = gc != IGNORE_INDEX
    gc, pk = gc[keep], p[labelled][keep]
    if pk.size and (pk.min() < 0 or pk.max() >= src_lut.size):
        raise ValueError(f"predicted id out of range [0, {src_lut.size}) on a counted pixel")
    counts = np.bincount(gc * (k + 1) + src_lut[pk], minlength=k * (k + 1))
    return counts.reshape(k, k + 1).astype(np.int64)


def cross_metrics(matrix: Any, names: Sequence[str]) -> dict[str, Any]:
    """Scores of a ``(K, K + 1)`` cross matrix over its ``K`` common classes ``names``.

    The definitions of :func:`lix.metrics.scores_from_confusion` (it computes them, on the matrix
    made square by a zero ``OTHER`` row): a pixel in the ``OTHER`` column is a false negative of
    its ground-truth class, and ``OTHER`` itself is no class (no score, not in the means). A class
    absent from the ground truth and never predicted is undefined: NaN, left out of the means.
    Keys: miou, mfsc, fwiou, fwfsc, pixel_acc (fractions), per_class_iou / per_class_f1 /
    support / predicted_other (by class name), other_rate (share of the counted pixels predicted
    as OTHER), n_pixels, n_classes_scored."""
    from lix.metrics import scores_from_confusion

    m = np.asarray(matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else matrix)
    k = len(names)
    if m.ndim != 2 or m.shape != (k, k + 1):
        raise ValueError(f"a cross matrix for {k} common classes is ({k}, {k + 1}), got shape {m.shape}")
    square = np.zeros((k + 1, k + 1), dtype=np.int64)
    square[:k] = m
    s = scores_from_confusion(square)
    iou, f1 = np.array(s["per_class_iou"][:k]), np.array(s["per_class_f1"][:k])

    def mean_defined(x: np.ndarray) -> float:
        d = x[~np.isnan(x)]
        return float(d.mean()) if d.size else math.nan

    total = s["n_pixels"]
    return {
        "miou": mean_defined(iou), "mfsc": mean_defined(f1), "fwiou": s["fwiou"], "fwfsc": s["fwfsc"],
        "pixel_acc": s["pixel_acc"],
        "per_class_iou": dict(zip(names, (float(v) for v in iou))),
        "per_class_f1": dict(zip(names, (float(v) for v in f1))),
        "support": dict(zip(names, s["support"][:k])),
        "predicted_other": dict(zip(names, (int(v) for v in square[:k, k]))),
        "other_rate": float(square[:k, k].sum() / total) if total else math.nan,
        "n_pixels": total, "n_classes_scored": int((~np.isnan(iou)).sum()),
    }


# --------------------------------------------------------------------------- a checkpoint on a dataset
def evaluate_cross(checkpoint: str | Path, target_dataset: str, target_shards: str | Path, out_dir: str | Path,
                   device: str = "cpu", progress: bool = False, *, verify: str = "size") -> dict:
    """Evaluate the RGB-only student ``checkpoint`` (``best.pt``/``last.pt``/``model.safetensors``
    of lix train or lix distill, trained on dataset A) on the val split of ``target_shards``
    (dataset ``target_dataset`` = B) over the classes A and B share. Writes
    ``<out_dir>/metrics.json`` atomically ({"source", "target", "checkpoint", "model",
    "common_classes", "columns", "mapping", "matrix", the :func:`cross_metrics` keys,
    "val_samples"}; NaN as null) and returns the same.

    Refused: a teacher (DataError naming the file: it needs its own dataset's X), a pair
    without a common label space (ConfigError naming both datasets), shards of another dataset
    than ``target_dataset`` or with other classes, and ``out_dir`` = the run's own directory
    (its metrics.json is lix evaluate's). Images of any size: the models pad to their stride and
    crop the logits back (lix/models/mfnet.py, sne_roadseg.py)."""
    from torch.utils.data import DataLoader

    from lix.config import TrainConfig, from_dict
    from lix.data import ShardDataset
    from lix.evaluate import load_run
    from lix.inputs import Inputs
    from lix.loaders import prepare_batch
    from lix.model_factory import build_model
    from lix.runtime import DistInfo, ProgressBar, autocast, resolve_device
    from pipeline.atomic import write_json

    checkpoint, target_shards, out_dir = Path(checkpoint), Path(target_shards), Path(out_dir)
    state, config = load_run(checkpoint)
    if config.get("x") or config.get("role") == "teacher":
        x = config.get("x") or "X"
        raise DataError(checkpoint, f"is an RGB + {x} teacher of {config.get('dataset')}; it needs {x} computed as "
                                    f"on its own dataset: cross-dataset evaluation runs RGB-only students")
    source = config["dataset"]
    src_lut, tgt_lut, names = label_map(source, target_dataset)
    if list(config["class_names"]) != list(dataset_classes(source)):
        raise DataError(checkpoint, f"classes {config['class_names']} are not {source}'s "
                                    f"{list(dataset_classes(source))}: the mapping would be wrong")
    if out_dir.resolve() == checkpoint.parent.resolve():
        raise ConfigError("--out", f"{out_dir} is the run's own directory, whose metrics.json is lix evaluate's; "
                                   f"choose another directory")
    val = ShardDataset(target_shards, "val", augment=None, verify=verify)
    if val.manifest.get("dataset") != target_dataset:
        raise DataError(target_shards, f"holds {val.manifest.get('dataset')} shards, not {target_dataset}")
    if list(val.class_names) != list(dataset_classes(target_dataset)):
        raise DataError(target_shards, f"classes {val.class_names} are not {target_dataset}'s "
                                       f"{list(dataset_classes(target_dataset))}")
    if len(val) == 0:
        raise DataError(target_shards, "the val split has no samples")

    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None)
    d = DistInfo(device=resolve_device(device, "--device"))
    model = build_model(cfg, config["n_classes"], None)
    model.load_state_dict(state)
    model.to(d.device).eval()
    inputs = Inputs.from_config(cfg, "student")
    loader = DataLoader(val, batch_size=cfg.batch_size, shuffle=False)
    k = len(names)
    matrix = np.zeros((k, k + 1), dtype=np.int64)
    n_target = len(dataset_classes(target_dataset))
    with torch.no_grad(), ProgressBar(f"{source} -> {target_dataset}", len(loader), progress) as bar:
        for batch in loader:
            label = batch["label"]  # stays on the CPU, where the counting runs
            batch = prepare_batch(batch, d.device)
            with autocast(d.device, cfg.amp):
                logits = model(*inputs(batch))
            if logits.shape[-2:] != label.shape[-2:]:
                raise DataError(target_shards, f"the model returned {tuple(logits.shape[-2:])} logits for "
                                               f"{tuple(label.shape[-2:])} labels")
            matrix += _count(logits.argmax(1).cpu(), label, src_lut, tgt_lut, n_target, k)
            bar.advance()

    result = {"source": source, "target": target_dataset, "checkpoint": str(checkpoint), "model": cfg.model,
              "common_classes": list(names), "columns": [*names, OTHER_LABEL],
              "mapping": {ds: dict(COMMON[_pair(source, target_dataset)].maps[ds]) for ds in (source, target_dataset)},
              "matrix": matrix.tolist(), **cross_metrics(matrix, names), "val_samples": len(val)}
    return write_json(out_dir / "metrics.json", result, sort_keys=False, nan_as_null=True)
