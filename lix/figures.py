"""The report's pictures, drawn from the run directories of the experiment matrix.

    <runs_root>/<dataset>/<model>/<method>/seed<k>/best.pt                      the checkpoint
    <runs_root>/<dataset>/<model>/<method>/seed<k>/dvclive/plots/metrics/<name>.tsv   per-epoch logs

``<method>`` is ``teacher``, ``student``, a distillation method or an ablation
``<method>~<key>=<value>[,...]``. Every function is pure (reads the runs, writes one PNG
atomically and returns its path, or None where the figure does not apply):

* :func:`training_curves` -- train loss and val mIoU against the epoch, mean over seeds with the
  min-max band, one line per method;
* :func:`cka_curves` -- the paper's Fig. 5: the teacher-student feature CKA (``val/cka``, logged
  by lix/distill/monitor.py) against the epoch, plus one small panel per tap;
* :func:`qualitative_grid` -- RGB | ground truth | one prediction column per method, for the same
  first val images, the class legend below; a method whose run is missing gets a grey column
  marked "missing";
* :func:`dwc_maps` -- what the dynamic weight controller of a LIX/DWLD run does on a few val
  images: the student's confidence in the true class, the mean non-target weight, and the class
  whose weight is largest;
* :func:`read_tsv` -- one dvclive metric file as [(step, value)];
* :func:`class_legend` -- the strip of class swatches and names that goes under every picture of
  class colours (the grid, the DWC maps; lix.train's predictions.png).

The numbers behind the pictures are public too (:func:`seed_curves`, :func:`aggregate_seeds`,
:func:`confidence_map`, :func:`nontarget_weight_maps`, :func:`dwc_arrays`), so they can be
tested without reading pixels. Matplotlib runs with the Agg canvas only (no pyplot state, no
display); PNGs carry no "Software" metadata, so the same input gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import DataError

log = logging.getLogger(__name__)

METRICS_DIR = ("dvclive", "plots", "metrics")
ABLATION_SEPARATORS = ("~", "@")  # "<method>~<key>=<value>" (older layouts: "@")
GAP = 2  # px of white between the tiles of qualitative_grid
GREY = 128  # the grey of a missing column and of ignored pixels
_SEED = re.compile(r"^seed(\d+)$")


# ----------------------------------------------------------------------------- logs
def read_tsv(path: str | Path) -> list[tuple[int, float]]:
    """The rows of one dvclive metric file (``step<TAB><name>`` header, one row per logged
    step) as [(step, value)] in file order. A missing file gives []; the header, blank lines
    and rows that do not parse (e.g. a half-written last line) are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows: list[tuple[int, float]] = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        try:
            rows.append((int(parts[0]), float(parts[1])))
        except ValueError:  # the header, or a damaged row
            continue
    return rows


