"""lix/report/ (figures, grid, networks, dwc): the dvclive logs read back exactly, the curves and
Fig. 5 drawn from a fake runs tree, the qualitative grid and the DWC maps from real (untrained) MFNet checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lix.report import figures
from lix.report.dwc import confidence_map, dwc_arrays, dwc_maps, nontarget_weight_maps
from lix.report.figures import cka_curves, training_curves
from lix.report.grid import GAP, grid_size, grid_titles, qualitative_grid, title_height
from lix.report.logs import aggregate_seeds, list_methods, read_tsv, seed_curves
from lix.report.plot import GREY
from pipeline.errors import DataError
from pipeline.imageio import read_rgb
from pipeline.preview import LEGEND_SWATCH, class_legend, legend_height

DS, MODEL = "kitti", "mfnet"

# (method, seed) -> rows; seed 1 of the student stopped after 2 epochs
LOSS = {("student", 0): [(1, 1.5), (2, 1.0), (3, 0.75)], ("student", 1): [(1, 1.7), (2, 1.1)],
        ("lix", 0): [(1, 9.25), (2, 6.5), (3, 4.125)], ("lix", 1): [(1, 8.75), (2, 6.0), (3, 4.375)]}
MIOU = {("student", 0): [(1, 0.1), (2, 0.2), (3, 0.25)], ("student", 1): [(1, 0.12), (2, 0.18)],
        ("lix", 0): [(1, 0.11), (2, 0.23), (3, 0.3)], ("lix", 1): [(1, 0.13), (2, 0.25), (3, 0.2987654321012345)]}
CKA = {("student", 0): [(1, 0.4), (2, 0.45), (3, 0.5)], ("student", 1): [(1, 0.42), (2, 0.44)],
       ("lix", 0): [(1, 0.5), (2, 0.7), (3, 0.8)], ("lix", 1): [(1, 0.55), (2, 0.72), (3, 0.81)]}


def write_tsv(path: Path, rows) -> None:
    """A dvclive metric file as Live.log_metric writes it: ``step<TAB><basename>`` then rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{path.stem}\n" + "".join(f"{s}\t{v!r}\n" for s, v in rows))


def make_tree(root: Path, cka: bool = True) -> Path:
    for (method, seed), rows in LOSS.items():
        d = root / DS / MODEL / method / f"seed{seed}" / "dvclive" / "plots" / "metrics"
        write_tsv(d / "train" / "loss.tsv", rows)
        write_tsv(d / "val" / "miou.tsv", MIOU[method, seed])
        if cka:
            write_tsv(d / "val" / "cka" / "mean.tsv", CKA[method, seed])
            for k, tap in enumerate(("rgb4", "fused", "decoder")):
                write_tsv(d / "val" / "cka" / f"{tap}.tsv", [(s, v - 0.05 * k) for s, v in CKA[method, seed]])
    return root


def assert_png(path: Path, shape=None) -> np.ndarray:
    img = read_rgb(path)
    assert img.ndim == 3 and img.shape[2] == 3
    if shape is not None:
        assert img.shape[:2] == shape
    assert img.std() > 1.0, "a constant picture"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    return img


# ----------------------------------------------------------------------------- logs
def test_read_tsv_returns_the_logged_numbers(tmp_path):
    root = make_tree(tmp_path / "runs")
    for (method, seed), rows in MIOU.items():
        f = root / DS / MODEL / method / f"seed{seed}" / "dvclive" / "plots" / "metrics" / "val" / "miou.tsv"
        assert read_tsv(f) == rows  # exact floats, steps as ints, file order
    assert read_tsv(tmp_path / "nope.tsv") == [] and read_tsv(tmp_path / "nope" / "x.tsv") == []
    damaged = tmp_path / "damaged.tsv"
    damaged.write_text("step\tloss\n1\t0.5\n\n2\t0.25\n3\t")  # a half-written last row
    assert read_tsv(damaged) == [(1, 0.5), (2, 0.25)]
    (tmp_path / "header.tsv").write_text("step\tloss\n")
    assert read_tsv(tmp_path / "header.tsv") == []


