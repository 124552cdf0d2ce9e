"""Every number of the report, from the scanned runs: ``build_summary`` (the content of
summary.json, from which the markdown is rendered) and the cross-dataset evaluations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lix.config import VARIANT_SEP
from lix.report.ablations import ablation_rows
from lix.report.names import (
    DATASET_DISPLAY,
    display_dataset,
    display_model,
    display_name,
    kind_of,
    method_order,
    parse_method,
)
from lix.report.scan import LAYOUT, Run, read_run, seed_dirs, subdirs
from lix.report.stats import aggregate, mark_best, paired_difference, teacher_vs_student

PAPER_NOTE = ("The paper's own figures (its Tables I–III) are not shown: this report was made with `--no-paper` "
              "(by default `lix report` quotes the shipped lix/report/paper_tables.json beside these tables, with the "
              "paper's setting stated, the share of the gap each method closes and the rank agreement).")


def build_summary(runs: list[Run], overhead: dict | None = None, runs_root: str = "") -> dict:
    """Every number of the report (the layout it reads: :mod:`lix.report`), from the scanned runs."""
    notes = sorted({n for r in runs for n in r.notes})
    problems = []
    datasets = {}
    ds_names = sorted({r.dataset for r in runs}, key=lambda d: (list(DATASET_DISPLAY).index(d)
                                                                 if d in DATASET_DISPLAY else 99, d))
    for ds in ds_names:
        ds_runs = [r for r in runs if r.dataset == ds]
        models = sorted({r.model for r in ds_runs})
        groups: dict[tuple[str, str], list[Run]] = {}
        for r in ds_runs:
            groups.setdefault((r.model, r.method), []).append(r)
        main_methods = sorted({m for (_, m) in groups if VARIANT_SEP not in m}, key=method_order)
        abl_methods = sorted({m for (_, m) in groups if VARIANT_SEP in m})

        # main table
        main = []
        expected = {model: {r.seed for (mo, me), rs in groups.items() if mo == model and me != "teacher"
                            and VARIANT_SEP not in me for r in rs} for model in models}
        for method in main_methods:
            cells = {}
            for model in models:
                rs = groups.get((model, method), [])
                cells[model] = aggregate(rs, () if method == "teacher" else expected[model])
            main.append({"method": method, "display": display_name(method), "kind": kind_of(method),
                         "cells": cells})
        for model in models:
            mark_best([row["cells"][model] for row in main if row["method"] != "teacher"])
        problems += _problems(ds, main)

        teacher_x = {}
        for model in models:
            xs = {r.metrics.get("x") for r in groups.get((model, "teacher"), []) if r.status == "ok"}
            xs.discard(None)
            if xs:
                teacher_x[model] = ", ".join(sorted(map(str, xs)))

        by_method = {row["method"]: row for row in main}
        per_class, paired, lix_best = {}, {}, {}
        premise = {model: teacher_vs_student(by_method, model) for model in models}
        for model in models:
            cell = {m: by_method[m]["cells"][model] for m in ("student", "lix", "teacher") if m in by_method}
            if any(c["n_ok"] for c in cell.values()):
                per_class[model] = _per_class(cell)
            paired[model] = _paired(main, model)
            lix_best[model] = _lix_best(main, model)

        abl, checked, abl_notes = ablation_rows(ds, models, groups, by_method, abl_methods)
        notes += abl_notes
        problems += _problems(ds, checked)
        datasets[ds] = {"display": display_dataset(ds), "models": models,
                        "model_display": {m: display_model(m) for m in models}, "teacher_x": teacher_x,
                        "main": main, "per_class": per_class, "paired": paired, "lix_best": lix_best,
                        "premise": premise,
                        "ablations": {k: v for k, v in abl.items() if v}}
    counts = {"run_dirs": len(runs), "finished": sum(r.status == "ok" for r in runs),
              "failed": sum(r.status == "failed" for r in runs), "missing": sum(r.status == "missing" for r in runs)}
    return {"schema": 1, "runs_root": str(runs_root), "layout": LAYOUT,
            "units": "percent (0-100); mean over the finished seeds; std: sample std (ddof=1), null with one seed",
            "counts": counts, "datasets": datasets, "overhead": overhead, "problems": problems,
            "setup": [setup_row(r) for r in sorted(runs, key=_setup_order)], "depth_sources": {},
            "notes": sorted(set(notes)), "paper_note": PAPER_NOTE}


def _setup_order(run: Run) -> tuple:
    """Sort key of the setup table: dataset, model, main runs before ablations, row order, seed."""
    ds = list(DATASET_DISPLAY).index(run.dataset) if run.dataset in DATASET_DISPLAY else 99
    return (ds, run.dataset, run.model, VARIANT_SEP in run.method, method_order(parse_method(run.method)[0]),
            run.method, run.seed)


def setup_row(run: Run) -> dict:
    """What one run was: its schedule, data and code, from config.json, summary.json and
    metrics.json; None where the run did not record it (older runs: no provenance, no samples)."""
    train, summ = run.train, run.summary or {}
    prov = summ.get("provenance") if isinstance(summ.get("provenance"), dict) else {}
    samples = summ.get("samples") if isinstance(summ.get("samples"), dict) else {}
    val = samples.get("val", (run.metrics or {}).get("val_samples"))
    return {"run": run.name, "dataset": run.dataset, "model": run.model, "method": run.method, "seed": run.seed,
            "role": (run.config or {}).get("role") or ("teacher" if run.method == "teacher" else "student"),
            "status": run.status, "epochs_run": summ.get("epochs"), "epochs_configured": train.get("epochs"),
            "stopped": summ.get("stopped"), "best_epoch": summ.get("best_epoch"), "crop": train.get("crop"),
            "crop_known": "crop" in train, "batch_size": train.get("batch_size"),
            "world_size": (run.config or {}).get("world_size"), "train_images": samples.get("train"),
            "val_images": val, "commit": prov.get("commit"), "dirty": prov.get("dirty"),
            "run_digest": prov.get("run_digest"), "code_digest": prov.get("code_digest"), "host": prov.get("host"),
            "torch": prov.get("torch"), "python": prov.get("python")}


def _problems(ds: str, rows: list[dict]) -> list[dict]:
    """Failed seeds (with their error), unfinished seeds (a directory without metrics.json or
    failed.json), seeds without a directory, and methods without any directory for a model."""
    out = []
    for row in rows:
        for model, c in row["cells"].items():
            where = f"{ds}/{model}/{row['method']}"
            if c["dirs"] == 0:
                out.append({"run": where, "status": "not started", "error": None,
                            "detail": "no run directory for this model"})
                continue
            for s in c["seeds"]["failed"]:
                out.append({"run": f"{where}/seed{s}", "status": "failed", "error": c["errors"].get(str(s)),
                            "detail": None})
            for s in c["seeds"]["missing"]:
                out.append({"run": f"{where}/seed{s}", "status": "missing", "error": None,
                            "detail": "unfinished: no metrics.json or failed.json" if s in c["unfinished"]
                            else "no seed directory; other methods have this seed"})
    return out


def _per_class(cells: dict[str, dict]) -> dict:
    """Per-class IoU means of the student, LIX and the teacher and LIX − student, per class."""
    classes: list[str] = []
    for m in ("teacher", "student", "lix"):
        for cls in (cells[m]["per_class_iou"] if m in cells else {}):
            if cls not in classes:
                classes.append(cls)
    result = {"classes": classes, "n": {m: c["n_ok"] for m, c in cells.items()}}
    for m in ("student", "lix", "teacher"):
        pc = cells[m]["per_class_iou"] if m in cells else {}
        result[m] = {cls: pc[cls]["mean"] if cls in pc else None for cls in classes}
    result["lix_minus_student"] = {cls: (result["lix"][cls] - result["student"][cls]
                                         if result["lix"][cls] is not None and result["student"][cls] is not None
                                         else None) for cls in classes}
    return result


def _best_baseline(main: list[dict], model: str) -> dict | None:
    """The logit or feature baseline with the best mean mIoU for ``model``; None without one."""
    cands = [r for r in main if r["kind"] in ("logit", "feature") and r["cells"][model]["metrics"]["miou"]["mean"]
             is not None]
    return max(cands, key=lambda r: r["cells"][model]["metrics"]["miou"]["mean"]) if cands else None


def _paired(main: list[dict], model: str) -> dict:
    """LIX against the student and against the best baseline, paired over seeds."""
    by = {r["method"]: r for r in main}
    result: dict[str, Any] = {"lix_vs_student": None, "lix_vs_best_baseline": None, "best_baseline": None}
    if "lix" not in by:
        return result
    lix = by["lix"]["cells"][model]
    if "student" in by:
        result["lix_vs_student"] = paired_difference(lix, by["student"]["cells"][model])
    best = _best_baseline(main, model)
    if best is not None:
        result["best_baseline"] = best["method"]
        result["lix_vs_best_baseline"] = paired_difference(lix, best["cells"][model])
    return result


def _lix_best(main: list[dict], model: str) -> dict:
    """Whether LIX has the best mean mIoU among the student-side methods of ``model``."""
    ranked = [(r["method"], r["cells"][model]["metrics"]["miou"]["mean"]) for r in main
              if r["method"] != "teacher" and r["cells"][model]["metrics"]["miou"]["mean"] is not None]
    lix = next((v for m, v in ranked if m == "lix"), None)
    others = [(m, v) for m, v in ranked if m != "lix"]
    best_other = max(others, key=lambda mv: mv[1]) if others else None
    return {"lix_miou": lix, "n_methods": len(ranked),
            "best_other": best_other[0] if best_other else None,
            "best_other_miou": best_other[1] if best_other else None,
            "lix_is_best": None if lix is None else (best_other is None or lix >= best_other[1])}


def scan_cross(cross_root: str | Path | None) -> dict:
    """The cross-dataset evaluations under ``<cross_root>/<source>-to-<target>/<model>/<method>/
    seed<k>/metrics.json`` (lix cross-evaluate) as {pair: {"source", "target", "common_classes",
    "rows": [{"method", "display", "model", "cells": aggregate(...)}]}}; {} without any."""
    out: dict = {}
    root = Path(cross_root) if cross_root else None
    if root is None or not root.is_dir():
        return out
    for pair_dir in subdirs(root):
        src, sep, tgt = pair_dir.name.partition("-to-")
        if not sep:
            continue
        rows, common = [], None
        for model_dir in subdirs(pair_dir):
            for method_dir in sorted(subdirs(model_dir), key=lambda p: method_order(p.name)):
                runs = []
                for seed, seed_dir in seed_dirs(method_dir):
                    run = read_run(seed_dir, tgt, model_dir.name, method_dir.name, seed)
                    runs.append(run)
                    if run.status == "ok" and common is None:
                        common = list(run.metrics.get("common_classes") or [])
                if runs:
                    rows.append({"method": method_dir.name, "display": display_name(method_dir.name),
                                 "model": model_dir.name, "cells": aggregate(runs)})
        if rows:
            for model in {r["model"] for r in rows}:
                mark_best([r["cells"] for r in rows if r["model"] == model], ("miou", "mfsc"))
            out[pair_dir.name] = {"source": src, "target": tgt, "common_classes": common or [], "rows": rows}
    return out