def metric_file(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/dvclive/plots/metrics/<name>.tsv`` (``name`` e.g. ``"val/miou"``)."""
    return Path(run_dir).joinpath(*METRICS_DIR, f"{name}.tsv")


def seed_dirs(runs_root: str | Path, dataset: str, model: str, method: str) -> list[tuple[int, Path]]:
    """[(k, <runs_root>/<dataset>/<model>/<method>/seed<k>)] for the seed directories that
    exist, by k."""
    d = Path(runs_root) / dataset / model / method
    if not d.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _SEED.match(p.name))]
    return sorted(out)


def is_ablation(method: str) -> bool:
    return any(s in method for s in ABLATION_SEPARATORS)


def _display_table() -> dict[str, str]:
    try:
        from lix.report import DISPLAY
    except ImportError:  # pragma: no cover - report.py is the one place that names methods
        return {}
    return dict(DISPLAY)


def display_name(method: str) -> str:
    """The paper's name of a method ("lix" -> "LIX", "lix~beta=4" -> "LIX (beta=4)")."""
    table = _display_table()
    for sep in ABLATION_SEPARATORS:
        base, found, rest = method.partition(sep)
        if found:
            return f"{table.get(base, base)} ({rest.replace(',', ', ')})"
    return table.get(method, method)


def _method_key(method: str) -> tuple:
    order = ["teacher", "student", *[m for m in _display_table() if m not in ("teacher", "student")]]
    base = re.split("|".join(map(re.escape, ABLATION_SEPARATORS)), method, maxsplit=1)[0]
    return (is_ablation(method), order.index(base) if base in order else len(order), base, method)


def list_methods(runs_root: str | Path, dataset: str, model: str, ablations: bool = False) -> list[str]:
    """The method directories of ``<runs_root>/<dataset>/<model>`` that hold a seed directory,
    in the report's order (teacher, student, the baselines, the paper's methods); ablation
    variants only when ``ablations``."""
    d = Path(runs_root) / dataset / model
    if not d.is_dir():
        return []
    names = [p.name for p in d.iterdir() if p.is_dir() and seed_dirs(runs_root, dataset, model, p.name)]
    return sorted((m for m in names if ablations or not is_ablation(m)), key=_method_key)


def seed_curves(runs_root: str | Path, dataset: str, model: str, method: str, name: str) -> dict[int, dict[int, float]]:
    """{seed: {step: value}} of the metric ``name`` (e.g. ``"val/miou"``) for every seed of
    ``method`` whose log is not empty. A step logged twice (a resumed run re-logging an epoch)
    keeps its last value."""
    out = {}
    for k, d in seed_dirs(runs_root, dataset, model, method):
        rows = read_tsv(metric_file(d, name))
        if rows:
            out[k] = dict(rows)
    return out


def aggregate_seeds(curves: Iterable[dict[int, float]]) -> dict[str, np.ndarray]:
    """Per step over the seeds that logged it (NaN values left out): ``steps`` (S,) int,
    ``mean``, ``lo`` (min), ``hi`` (max) (S,) float, ``n`` (S,) int seeds counted. Steps where
    no seed has a finite value are dropped."""
    curves = list(curves)
    steps = sorted({s for c in curves for s in c})
    rows = []
    for s in steps:
        vals = [c[s] for c in curves if s in c and math.isfinite(c[s])]
        if vals:
            rows.append((s, float(np.mean(vals)), min(vals), max(vals), len(vals)))
    cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return {"steps": np.asarray(cols[0], dtype=np.int64), "mean": np.asarray(cols[1], dtype=np.float64),
            "lo": np.asarray(cols[2], dtype=np.float64), "hi": np.asarray(cols[3], dtype=np.float64),
            "n": np.asarray(cols[4], dtype=np.int64)}


# ----------------------------------------------------------------------------- matplotlib
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    from pipeline.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _title(dataset: str, model: str) -> str:
    try:
        from lix.report import display_dataset, display_model
    except ImportError:  # pragma: no cover
        return f"{dataset} · {model}"
    return f"{display_dataset(dataset)} · {display_model(model)}"


def _draw_band(ax, curves: dict[int, dict[int, float]], colour: str, label: str, scale: float = 1.0) -> bool:
    """Mean line and min-max band of ``curves`` ({seed: {step: value}}) times ``scale``;
    False when there is nothing to draw."""
    agg = aggregate_seeds(curves.values())
    if not len(agg["steps"]):
        return False
    x = agg["steps"]
    marker = "o" if len(x) <= 30 else None
    ax.plot(x, agg["mean"] * scale, color=colour, marker=marker, markersize=3, linewidth=1.5,
            label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        ax.fill_between(x, agg["lo"] * scale, agg["hi"] * scale, color=colour, alpha=0.18, linewidth=0)
    return True


def _epoch_axis(ax, fontsize: float | None = None) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch", fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9)


# ----------------------------------------------------------------------------- 1. training curves
def training_curves(runs_root: str | Path, dataset: str, model: str, path: str | Path,
                    methods: Sequence[str] | None = None) -> Path:
    """Two panels against the epoch: train loss (``train/loss``: the run's total, CE plus the
    weighted distillation terms; log scale when positive) and val mIoU (``val/miou``, in %).
    One colour per method: the mean over its seeds, the band from the seeds' min to max at
    each epoch (a seed that stopped early counts until it stopped). ``methods``: which, in
    order (default: every non-ablation method of the dataset and model,
    :func:`list_methods`). Methods without logs are left out of the legend; a figure with no
    logs at all says so. PNG (Agg), written atomically; returns ``path``."""
    methods = list(methods) if methods is not None else list_methods(runs_root, dataset, model)
    fig = _figure(11.0, 4.2)
    ax_loss, ax_miou = fig.subplots(1, 2)
    drawn = {"loss": False, "miou": False}
    positive = True
    for i, method in enumerate(methods):
        colour, label = f"C{i % 10}", display_name(method)
        loss = seed_curves(runs_root, dataset, model, method, "train/loss")
        if _draw_band(ax_loss, loss, colour, label):
            drawn["loss"] = True
            positive &= all(v > 0 for c in loss.values() for v in c.values() if math.isfinite(v))
        drawn["miou"] |= _draw_band(ax_miou, seed_curves(runs_root, dataset, model, method, "val/miou"), colour,
                                    label, scale=100.0)
    ax_loss.set_title("train loss")
    ax_loss.set_ylabel("loss (CE + weighted distillation terms)")
    if drawn["loss"] and positive:
        ax_loss.set_yscale("log")
    ax_miou.set_title("val mIoU")
    ax_miou.set_ylabel("mIoU (%)")
    for ax, key in ((ax_loss, "loss"), (ax_miou, "miou")):
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        if drawn[key]:
            ax.legend(fontsize=7)
        else:
            _empty_note(ax, "no dvclive logs found")
    fig.suptitle(f"{_title(dataset, model)}: training curves (mean over seeds, band = min–max)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- 2. CKA (Fig. 5)
def _tap_order(taps: Iterable[str]) -> list[str]:
    from lix.models.registry import MODELS

    known = [t for name in MODELS for t in getattr(MODELS[name], "default_taps", ())]
    return sorted(set(taps), key=lambda t: (known.index(t) if t in known else len(known), t))


def cka_taps(runs_root: str | Path, dataset: str, model: str, methods: Iterable[str]) -> list[str]:
    """The taps with a ``val/cka/<tap>.tsv`` in any seed of ``methods``, in the families' order."""
    taps = set()
    for method in methods:
        for _k, d in seed_dirs(runs_root, dataset, model, method):
            folder = metric_file(d, "val/cka").with_suffix("")
            if folder.is_dir():
                taps |= {p.stem for p in folder.glob("*.tsv")} - {"mean"}
    return _tap_order(taps)


def cka_curves(runs_root: str | Path, dataset: str, model: str, path: str | Path,
               methods: Sequence[str] = ("student", "lix")) -> Path | None:
    """The paper's Fig. 5: linear CKA between the student's and the frozen teacher's features
    (``val/cka/mean``: the mean over the taps of the per-image CKA on 16 val images, in [0, 1];
    lix/distill/monitor.py)
    against the epoch, one line per method (mean over seeds, min-max band); below it, when the
    runs logged them, one small panel per tap (``val/cka/<tap>``). Returns None, writing
    nothing, when no run of ``methods`` has a CKA log."""
    methods = list(methods)
    main = {m: seed_curves(runs_root, dataset, model, m, "val/cka/mean") for m in methods}
    taps = cka_taps(runs_root, dataset, model, methods)
    per_tap = {t: {m: seed_curves(runs_root, dataset, model, m, f"val/cka/{t}") for m in methods} for t in taps}
    taps = [t for t in taps if any(per_tap[t].values())]
    if not any(main.values()) and not taps:
        return None
    n = len(taps)
    fig = _figure(max(6.4, 2.6 * n), 4.2 + (2.6 if n else 0.0))
    if n:
        grid = fig.add_gridspec(2, n, height_ratios=(1.6, 1.0))
        ax = fig.add_subplot(grid[0, :])
        tap_axes = [fig.add_subplot(grid[1, j]) for j in range(n)]
    else:
        ax, tap_axes = fig.add_subplot(1, 1, 1), []
    drawn = False
    for i, m in enumerate(methods):
        drawn |= _draw_band(ax, main[m], f"C{i % 10}", display_name(m))
    _epoch_axis(ax)
    ax.set_ylabel("linear CKA (student vs teacher)")
    ax.set_title(f"{_title(dataset, model)}: teacher–student feature similarity (mean over taps)", fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        _empty_note(ax, "no val/cka/mean logs (only per-tap ones)")
    for tax, tap in zip(tap_axes, taps):
        for i, m in enumerate(methods):
            _draw_band(tax, per_tap[tap][m], f"C{i % 10}", display_name(m))
        tax.set_title(tap, fontsize=9)
        _epoch_axis(tax, fontsize=8)
        tax.tick_params(labelsize=7)
        tax.grid(alpha=0.3)
    if tap_axes:
        tap_axes[0].set_ylabel("CKA", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- networks
def _device(device: str):
    from lix.runtime import resolve_device

    return resolve_device(device, "device")


def _load_net(ckpt: dict, path: Path, class_names: Sequence[str], device):
    """(model on ``device`` in eval mode, its Inputs, run config) from a loaded checkpoint.
    DataError when the run's classes are not the shards'."""
    from lix.config import TrainConfig, from_dict
    from lix.train import Inputs, build_model

    config = ckpt["config"]
    if not isinstance(config, dict) or "train" not in config or "n_classes" not in config:
        raise DataError(path, "carries no run config (not written by lix train)")
    if list(config.get("class_names", [])) != list(class_names):
        raise DataError(path, f"classes {config.get('class_names')} differ from the shards' {list(class_names)}")
    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None)
    net = build_model(cfg, config["n_classes"], config["x"])
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval(), Inputs.from_config(cfg, config["role"]), config


def _batch(item: dict, device) -> dict:
    import torch

    from lix.train import prepare_batch

    return prepare_batch({k: v[None] if torch.is_tensor(v) else v for k, v in item.items()}, device)


def _logits(net, inputs, item: dict, device):
    """(1, C, H, W) float32 logits of one ShardDataset item."""
    import torch

    with torch.no_grad():
        return net(*inputs(_batch(item, device))).float()


def _val_items(shards_root: str | Path, dataset: str, n_images: int) -> tuple[list[dict], list[str]]:
    from lix.data import ShardDataset

    shard_dir = Path(shards_root) / dataset
    ds = ShardDataset(shard_dir, "val", augment=None)
    n = min(int(n_images), len(ds))
    if n < 1:
        raise DataError(shard_dir, "no val samples to draw")
    return [ds[i] for i in range(n)], list(ds.class_names)


def _rgb(item: dict) -> np.ndarray:
    return item["rgb"].permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- class legend
# The legend strip lives beside the class palette (pipeline/preview.py), so that the trainer's
# predictions.png draws it without importing the report's figures.
from pipeline.preview import (LEGEND_PAD, LEGEND_ROW, LEGEND_SPACING, LEGEND_SWATCH,  # noqa: E402,F401
                              class_legend, legend_height, with_legend)


# ----------------------------------------------------------------------------- 3. qualitative grid
def title_height(tile_w: int) -> int:
    """Height in px of qualitative_grid's title strip for tiles ``tile_w`` px wide."""
    return max(16, min(40, tile_w // 10))


def grid_titles(methods: Sequence[str]) -> list[str]:
    """The column titles of :func:`qualitative_grid` for ``methods``, left to right: the grid
    draws them and the report's caption lists them, so the two cannot disagree."""
    return ["RGB", "ground truth", *(display_name(m) for m in methods)]


def grid_size(n_rows: int, n_cols: int, tile_h: int, tile_w: int,
              class_names: Sequence[str] | None = None) -> tuple[int, int]:
    """(H, W) of qualitative_grid's picture: the title strip, then per row a GAP and the row;
    columns separated by GAP; with ``class_names``, a GAP and the class legend below
    (:func:`legend_height`), as qualitative_grid draws it."""
    h, w = title_height(tile_w) + n_rows * (GAP + tile_h), n_cols * tile_w + (n_cols - 1) * GAP
    if class_names is not None:
        h += GAP + legend_height(class_names, w)
    return h, w


def _text(img: np.ndarray, text: str, colour, max_h: float) -> np.ndarray:
    """``text`` centred on ``img`` (uint8 (h, w, 3)), as large as fits ``max_h`` px high."""
    import cv2

    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thick)
    h, w = img.shape[:2]
    scale = max(0.2, min(max_h / (th + base), (w - 4) / max(tw, 1)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    org = (max(0, (w - tw) // 2), (h + th) // 2)
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)
    return img


def _missing_tile(h: int, w: int, text: str) -> np.ndarray:
    return _text(np.full((h, w, 3), GREY, np.uint8), text, (40, 40, 40), 0.3 * h)


def qualitative_grid(runs_root: str | Path, shards_root: str | Path, dataset: str, model: str,
                     methods: Sequence[str], path: str | Path, n_images: int = 4, seed: int = 0,
                     device: str = "cpu") -> Path:
    """One row per val image (the first ``n_images`` of ``<shards_root>/<dataset>``'s val
    split, the same for every column): RGB | ground truth | one column per entry of
    ``methods`` in order, each the prediction of ``<runs_root>/<dataset>/<model>/<method>/
    seed<seed>/best.pt`` as class colours over the RGB (pipeline.preview's palette; ignored
    ground-truth pixels show the RGB). The teacher sees RGB + its X through its own Inputs.
    A method without that checkpoint gets a grey column marked "missing" (an unreadable one:
    "unreadable", with a warning); a run trained on other classes is a DataError. A title
    strip names the columns (:func:`grid_titles`); the class legend (:func:`class_legend`)
    runs below. Tiles are the val images' size (H, W), GAP px apart: the picture is
    :func:`grid_size` (rows, 2 + len(methods), H, W, class names). PNG, written atomically."""
    from lix.checkpoint import load_checkpoint
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette, label_overlay

    dev = _device(device)
    items, class_names = _val_items(shards_root, dataset, n_images)
    pal = class_palette(class_names)
    h, w = items[0]["rgb"].shape[1:]
    rgbs = [_fit(_rgb(it), h, w) for it in items]
    gts = [_fit(label_overlay(_rgb(it), it["label"].numpy(), pal), h, w) for it in items]
    col_titles = grid_titles(methods)
    columns: list[tuple[str, list[np.ndarray]]] = [(col_titles[0], rgbs), (col_titles[1], gts)]
    for method, name in zip(methods, col_titles[2:]):
        ckpt_path = Path(runs_root) / dataset / model / method / f"seed{seed}" / "best.pt"
        if not ckpt_path.is_file():
            columns.append((name, [_missing_tile(h, w, "missing")] * len(items)))
            continue
        try:
            ckpt = load_checkpoint(ckpt_path, required=("model", "config"))
        except DataError as e:
            log.warning("qualitative grid: %s", e)
            columns.append((name, [_missing_tile(h, w, "unreadable")] * len(items)))
            continue
        net, inputs, _config = _load_net(ckpt, ckpt_path, class_names, dev)
        tiles = []
        for it in items:
            pred = _logits(net, inputs, it, dev).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
            tiles.append(_fit(label_overlay(_rgb(it), pred, pal), h, w))
        columns.append((name, tiles))
        del net, ckpt
    th = title_height(w)
    gap_v = np.full((h, GAP, 3), 255, np.uint8)
    titles = [_text(np.full((th, w, 3), 255, np.uint8), t, (0, 0, 0), 0.65 * th) for t, _ in columns]
    parts = [_hjoin(titles, np.full((th, GAP, 3), 255, np.uint8))]
    for r in range(len(items)):
        row = _hjoin([tiles[r] for _, tiles in columns], gap_v)
        parts += [np.full((GAP, row.shape[1], 3), 255, np.uint8), row]
    grid = with_legend(np.concatenate(parts, axis=0), class_names, pal)
    write_image(path, grid)
    return Path(path)


def _hjoin(tiles: list[np.ndarray], gap: np.ndarray) -> np.ndarray:
    return np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)


def _fit(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """A val image of another size, resized (nearest: class colours stay exact) to (h, w)."""
    if tile.shape[:2] == (h, w):
        return tile
    import cv2

    return cv2.resize(tile, (w, h), interpolation=cv2.INTER_NEAREST)


# ----------------------------------------------------------------------------- 4. DWC maps
from pipeline.constants import IGNORE_INDEX  # noqa: E402


def confidence_map(logits, label) -> np.ndarray:
    """The student's softmax probability of the ground-truth class per pixel: logits (C, H, W)
    or (1, C, H, W) (tensor or array), label (H, W) int (255 = ignore) -> (H, W) float64 in
    [0, 1], NaN at ignored pixels."""
    z = np.asarray(_numpy(logits), dtype=np.float64)
    z = z[0] if z.ndim == 4 else z
    lab = np.asarray(_numpy(label)).astype(np.int64)
    z = z - z.max(0, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(0, keepdims=True)
    valid = lab != IGNORE_INDEX
    safe = np.where(valid, lab, 0)
    conf = np.take_along_axis(p, safe[None], axis=0)[0]
    return np.where(valid, conf, np.nan)


def nontarget_weight_maps(weights, label) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel over the non-target classes (k != label) of DWC weights (C, H, W) or
    (1, C, H, W): (mean weight (H, W) float64, NaN at ignored pixels; the class with the
    largest weight (H, W) uint8, 255 at ignored pixels)."""
    wts = np.asarray(_numpy(weights), dtype=np.float64)
    wts = wts[0] if wts.ndim == 4 else wts
    lab = np.asarray(_numpy(label)).astype(np.int64)
    valid = lab != IGNORE_INDEX
    target = np.arange(wts.shape[0])[:, None, None] == np.where(valid, lab, -1)[None]
    mean = np.where(target, 0.0, wts).sum(0) / (wts.shape[0] - target.sum(0))
    top = np.where(target, -np.inf, wts).argmax(0)
    return np.where(valid, mean, np.nan), np.where(valid, top, IGNORE_INDEX).astype(np.uint8)


def _numpy(x):
    import torch

    return x.detach().to("cpu").numpy() if torch.is_tensor(x) else x


def _dwld_head(ckpt: dict, path: Path, n_classes: int):
    """The run's DWLDHead with its trained controller, or None when the run has no DWC (not a
    distilled run, a method without DWLD, or ``controller="fixed"``)."""
    from lix.distill.base import hyper_defaults
    from lix.losses.dwld import DWLDHead

    distill = ckpt["config"].get("distill") or {}
    state = (ckpt.get("extra") or {}).get("distiller") or {}
    own = {k[len("dwld."):]: v for k, v in state.items() if k.startswith("dwld.")}
    method = distill.get("method", "")
    try:
        defaults = hyper_defaults(method)
    except Exception:  # not a registered method any more: the head's own defaults
        defaults = {}
    if "controller" not in defaults and not own:
        return None  # no DWLD in this run
    hyper = {**defaults, **(distill.get("hyper") or {})}
    params = set(inspect.signature(DWLDHead.__init__).parameters) - {"self", "n_classes"}
    head = DWLDHead(n_classes, **{k: v for k, v in hyper.items() if k in params})
    if head.controller_kind == "confidence":
        return head.eval()  # parameter-free: nothing to load
    if head.controller is None or not any(k.startswith("controller.") for k in own):
        return None
    try:
        head.load_state_dict(own)
    except RuntimeError as e:
        raise DataError(path, f"the distiller's DWLD state does not fit its hyper-parameters ({e})") from None
    return head.eval()


def dwc_arrays(runs_root: str | Path, shards_root: str | Path, dataset: str, model: str, method: str = "lix",
               seed: int = 0, n_images: int = 3, device: str = "cpu") -> dict | None:
    """What :func:`dwc_maps` draws, for the first ``n_images`` val images of the run
    ``<runs_root>/<dataset>/<model>/<method>/seed<seed>/best.pt``: a dict of lists (one entry
    per image) ``rgb`` (H, W, 3) uint8, ``label`` (H, W), ``confidence`` (H, W) (the student's
    softmax probability of the true class, NaN at ignored pixels), ``mean_weight`` (H, W) (the
    DWC's weight averaged over the non-target classes, NaN at ignored pixels), ``top_class``
    (H, W) uint8 (the non-target class with the largest weight, 255 at ignored pixels), plus
    ``beta``, ``beta_min``, ``beta_max``, ``class_names``. The weights are the trained
    controller's on the student's logits (``DWLDHead.weights``); the teacher (its own run,
    ``<...>/teacher/seed<seed>/best.pt``, else the path the run recorded) is loaded only for
    ``dwc_inputs="teacher_softmax_conf"``. None when the run has no DWC; DataError when the
    checkpoint is missing or unreadable."""
    import torch

    from lix.checkpoint import load_checkpoint

    path = Path(runs_root) / dataset / model / method / f"seed{seed}" / "best.pt"
    ckpt = load_checkpoint(path, required=("model", "config"))
    if not isinstance(ckpt.get("config"), dict) or "n_classes" not in ckpt["config"]:
        raise DataError(path, "carries no run config (not written by lix train)")
    head = _dwld_head(ckpt, path, int(ckpt["config"]["n_classes"]))
    if head is None:
        return None
    items, class_names = _val_items(shards_root, dataset, n_images)
    dev = _device(device)
    net, inputs, config = _load_net(ckpt, path, class_names, dev)
    head.to(dev)
    teacher = None
    if head.controller is not None and head.controller.inputs == "teacher_softmax_conf":
        teacher = _load_teacher(runs_root, dataset, model, seed, config, class_names, dev)
    out = {k: [] for k in ("rgb", "label", "confidence", "mean_weight", "top_class")}
    with torch.no_grad():
        for it in items:
            s = _logits(net, inputs, it, dev)
            t = _logits(*teacher, it, dev) if teacher is not None else torch.zeros_like(s)
            label = it["label"].to(dev).long()[None]
            wts = head.weights(s, t, label)
            mean, top = nontarget_weight_maps(wts, it["label"])
            out["rgb"].append(_rgb(it))
            out["label"].append(it["label"].numpy())
            out["confidence"].append(confidence_map(s, it["label"]))
            out["mean_weight"].append(mean)
            out["top_class"].append(top)
    return out | {"beta": head.beta, "beta_min": head.beta_min, "beta_max": head.beta_max,
                  "class_names": class_names,
                  "dwc_inputs": head.controller.inputs if head.controller is not None else "confidence"}


def dwc_statistics(run_dir: str | Path, shard_dir: str | Path, teacher: str | Path | None = None,
                   device: str = "cpu") -> dict | None:
    """What the weights of a DWLD/LIX run's controller (``best.pt`` of ``run_dir``) do on the
    whole val split of ``shard_dir``, over the non-target logits of the labelled pixels:
    ``w_mean``; ``w_std_class`` (std across a pixel's non-target classes, mean over pixels);
    ``w_std_pixel`` (std over pixels of a pixel's mean weight); ``w_at_bound`` (share of weights
    within 1 % of the range from β_min or β_max); ``class_weight`` (class -> its mean weight where
    it is a non-target class) and ``corr_error`` (Pearson correlation over the classes between
    that mean weight and the student's error 1 − IoU of ``metrics.json``; None when fewer than 3
    classes have both). ``teacher``: the teacher checkpoint, needed only for
    ``dwc_inputs="teacher_softmax_conf"``. None when the run has no varying weights."""
    import torch

    from lix.checkpoint import load_checkpoint
    from lix.data import ShardDataset
    from lix.losses.dwld import BOUND_TOLERANCE

    run_dir = Path(run_dir)
    path = run_dir / "best.pt"
    ckpt = load_checkpoint(path, required=("model", "config"))
    n_classes = int(ckpt["config"]["n_classes"])
    head = _dwld_head(ckpt, path, n_classes)
    if head is None:
        return None
    ds = ShardDataset(shard_dir, "val", augment=None)
    class_names = list(ds.class_names)
    dev = _device(device)
    net, inputs, config = _load_net(ckpt, path, class_names, dev)
    head.to(dev)
    t_net = None
    if head.controller is not None and head.controller.inputs == "teacher_softmax_conf":
        t_path = Path(teacher or (config.get("distill") or {}).get("teacher", ""))
        t_net = _load_net(load_checkpoint(t_path, required=("model", "config")), t_path, class_names, dev)[:2]
    pix_mean, pix_std, at_bound, n_weights = [], [], 0.0, 0.0
    cls_sum, cls_n = torch.zeros(n_classes, dtype=torch.float64), torch.zeros(n_classes, dtype=torch.float64)
    lo, hi = head.beta_min, head.beta_max
    tol = BOUND_TOLERANCE * (hi - lo)
    with torch.no_grad():
        for i in range(len(ds)):
            it = ds[i]
            s = _logits(net, inputs, it, dev)
            t = _logits(*t_net, it, dev) if t_net is not None else torch.zeros_like(s)
            label = it["label"].to(dev).long()[None]
            w = head.weights(s, t, label).double()[0]                         # (C, H, W)
            valid = label[0] != IGNORE_INDEX
            nt = (torch.arange(n_classes, device=dev)[:, None, None] != label[0][None]) & valid[None]
            k = nt.sum(0).clamp_min(1)
            m = (w * nt).sum(0) / k
            sd = (((w - m[None]) ** 2) * nt).sum(0).div(k).sqrt()
            pix_mean.append(m[valid].cpu())
            pix_std.append(sd[valid].cpu())
            at_bound += float((((w <= lo + tol) | (w >= hi - tol)) & nt).sum())
            n_weights += float(nt.sum())
            cls_sum += (w * nt).sum((1, 2)).cpu()
            cls_n += nt.sum((1, 2)).double().cpu()
    pm, ps = torch.cat(pix_mean), torch.cat(pix_std)
    class_weight = {class_names[c]: float(cls_sum[c] / cls_n[c]) for c in range(n_classes) if cls_n[c] > 0}
    corr = None
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        iou = json.loads(metrics_file.read_text()).get("per_class_iou") or {}
        both = [(class_weight[c], 1.0 - float(iou[c])) for c in class_weight
                if isinstance(iou.get(c), (int, float)) and np.isfinite(iou[c])]
        if len(both) >= 3:
            a = np.array(both, dtype=np.float64)
            if a[:, 0].std() > 0 and a[:, 1].std() > 0:
                corr = float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])
    return {"w_mean": float(pm.mean()) if len(pm) else float("nan"),
            "w_std_class": float(ps.mean()) if len(ps) else float("nan"),
            "w_std_pixel": float(pm.std(unbiased=False)) if len(pm) else float("nan"),
            "w_at_bound": at_bound / max(n_weights, 1.0), "class_weight": class_weight, "corr_error": corr,
            "beta_min": lo, "beta_max": hi, "controller": head.controller_kind,
            "dwc_training": head.dwc_training}


def _load_teacher(runs_root, dataset, model, seed, config, class_names, device):
    from lix.checkpoint import load_checkpoint

    candidates = [Path(runs_root) / dataset / model / "teacher" / f"seed{seed}" / "best.pt"]
    recorded = (config.get("distill") or {}).get("teacher")
    if recorded:
        candidates.append(Path(recorded))
    for p in candidates:
        if p.is_file():
            net, inputs, _ = _load_net(load_checkpoint(p, required=("model", "config")), p, class_names, device)
            return net, inputs
    raise DataError(candidates[0], "teacher checkpoint not found (the DWC takes the teacher's softmax)")


def dwc_maps(runs_root: str | Path, shards_root: str | Path, dataset: str, model: str, path: str | Path,
             method: str = "lix", seed: int = 0, n_images: int = 3, device: str = "cpu") -> Path | None:
    """The dynamic weight controller at work, one row per val image (:func:`dwc_arrays`):
    RGB | the student's confidence in the true class (0..1, colour bar) | the mean DWC weight
    over the non-target classes (colour bar over the values shown; the controller's range
    (β_min, β_max) and prior β in the title) | the non-target class with the largest weight,
    in the dataset's class colours (:func:`class_legend` of the classes shown, below). Ignored
    pixels are grey. Returns None
    (writing nothing) when the run has no DWC (``controller="fixed"``, or a method without
    DWLD); DataError when the run's checkpoint is missing."""
    import matplotlib

    from pipeline.preview import class_palette

    d = dwc_arrays(runs_root, shards_root, dataset, model, method, seed, n_images, device)
    if d is None:
        return None
    n = len(d["rgb"])
    h, w = d["rgb"][0].shape[:2]
    panel_w = 3.4
    fig = _figure(4 * panel_w + 0.8, n * (panel_w * h / w + 0.45) + 1.4)
    axes = np.asarray(fig.subplots(n, 4, squeeze=False))
    conf_cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(GREY / 255,) * 3)
    w_cmap = matplotlib.colormaps["magma"].with_extremes(bad=(GREY / 255,) * 3)
    finite = np.concatenate([m[np.isfinite(m)] for m in d["mean_weight"]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (d["beta_min"], d["beta_max"])
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    pal = class_palette(d["class_names"])
    counts = np.zeros(256, np.int64)
    for r in range(n):
        a = axes[r]
        a[0].imshow(d["rgb"][r])
        im = a[1].imshow(np.ma.masked_invalid(d["confidence"][r]), cmap=conf_cmap, vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=a[1], fraction=0.046, pad=0.02)
        im = a[2].imshow(np.ma.masked_invalid(d["mean_weight"][r]), cmap=w_cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=a[2], fraction=0.046, pad=0.02)
        top = d["top_class"][r]
        colours = pal[top].copy()
        colours[top == IGNORE_INDEX] = GREY
        a[3].imshow(colours)
        counts += np.bincount(top.ravel(), minlength=256)
        for ax in a:
            ax.set_xticks([])
            ax.set_yticks([])
    titles = ("RGB", "student p(true class)",
              f"mean non-target DWC weight\nβ ∈ ({d['beta_min']:g}, {d['beta_max']:g}), prior β = {d['beta']:g}",
              "non-target class with the largest weight")
    for ax, t in zip(axes[0], titles):
        ax.set_title(t, fontsize=8)
    fig.suptitle(f"{_title(dataset, model)}: {display_name(method)}'s dynamic weight controller "
                 f"(seed {seed}, grey = ignored)", fontsize=10)
    fig.tight_layout()
    # the legend of the last column: the classes it shows, most frequent first, as class_legend
    # draws it under every label picture
    present = [int(k) for k in np.argsort(-counts[:len(d["class_names"])], kind="stable") if counts[k] > 0]
    if not present:
        return _save(fig, path)
    from pipeline.imageio import write_image

    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    write_image(path, with_legend(picture, [d["class_names"][k] for k in present], pal[present]))
    return Path(path)