def test_read_tsv_reads_what_dvclive_writes(tmp_path):
    from dvclive import Live

    live = Live(dir=str(tmp_path / "dvclive"), save_dvc_exp=False, dvcyaml=False)
    for epoch, (loss, cka) in enumerate([(1.25, 0.5), (0.875, 0.625), (0.3333333333333333, 0.71)], start=1):
        live.step = epoch  # as lix.train._log_epoch does
        live.log_metric("train/loss", loss)
        live.log_metric("val/cka/rgb4", cka)
        live.next_step()
    live.end()
    assert read_tsv(figures.metric_file(tmp_path, "train/loss")) == [(1, 1.25), (2, 0.875), (3, 0.3333333333333333)]
    assert read_tsv(figures.metric_file(tmp_path, "val/cka/rgb4")) == [(1, 0.5), (2, 0.625), (3, 0.71)]


def test_seed_curves_and_their_aggregate(tmp_path):
    root = make_tree(tmp_path / "runs")
    curves = seed_curves(root, DS, MODEL, "student", "train/loss")
    assert curves == {0: dict(LOSS["student", 0]), 1: dict(LOSS["student", 1])}
    agg = aggregate_seeds(curves.values())
    np.testing.assert_array_equal(agg["steps"], [1, 2, 3])
    np.testing.assert_allclose(agg["mean"], [1.6, 1.05, 0.75])
    np.testing.assert_allclose(agg["lo"], [1.5, 1.0, 0.75])
    np.testing.assert_allclose(agg["hi"], [1.7, 1.1, 0.75])
    np.testing.assert_array_equal(agg["n"], [2, 2, 1])  # seed 1 stopped after epoch 2
    # a resumed run that re-logged epoch 2 keeps the last value; NaN is left out of the mean
    agg = aggregate_seeds([{1: 1.0, 2: 3.0}, {1: math.nan, 2: 1.0}])
    np.testing.assert_allclose(agg["mean"], [1.0, 2.0])
    np.testing.assert_array_equal(agg["n"], [1, 2])
    assert seed_curves(root, DS, MODEL, "kd", "train/loss") == {}
    assert len(aggregate_seeds([])["steps"]) == 0


def test_list_methods_order_and_ablations(tmp_path):
    root = make_tree(tmp_path / "runs")
    for m in ("teacher", "lix~beta=4", "kd"):
        (root / DS / MODEL / m / "seed0").mkdir(parents=True)
    (root / DS / MODEL / "empty").mkdir()  # no seed directory: not a method of this matrix
    assert list_methods(root, DS, MODEL) == ["teacher", "student", "kd", "lix"]
    assert list_methods(root, DS, MODEL, ablations=True) == ["teacher", "student", "kd", "lix", "lix~beta=4"]
    assert figures.display_name("lix~controller=fixed,beta=2") == "LIX (controller=fixed, beta=2)"


def test_training_curves_png(tmp_path):
    root = make_tree(tmp_path / "runs")
    out = training_curves(root, DS, MODEL, tmp_path / "fig" / "curves.png")
    assert out == tmp_path / "fig" / "curves.png"
    img = assert_png(out, (round(4.2 * 120), 11 * 120))
    # explicit methods, one of them without runs: drawn without it, same size
    other = training_curves(root, DS, MODEL, tmp_path / "fig" / "curves2.png", methods=["lix", "kd"])
    assert not np.array_equal(assert_png(other, img.shape[:2]), img)
    # no logs at all: still a (labelled) picture
    assert_png(training_curves(tmp_path / "none", DS, MODEL, tmp_path / "fig3" / "empty.png"))


