"""The report's pictures of the runs' logs: training curves, the teacher-student CKA over
training (the paper's Fig. 5) and the fixed-β sweep. Each function reads the runs (or the
summary), writes one PNG atomically (:func:`lix.report.plot.save_png`) and returns its path, or
None where the figure does not apply. The numbers behind them: :mod:`lix.report.logs`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from lix.report.logs import list_methods, method_seeds, metric_file, seed_curves
from lix.report.names import DISPLAY, display_name
from lix.report.plot import draw_band, empty_note, epoch_axis, figure_title, new_figure, save_png


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
    fig = new_figure(11.0, 4.2)
    ax_loss, ax_miou = fig.subplots(1, 2)
    drawn = {"loss": False, "miou": False}
    positive = True
    for i, method in enumerate(methods):
        colour, label = f"C{i % 10}", display_name(method)
        loss = seed_curves(runs_root, dataset, model, method, "train/loss")
        if draw_band(ax_loss, loss, colour, label):
            drawn["loss"] = True
            positive &= all(v > 0 for c in loss.values() for v in c.values() if math.isfinite(v))
        drawn["miou"] |= draw_band(ax_miou, seed_curves(runs_root, dataset, model, method, "val/miou"), colour,
                                    label, scale=100.0)
    ax_loss.set_title("train loss")
    ax_loss.set_ylabel("loss (CE + weighted distillation terms)")
    if drawn["loss"] and positive:
        ax_loss.set_yscale("log")
    ax_miou.set_title("val mIoU")
    ax_miou.set_ylabel("mIoU (%)")
    for ax, key in ((ax_loss, "loss"), (ax_miou, "miou")):
        epoch_axis(ax)
        ax.grid(alpha=0.3)
        if drawn[key]:
            ax.legend(fontsize=7)
        else:
            empty_note(ax, "no dvclive logs found")
    fig.suptitle(f"{figure_title(dataset, model)}: training curves (mean over seeds, band = min–max)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _tap_order(taps: Iterable[str]) -> list[str]:
    """The taps in the models' own order (their ``default_taps``), unknown ones last by name."""
    from lix.models.registry import MODELS

    known = [t for name in MODELS for t in getattr(MODELS[name], "default_taps", ())]
    return sorted(set(taps), key=lambda t: (known.index(t) if t in known else len(known), t))


def cka_taps(runs_root: str | Path, dataset: str, model: str, methods: Iterable[str]) -> list[str]:
    """The taps with a ``val/cka/<tap>.tsv`` in any seed of ``methods``, in the families' order."""
    taps = set()
    for method in methods:
        for _k, d in method_seeds(runs_root, dataset, model, method):
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
    fig = new_figure(max(6.4, 2.6 * n), 4.2 + (2.6 if n else 0.0))
    if n:
        grid = fig.add_gridspec(2, n, height_ratios=(1.6, 1.0))
        ax = fig.add_subplot(grid[0, :])
        tap_axes = [fig.add_subplot(grid[1, j]) for j in range(n)]
    else:
        ax, tap_axes = fig.add_subplot(1, 1, 1), []
    drawn = False
    for i, m in enumerate(methods):
        drawn |= draw_band(ax, main[m], f"C{i % 10}", display_name(m))
    epoch_axis(ax)
    ax.set_ylabel("linear CKA (student vs teacher)")
    ax.set_title(f"{figure_title(dataset, model)}: teacher–student feature similarity (mean over taps)", fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        empty_note(ax, "no val/cka/mean logs (only per-tap ones)")
    for tax, tap in zip(tap_axes, taps):
        for i, m in enumerate(methods):
            draw_band(tax, per_tap[tap][m], f"C{i % 10}", display_name(m))
        tax.set_title(tap, fontsize=9)
        epoch_axis(tax, fontsize=8)
        tax.tick_params(labelsize=7)
        tax.grid(alpha=0.3)
    if tap_axes:
        tap_axes[0].set_ylabel("CKA", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def plot_beta_sweep(d: dict, path: str | Path) -> Path:
    """mIoU against the fixed β (mean ± std over seeds, one line per method and model), the DWC's
    mean as a dashed line with its ± std band; PNG, Agg backend, written atomically."""
    rows = d["ablations"]["beta_sweep"]
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colours = iter(f"C{i}" for i in range(100))
    for base in sorted({r["base"] for r in rows}):
        for model in d["models"]:
            pts = [(r["params"]["beta"], r["cells"][model]["metrics"]["miou"]) for r in rows
                   if r["base"] == base and r["params"]["beta"] is not None and model in r["cells"]
                   and r["cells"][model]["metrics"]["miou"]["mean"] is not None]
            ref = next((r["cells"][model]["metrics"]["miou"] for r in rows if r["base"] == base
                        and r["params"]["beta"] is None and model in r["cells"]
                        and r["cells"][model]["metrics"]["miou"]["mean"] is not None), None)
            if not pts and ref is None:
                continue
            colour = next(colours)
            label = f"{DISPLAY.get(base, base)}, {d['model_display'][model]}"
            if pts:
                pts.sort(key=lambda p: p[0])
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] or 0.0 for p in pts],
                            marker="o", capsize=3, color=colour, label=f"{label}, fixed β")
            if ref is not None:
                ax.axhline(ref["mean"], color=colour, linestyle="--", label=f"{label}, DWC")
                if ref["std"]:
                    ax.axhspan(ref["mean"] - ref["std"], ref["mean"] + ref["std"], color=colour, alpha=0.12)
    ax.set_xlabel("β (fixed)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"{d['display']}: fixed β vs the dynamic weight controller")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
