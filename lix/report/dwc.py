"""What the dynamic weight controller of a LIX/DWLD run does: per val image (the maps drawn by
:func:`dwc_maps`) and over the whole val split (:func:`dwc_statistics`)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from lix import layout
from lix.report.names import display_name, legacy_hyper
from lix.report.networks import load_net, load_teacher, logits_of, rgb_of, torch_device, val_items
from lix.report.plot import GREY, figure_title, new_figure, save_png
from pipeline.constants import IGNORE_INDEX
from pipeline.errors import DataError
from pipeline.preview import with_legend


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
    from lix.losses.dwld import DWLDHead

    distill = ckpt["config"].get("distill") or {}
    state = (ckpt.get("extra") or {}).get("distiller") or {}
    own = {k[len("dwld."):]: v for k, v in state.items() if k.startswith("dwld.")}
    hyper = distill.get("resolved_hyper")  # every value the run's distiller used
    if hyper is None:  # a run from before the trainer recorded them: today's defaults + what it asked for
        hyper = legacy_hyper(distill.get("method", "")) | (distill.get("hyper") or {})
    if "controller" not in hyper and not own:
        return None  # no DWLD in this run
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

    path = layout.run_dir(dataset, model, method, seed, runs_root) / "best.pt"
    ckpt = load_checkpoint(path, required=("model", "config"))
    if not isinstance(ckpt.get("config"), dict) or "n_classes" not in ckpt["config"]:
        raise DataError(path, "carries no run config (not written by lix train)")
    head = _dwld_head(ckpt, path, int(ckpt["config"]["n_classes"]))
    if head is None:
        return None
    items, class_names = val_items(shards_root, dataset, n_images)
    dev = torch_device(device)
    net, inputs, config = load_net(ckpt, path, class_names, dev)
    head.to(dev)
    teacher = None
    if head.controller is not None and head.controller.inputs == "teacher_softmax_conf":
        teacher = load_teacher(runs_root, dataset, model, seed, config, class_names, dev)
    out = {k: [] for k in ("rgb", "label", "confidence", "mean_weight", "top_class")}
    with torch.no_grad():
        for it in items:
            s = logits_of(net, inputs, it, dev)
            t = logits_of(*teacher, it, dev) if teacher is not None else torch.zeros_like(s)
            label = it["label"].to(dev).long()[None]
            wts = head.weights(s, t, label)
            mean, top = nontarget_weight_maps(wts, it["label"])
            out["rgb"].append(rgb_of(it))
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
    dev = torch_device(device)
    net, inputs, config = load_net(ckpt, path, class_names, dev)
    head.to(dev)
    t_net = None
    if head.controller is not None and head.controller.inputs == "teacher_softmax_conf":
        t_path = Path(teacher or (config.get("distill") or {}).get("teacher", ""))
        t_net = load_net(load_checkpoint(t_path, required=("model", "config")), t_path, class_names, dev)[:2]
    pix_mean, pix_std, at_bound, n_weights = [], [], 0.0, 0.0
    cls_sum, cls_n = torch.zeros(n_classes, dtype=torch.float64), torch.zeros(n_classes, dtype=torch.float64)
    lo, hi = head.beta_min, head.beta_max
    tol = BOUND_TOLERANCE * (hi - lo)
    with torch.no_grad():
        for i in range(len(ds)):
            it = ds[i]
            s = logits_of(net, inputs, it, dev)
            t = logits_of(*t_net, it, dev) if t_net is not None else torch.zeros_like(s)
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
    fig = new_figure(4 * panel_w + 0.8, n * (panel_w * h / w + 0.45) + 1.4)
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
    fig.suptitle(f"{figure_title(dataset, model)}: {display_name(method)}'s dynamic weight controller "
                 f"(seed {seed}, grey = ignored)", fontsize=10)
    fig.tight_layout()
    # the legend of the last column: the classes it shows, most frequent first, as class_legend
    # draws it under every label picture
    present = [int(k) for k in np.argsort(-counts[:len(d["class_names"])], kind="stable") if counts[k] > 0]
    if not present:
        return save_png(fig, path)
    from pipeline.imageio import write_image

    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    write_image(path, with_legend(picture, [d["class_names"][k] for k in present], pal[present]))
    return Path(path)