def test_cka_curves(tmp_path):
    root = make_tree(tmp_path / "runs")
    out = cka_curves(root, DS, MODEL, tmp_path / "fig" / "cka.png")
    assert figures.cka_taps(root, DS, MODEL, ["student", "lix"]) == ["rgb4", "fused", "decoder"]
    assert_png(out, (round((4.2 + 2.6) * 120), round(max(6.4, 2.6 * 3) * 120)))
    # without CKA logs (or without the methods' runs): None, nothing written
    bare = make_tree(tmp_path / "bare", cka=False)
    assert cka_curves(bare, DS, MODEL, tmp_path / "fig2" / "cka.png") is None
    assert cka_curves(root, DS, MODEL, tmp_path / "fig2" / "cka.png", methods=("kd",)) is None
    assert not (tmp_path / "fig2").exists()


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def ckpt_runs(train_shards, tmp_path_factory):
    """Untrained MFNet runs in the checkpoint format on the kitti test shards (2 val images,
    48x160, 19 classes): teacher (RGB + depth), student, lix (controller perturbed so its
    weights vary), lix~controller=fixed, kd; a garbage 'broken' checkpoint."""
    from lix.checkpoint import save_checkpoint
    from lix.config import TrainConfig
    from lix.data import ShardDataset
    from lix.distill import create_distiller
    from lix.model_factory import build_model
    from lix.provenance import run_config

    tmp = tmp_path_factory.mktemp("figure_runs")
    shards_root = tmp / "shards"
    shards_root.mkdir()
    (shards_root / DS).symlink_to(train_shards, target_is_directory=True)
    names = ShardDataset(train_shards, "val").class_names
    cfg = TrainConfig(model="mfnet", device="cpu", num_workers=0)
    runs = tmp / "runs"
    torch.manual_seed(0)
    teacher = build_model(cfg, len(names), "depth").eval()
    student = build_model(cfg, len(names), None).eval()

    def save(method, net, role, distill=None, extra=None):
        config = run_config(cfg, DS, role, names, 1) | ({"distill": distill} if distill else {})
        save_checkpoint(runs / DS / MODEL / method / "seed0" / "best.pt",
                        {"model": net.state_dict(), "config": config, "extra": extra or {}})

    save("teacher", teacher, "teacher")
    save("student", student, "student", {"method": "student", "hyper": {}})
    lix = create_distiller("lix", student, teacher)
    with torch.no_grad():
        torch.nn.init.normal_(lix.dwld.controller.mlp[4].weight, std=3.0)
    save("lix", student, "student", {"method": "lix", "hyper": {}}, {"distiller": lix.state_dict()})
    fixed = create_distiller("lix", student, teacher, controller="fixed")
    save("lix~controller=fixed", student, "student", {"method": "lix", "hyper": {"controller": "fixed"}},
         {"distiller": fixed.state_dict()})
    save("kd", student, "student", {"method": "kd", "hyper": {}},
         {"distiller": create_distiller("kd", student, teacher).state_dict()})
    broken = runs / DS / MODEL / "broken" / "seed0" / "best.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    return {"runs": runs, "shards": shards_root, "names": names, "cfg": cfg, "teacher": teacher,
            "student": student}


def predict_overlay(net, role, cfg, item, pal):
    from lix.data import to_device
    from lix.inputs import Inputs
    from pipeline.preview import label_overlay

    batch = to_device({k: v[None] for k, v in item.items() if torch.is_tensor(v)}, "cpu")
    with torch.no_grad():
        pred = net(*Inputs.from_config(cfg, role)(batch)).argmax(1)[0].numpy().astype(np.uint8)
    return label_overlay(item["rgb"].permute(1, 2, 0).numpy(), pred, pal)


def test_qualitative_grid(ckpt_runs, tmp_path):
    from lix.data import ShardDataset
    from pipeline.preview import class_palette, label_overlay

    methods = ["teacher", "student", "dkd", "lix", "broken"]  # dkd: no run; broken: unreadable
    out = qualitative_grid(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, methods, tmp_path / "q.png",
                           n_images=4, seed=0)
    val = ShardDataset(ckpt_runs["shards"] / DS, "val")
    rows, cols, h, w = len(val), 2 + len(methods), 48, 160  # 4 asked, 2 val images exist
    assert rows == 2
    th = title_height(w)
    names = ckpt_runs["names"]
    assert grid_size(rows, cols, h, w) == (th + rows * (h + GAP), cols * w + (cols - 1) * GAP)
    width = cols * w + (cols - 1) * GAP
    # the class legend under the tiles: the picture is taller by a gutter and the legend strip
    assert grid_size(rows, cols, h, w, names) == (th + rows * (h + GAP) + GAP + legend_height(names, width), width)
    img = assert_png(out, grid_size(rows, cols, h, w, names))

    def tile(r, c):
        y, x = th + GAP + r * (h + GAP), c * (w + GAP)
        return img[y:y + h, x:x + w]

    pal = class_palette(ckpt_runs["names"])
    cfg = ckpt_runs["cfg"]
    for r in range(rows):
        item = val[r]
        rgb = item["rgb"].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(tile(r, 0), rgb)
        np.testing.assert_array_equal(tile(r, 1), label_overlay(rgb, item["label"].numpy(), pal))
        np.testing.assert_array_equal(tile(r, 2), predict_overlay(ckpt_runs["teacher"], "teacher", cfg, item, pal))
        np.testing.assert_array_equal(tile(r, 3), predict_overlay(ckpt_runs["student"], "student", cfg, item, pal))
        np.testing.assert_array_equal(tile(r, 5), tile(r, 3))  # lix: the same student weights
        for c in (4, 6):  # the missing and the unreadable run: grey columns with a word on them
            t = tile(r, c)
            assert (t == GREY).all(axis=2).mean() > 0.6 and (t != GREY).any()
            assert not np.array_equal(tile(r, 4), tile(r, 6))  # "missing" vs "unreadable"
    titles = img[:th]
    assert (titles < 128).any() and (titles == 255).mean() > 0.5  # dark text on white
    # gutters are white
    tiles_h = grid_size(rows, cols, h, w)[0]
    assert (img[:tiles_h, w:w + GAP] == 255).all() and (img[th:th + GAP] == 255).all()
    # below the tiles: a white gutter, then exactly the legend of the dataset's classes and colours
    assert (img[tiles_h:tiles_h + GAP] == 255).all()
    np.testing.assert_array_equal(img[tiles_h + GAP:], class_legend(names, pal, width))
    assert_swatches(img[tiles_h + GAP:], pal[:len(names)])
    assert grid_titles(methods) == ["RGB", "ground truth", "Teacher (RGB + X)", "Student (RGB)", "DKD", "LIX", "broken"]


