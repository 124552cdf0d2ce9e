"""The report's "Protocol" section (how the numbers were made: checkpoint selection, the
teacher-vs-student premise, data, schedule and code per dataset) and its "Setup of each run" table."""

from __future__ import annotations

from lix.report.cells import LAST_LABEL, SELECTION_GAP_PP, dash, md_table
from lix.report.depth import PAPER_DEPTH, fmt_depth_source
from lix.report.names import ROLES, display_dataset, display_model, display_name

# The sentence a reader needs before any number: which checkpoint, scored on which split.


PROTOCOL_SELECTION = (
    "**Checkpoint selection: the best epoch on val, scored on that same val split.** Each run is validated "
    "during training and keeps the checkpoint of the epoch with the best val mIoU (`best.pt`); every table "
    "scores that checkpoint on the same val split that chose it, and there is no held-out test split. The "
    "figures are therefore optimistic estimates: the noisier the val curve and the smaller the val split, the "
    "more the choice of epoch adds. The paper does the same as far as its text says: it splits each dataset "
    "into a training and a validation set only (vKITTI2 5:2, KITTI 3:1, nuImages 7:3) and trains for up to "
    "500 epochs with early stopping (its Sec. IV-A and IV-B). "
    f"Beside each mIoU, `{LAST_LABEL}` is the val mIoU of the run's last epoch, which no choice touched; "
    f"where the chosen epoch beats it by {SELECTION_GAP_PP:g} pp or more, a ⚠ line under the table says so.")


def protocol_section(summary: dict) -> list[str]:
    """How the numbers were made: checkpoint selection, the teacher-vs-student premise, the data
    and schedule per dataset, the code; the per-run detail is the setup table further down."""
    L = ["## Protocol", "", f"* {PROTOCOL_SELECTION}", f"* {_premise_line(summary)}"]
    rows = summary.get("setup") or []
    for ds, d in summary["datasets"].items():
        mine = [r for r in rows if r["dataset"] == ds]
        L.append(f"* **{d['display']}**: depth source of X {_depth_phrase(ds, summary.get('depth_sources'))}; "
                 f"epochs configured {_distinct(mine, _fmt_epochs_configured)}; crop {_distinct(mine, _fmt_crop)}; "
                 f"batch {_distinct(mine, _fmt_batch)}; images (train / val) {_distinct(mine, _fmt_images)}.")
    torch, python = (_distinct(rows, lambda r, k=k: dash(r[k])) for k in ("torch", "python"))
    L.append(f"* **Code**: commit {_distinct(rows, _fmt_commit)}; torch {torch}; python {python}. Per run (epochs "
             "run, stop reason, best epoch, commit, run digest): [Setup of each run](#setup-of-each-run).")
    return L + [""]


def _premise_line(summary: dict) -> str:
    """The protocol's line on the teacher-vs-student premise, per dataset and model."""
    holds, fails, unchecked = [], [], []
    for d in summary["datasets"].values():
        for model in d["models"]:
            where = f"{d['display']}, {d['model_display'][model]}"
            p = (d.get("premise") or {}).get(model)
            if p is None:
                unchecked.append(where)
            elif p["holds"]:
                holds.append(where)
            else:
                fails.append(f"{where} (teacher {p['teacher']:.2f} % vs student {p['student']:.2f} %)")
    parts = [f"**does not hold** for {'; '.join(fails)} ⚠" if fails else "",
             f"holds for {'; '.join(holds)}" if holds else "",
             f"not checked for {'; '.join(unchecked)} (no seed finished by both)" if unchecked else ""]
    return ("**The distillation premise**, a teacher (RGB + X) at least as good as its plain RGB student "
            "(mean mIoU over the seeds both finished): " + "; ".join(p for p in parts if p) + ".")


def _depth_phrase(ds: str, sources: dict | None) -> str:
    """The depth source of ``ds``'s X as read from its shards, with the paper's where they differ."""
    counts = (sources or {}).get(ds)
    if not counts:
        return "— (not known: the report reads it from the shards, `--shards`)"
    text = fmt_depth_source(counts)
    paper = PAPER_DEPTH.get(ds)
    if paper is not None and set(counts) != {paper[0]}:
        text += f" (the paper: {paper[1]})"
    return text


def _distinct(rows: list[dict], fmt) -> str:
    """The distinct formatted values over ``rows``: one value alone, else each with its run count."""
    counts: dict[str, int] = {}
    for r in rows:
        v = fmt(r)
        counts[v] = counts.get(v, 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), "—")
    ranked = sorted(counts.items(), key=lambda vn: (-vn[1], vn[0]))
    return ", ".join(f"{v} ({n} run{'s' * (n != 1)})" for v, n in ranked)


STOP_REASON = {"max_epochs": "max epochs", "early_stopping": "early stopping"}


def _fmt_epochs_configured(r: dict) -> str:
    return dash(r["epochs_configured"])


def _fmt_crop(r: dict) -> str:
    crop = r["crop"]
    if not r["crop_known"]:
        return "—"
    if crop is None:
        return "full image"
    return "×".join(map(str, crop)) if isinstance(crop, (list, tuple)) else str(crop)


def _fmt_batch(r: dict) -> str:
    ws = r["world_size"]
    return dash(r["batch_size"]) + (f" × {ws} processes" if isinstance(ws, int) and ws > 1 else "")


def _fmt_images(r: dict) -> str:
    return f"{dash(r['train_images'])} / {dash(r['val_images'])}"


def _fmt_commit(r: dict) -> str:
    if not r["commit"]:
        return "—"
    return str(r["commit"])[:10] + (" (dirty)" if r["dirty"] else "")


def setup_section(summary: dict) -> list[str]:
    """One row per run directory: what it ran and with which code (— where the run did not
    record it: runs older than summary.json's provenance and samples)."""
    rows = []
    for r in summary.get("setup") or []:
        rows.append([display_dataset(r["dataset"]), display_model(r["model"]),
                     r["role"] if r["method"] in ROLES else f"{r['role']}: {display_name(r['method'])}",
                     str(r["seed"]), r["status"], f"{dash(r['epochs_run'])} / {dash(r['epochs_configured'])}",
                     STOP_REASON.get(r["stopped"], dash(r["stopped"])), dash(r["best_epoch"]), _fmt_crop(r),
                     _fmt_batch(r), _fmt_images(r), fmt_depth_source((summary.get("depth_sources") or {})
                                                                     .get(r["dataset"])),
                     f"`{_fmt_commit(r)}`" if r["commit"] else "—",
                     f"`{str(r['run_digest'])[:12]}`" if r["run_digest"] else "—"])
    if not rows:
        return []
    head = ["dataset", "model", "role / method", "seed", "status", "epochs run / configured", "stop reason",
            "best epoch", "crop", "batch", "images train / val", "depth source", "commit", "run digest"]
    return ["## Setup of each run", "",
            "From each run's config.json (the resolved training config), summary.json (schedule, provenance: "
            "the commit, with `(dirty)` when the tree had uncommitted changes, and the sha256 of the resolved run "
            "config, shortened) and metrics.json; the depth source from the dataset's shards. —: not recorded.", "",
            *md_table(head, rows), ""]