def assert_swatches(strip: np.ndarray, colours: np.ndarray) -> None:
    """Every colour of ``colours`` fills at least one LEGEND_SWATCH-sized square of ``strip``."""
    for c in colours:
        same = (strip == c).all(axis=2).astype(np.int64)
        # a full square: the summed-area table of the matches reaches LEGEND_SWATCH² somewhere
        sat = np.pad(same.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        k = LEGEND_SWATCH
        sums = sat[k:, k:] - sat[:-k, k:] - sat[k:, :-k] + sat[:-k, :-k]
        assert (sums == k * k).any(), f"no swatch of colour {c}"


def test_class_legend_swatches_names_and_wrapping():
    from pipeline.preview import class_palette

    names = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "car"]
    pal = class_palette(len(names))
    wide = class_legend(names, pal, 900)
    assert wide.dtype == np.uint8 and wide.shape == (legend_height(names, 900), 900, 3)
    assert_swatches(wide, pal[:len(names)])
    assert (wide == 255).all(axis=2).mean() > 0.5 and (wide < 60).all(axis=2).any()  # dark names on white
    narrow = class_legend(names, pal, 160)  # the entries wrap onto more lines: taller, every swatch kept
    assert narrow.shape[1] == 160 and narrow.shape[0] > wide.shape[0]
    assert_swatches(narrow, pal[:len(names)])
    assert not (class_legend(names[:2], pal, 900) == pal[2]).all(axis=2).any()  # only the classes given
    np.testing.assert_array_equal(class_legend(names, pal, 900), wide)  # deterministic
    with pytest.raises(ValueError):
        class_legend(names, pal[:3], 900)


def test_qualitative_grid_refuses_a_run_of_other_classes(ckpt_runs, tmp_path):
    from lix.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(ckpt_runs["runs"] / DS / MODEL / "student" / "seed0" / "best.pt", required=())
    ck["config"] = ck["config"] | {"class_names": ["a"] * len(ckpt_runs["names"])}
    runs = tmp_path / "runs"
    save_checkpoint(runs / DS / MODEL / "student" / "seed0" / "best.pt",
                    {k: v for k, v in ck.items() if k not in ("format", "version")})
    with pytest.raises(DataError, match="differ from the shards'"):
        qualitative_grid(runs, ckpt_runs["shards"], DS, MODEL, ["student"], tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_confidence_map_golden():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]],
                           [[0.0, 1.0], [0.5, -2.0]],
                           [[-1.0, 4.0], [0.5, 0.0]]])  # (C=3, 2, 2)
    label = torch.tensor([[0, 2], [1, 255]], dtype=torch.uint8)
    z = logits.numpy().astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(0)
    got = confidence_map(logits, label)
    np.testing.assert_allclose(got[0, 0], p[0, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(got[0, 1], p[2, 0, 1], rtol=1e-12)
    np.testing.assert_allclose(got[1, 0], 1 / 3, rtol=1e-12)
    assert np.isnan(got[1, 1])
    np.testing.assert_allclose(confidence_map(logits[None], label.numpy()), got)  # (1, C, H, W), arrays


def test_nontarget_weight_maps_golden():
    w = np.array([[[1.0, 9.0]], [[5.0, 2.0]], [[3.0, 4.0]]])  # (C=3, 1, 2)
    mean, top = nontarget_weight_maps(torch.from_numpy(w), np.array([[1, 255]]))
    np.testing.assert_allclose(mean[0, 0], (1.0 + 3.0) / 2)  # the target class 1 (weight 5) is left out
    assert top[0, 0] == 2  # 3 > 1 among the non-targets, though the target's 5 is larger
    assert np.isnan(mean[0, 1]) and top[0, 1] == 255


def test_dwc_arrays_are_the_trained_controllers_weights(ckpt_runs):
    from lix.checkpoint import load_checkpoint
    from lix.data import ShardDataset, to_device
    from lix.distill import create_distiller
    from lix.inputs import Inputs

    d = dwc_arrays(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, "lix", n_images=5)
    assert (d["beta"], d["beta_min"], d["beta_max"]) == (8.0, 1.0, 10.0)
    # reference: the run's distiller rebuilt as training builds it, its state loaded
    ck = load_checkpoint(ckpt_runs["runs"] / DS / MODEL / "lix" / "seed0" / "best.pt", required=())
    distiller = create_distiller("lix", ckpt_runs["student"], ckpt_runs["teacher"])
    distiller.load_state_dict(ck["extra"]["distiller"])
    val = ShardDataset(ckpt_runs["shards"] / DS, "val")
    assert len(d["rgb"]) == len(val) == 2
    for i in range(len(val)):
        b = to_device({k: v[None] for k, v in val[i].items() if torch.is_tensor(v)}, "cpu")
        with torch.no_grad():
            s = ckpt_runs["student"](b["rgb"])
            t = ckpt_runs["teacher"](*Inputs.from_config(ckpt_runs["cfg"], "teacher")(b))  # unused by this DWC
            wts = distiller.dwld.weights(s, t, b["label"])[0].numpy()
        lab = b["label"][0].numpy()
        valid = lab != 255
        assert valid.any()  # (the synthetic val labels have no ignored pixels: the golden tests cover those)
        onehot = np.arange(wts.shape[0])[:, None, None] == lab[None]
        want_mean = np.where(onehot, 0, wts).sum(0) / (wts.shape[0] - 1)
        np.testing.assert_allclose(d["mean_weight"][i][valid], want_mean[valid], rtol=1e-5)
        assert np.isnan(d["mean_weight"][i][~valid]).all()
        want_top = np.where(onehot, -np.inf, wts).argmax(0)
        np.testing.assert_array_equal(d["top_class"][i][valid], want_top[valid])
        assert (d["top_class"][i][valid] != lab[valid]).all()
        p = torch.softmax(s.double(), 1)[0].numpy()
        np.testing.assert_allclose(d["confidence"][i][valid],
                                   np.take_along_axis(p, np.where(valid, lab, 0)[None], 0)[0][valid], rtol=1e-5)
        # the perturbed controller spreads the weights: a map, not a constant
        assert np.nanstd(d["mean_weight"][i]) > 1e-3 and 1.0 < np.nanmin(d["mean_weight"][i])
        assert np.nanmax(d["mean_weight"][i]) < 10.0


def test_dwc_maps(ckpt_runs, tmp_path):
    from pipeline.preview import class_palette

    out = dwc_maps(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, tmp_path / "dwc.png", n_images=2)
    img = assert_png(out)
    # the class legend under the figure: the classes the last column shows, most frequent first
    d = dwc_arrays(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, "lix", n_images=2)
    counts = np.bincount(np.concatenate([t.ravel() for t in d["top_class"]]), minlength=256)[:len(d["class_names"])]
    shown = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    pal = class_palette(d["class_names"])[shown]
    legend = class_legend([d["class_names"][k] for k in shown], pal, img.shape[1])
    np.testing.assert_array_equal(img[-len(legend):], legend)
    for method in ("lix~controller=fixed", "kd", "student"):  # no DWC: None, nothing written
        assert dwc_maps(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, tmp_path / "x" / "none.png",
                        method=method) is None
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="checkpoint not found"):
        dwc_maps(ckpt_runs["runs"], ckpt_runs["shards"], DS, MODEL, tmp_path / "x.png", method="dwld")


# ----------------------------------------------------------------------------- the report's pictures
def _report_runs(ckpt_runs, root: Path, methods) -> Path:
    """A runs tree for lix report: the fixture's checkpoints of ``methods`` (linked) with a
    finished evaluation each (metrics.json), so the report picks them for its grid."""
    import json

    for i, method in enumerate(methods):
        d = root / DS / MODEL / method / "seed0"
        d.mkdir(parents=True)
        (d / "best.pt").symlink_to(ckpt_runs["runs"] / DS / MODEL / method / "seed0" / "best.pt")
        m = {k: 0.2 + 0.05 * i for k in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc")}
        (d / "metrics.json").write_text(json.dumps({**m, "dataset": DS, "model": MODEL}))
    return root


def _grid_caption_columns(md: str) -> list[str]:
    """The columns the README's grid caption lists (``RGB | ground truth | ...``)."""
    line = next(ln for ln in md.splitlines() if "RGB | ground truth" in ln)
    listed = line.split("): ", 1)[1].split(". ", 1)[0]
    return listed.split(" | ")


@pytest.mark.parametrize("methods, want", [
    (("teacher", "student", "lix"), ["RGB", "ground truth", "Teacher (RGB + X)", "Student (RGB)", "LIX"]),
    (("teacher", "student", "kd", "lix"), ["RGB", "ground truth", "Teacher (RGB + X)", "Student (RGB)", "KD", "LIX"]),
])
def test_report_grid_caption_lists_the_columns_drawn(ckpt_runs, tmp_path, methods, want):
    """Without a finished baseline the grid has no 'best baseline' column: the caption must not
    promise one. The caption's columns, counted, are the picture's columns, measured."""
    from lix.report.build import write_report

    runs = _report_runs(ckpt_runs, tmp_path / "runs", methods)
    out = tmp_path / "report"
    summary = write_report(runs, out, shards_root=ckpt_runs["shards"], paper=None)
    md = (out / "README.md").read_text(encoding="utf-8")
    cols = _grid_caption_columns(md)
    assert cols == want and f"({len(want)} columns, seed 0)" in md
    assert summary["datasets"][DS]["figure_info"][MODEL]["grid"]["columns"] == want
    img = read_rgb(out / f"grid_{DS}_{MODEL}.png")
    tile_w = 160
    drawn = (img.shape[1] + GAP) // (tile_w + GAP)
    assert drawn * tile_w + (drawn - 1) * GAP == img.shape[1] and drawn == len(cols)
    assert "legend under the grid" in md


def test_report_reads_the_depth_source_from_the_shards(ckpt_runs, tmp_path):
    """The test shards were prepared with the dataset's own depth (ground_truth), which is not the
    paper's KITTI depth (CREStereo): the protocol and the setup table say which it was."""
    from lix.report.build import write_report
    from lix.report.depth import fmt_depth_source, read_depth_source

    counts = read_depth_source(ckpt_runs["shards"] / DS)
    assert counts == {"ground_truth": 8}  # 6 train + 2 val samples
    runs = _report_runs(ckpt_runs, tmp_path / "runs", ("student",))
    summary = write_report(runs, tmp_path / "report", plots=False, shards_root=ckpt_runs["shards"], paper=None)
    assert summary["depth_sources"] == {DS: counts}
    md = (tmp_path / "report" / "README.md").read_text(encoding="utf-8")
    assert "**KITTI**: depth source of X ground_truth (the dataset's own depth) (the paper: CREStereo)" in md
    setup = next(ln for ln in md.splitlines() if ln.startswith("| KITTI | MFNet | student |"))
    assert "| ground_truth (the dataset's own depth) |" in setup
    # without the shards the source is unknown, not guessed
    write_report(runs, tmp_path / "bare", plots=False, paper=None)
    assert "depth source of X — (not known" in (tmp_path / "bare" / "README.md").read_text(encoding="utf-8")
    assert fmt_depth_source({"sgbm": 200}) == "sgbm (stereo)"
    assert fmt_depth_source({"sgbm": 50, "crestereo": 150}) == "crestereo (stereo network) 150, sgbm (stereo) 50"
    assert fmt_depth_source(None) == "—"
