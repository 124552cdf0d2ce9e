"""``lix report``: whatever runs of the experiment matrix exist, as a report in the paper's layout.

Input layout (the contract the experiment matrix writes)
--------------------------------------------------------
::

    <runs_root>/<dataset>/<model>/<method>/seed<k>/metrics.json   a finished run
    <runs_root>/<dataset>/<model>/<method>/seed<k>/failed.json    a failed run: {"error": "..."}
    <runs_root>/<dataset>/<model>/<method>/seed<k>/config.json    optional: {"distill": {"hyper": {...}}}
    <runs_root>/overhead.json                                     optional: {model: {method:
                                                                  {"time_ratio": float, "memory_ratio": float}}}

* ``metrics.json`` is the output of ``lix.train.evaluate_checkpoint``: ``miou``, ``mfsc``,
  ``fwiou``, ``fwfsc``, ``pixel_acc`` as fractions in [0, 1], ``per_class_iou`` /
  ``per_class_f1`` (class name -> value, null where undefined), ``dataset``, ``role``, ``model``,
  ``x`` (the teacher's geometry), ``matrix``.
* ``<method>`` is ``teacher``, ``student``, a registered distillation method (``lix distill
  --list``), or an ablation of one: ``<method>~<key>=<value>[,<key>=<value>...]`` (e.g.
  ``lix~beta=4``, ``dwld~dwc_inputs=softmax``, ``arfd~kernel=gaussian,consistency=cosine``,
  ``lix~controller=fixed,beta=2``). The directory name carries the ablation; the run's
  hyper-parameters are the method's defaults, updated by ``config.json``'s ``distill.hyper``
  (the overrides the run was started with) and then by the name's pairs.
* ``seed<k>``: k a non-negative integer. A seed directory with ``metrics.json`` is finished
  (it wins over a ``failed.json`` left by an earlier attempt); with only ``failed.json`` it
  failed; with neither it is missing (not run, or not finished). An unreadable ``metrics.json``
  counts as failed.
* The seeds of a main-table cell are the union of the ``seed<k>`` directories over the
  student-side methods (everything but the teacher, no ablations) of that dataset and model, so a
  seed that one method lacks entirely counts as missing for it; the teacher and ablation cells
  count their own seed directories.
* ``overhead.json`` is benchmarks/distill_step.py's ratios of a distillation step to the plain
  student step (time and peak memory), per model and method.

Output
------
``<out_dir>/README.md`` (markdown), ``<out_dir>/summary.json`` (the same numbers, machine-readable:
percent, means over the finished seeds, sample standard deviations (ddof=1; null with one seed),
per-seed values) and ``<out_dir>/beta_sweep_<dataset>.png`` where fixed-β ablations exist. The
markdown is rendered from the summary alone (``render_markdown``). Missing numbers are never
written as 0: a cell with no finished seed reads ``failed (k of n)`` when k of its n seeds failed,
else ``–``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lix.config import VARIANT_SEP
from lix.paper_figures import METRICS, SHIPPED, compare_with_paper, load_paper_figures  # METRICS: column order
from pipeline.errors import DataError

LAYOUT = "<runs_root>/<dataset>/<model>/<method>/seed<k>/metrics.json"
ALL_METRICS = (*METRICS, "pixel_acc")
METRIC_LABEL = {"mfsc": "mFsc", "fwfsc": "fwFsc", "miou": "mIoU", "fwiou": "fwIoU", "pixel_acc": "pixel acc",
                "n": "n"}
DISPLAY = {  # the paper's names, in the paper's row order
    "teacher": "Teacher (RGB + X)", "student": "Student (RGB)",
    "kd": "KD", "cwkd": "CWKD", "dkd": "DKD", "dist": "DIST", "wsld": "WSLD",
    "at": "AT", "fitnet": "FitNet", "ft": "FT", "nst": "NST", "rkd": "RKD", "sp": "SP", "vid": "VID",
    "maskd": "MasKD", "diffkd": "DiffKD", "afdcd": "Af-DCD", "pad": "PAD", "intra_kd": "IntRA-KD",
    "dwld": "DWLD", "arfd": "ARFD", "lix": "LIX",
}
KIND_ORDER = ("—", "logit", "feature", "ours", "other")
DATASET_DISPLAY = {"vkitti2": "vKITTI2", "kitti": "KITTI", "nuimages": "nuImages"}
MODEL_DISPLAY = {"mfnet": "MFNet", "sne_roadseg": "SNE-RoadSeg"}
ROLES = ("teacher", "student")
# Known value orders for the ablation axes (lix/losses/dwld.py, arfd.py, cka.py); others sort after.
AXIS_ORDER = {"dwc_inputs": ("softmax", "softmax_conf", "teacher_softmax_conf"),
              "kernel": ("laplace", "gaussian", "linear", "none"),
              "consistency": ("cka", "cosine", "euclidean", "pearson")}
PAPER_NOTE = ("The paper's own figures (its Tables I–III) are not shown: this report was made with `--no-paper` "
              "(by default `lix report` quotes the shipped lix/paper_tables.json beside these tables, with the "
              "paper's setting stated, the share of the gap each method closes and the rank agreement).")
_SEED = re.compile(r"^seed(\d+)$")


# ----------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class Run:
    """One ``seed<k>`` directory."""

    dataset: str
    model: str
    method: str  # the directory name, ablation included
    seed: int
    status: str  # "ok" | "failed" | "missing"
    metrics: dict | None = None
    error: str | None = None
    hyper: dict | None = None  # config.json's distill.hyper
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}/{self.method}/seed{self.seed}"


def parse_method(name: str) -> tuple[str, dict[str, str]]:
    """``"lix~controller=fixed,beta=2"`` -> ``("lix", {"controller": "fixed", "beta": "2"})``;
    a name without ``~`` has no pairs. Raises ValueError on a malformed name
    (lix.config.parse_variant: the one parser the CLI, the sweep and the report share)."""
    from lix.config import parse_variant

    base, pairs = parse_variant(name)
    if not pairs and VARIANT_SEP in name:
        raise ValueError(name)
    return base, pairs


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(seed_dir: Path, dataset: str, model: str, method: str, seed: int) -> Run:
    """The state of one seed directory (see the module docstring)."""
    notes: list[str] = []
    hyper = None
    cfg_path = seed_dir / "config.json"
    if cfg_path.is_file():
        try:
            h = (_read_json(cfg_path).get("distill") or {}).get("hyper")
            hyper = dict(h) if isinstance(h, dict) else None
        except (OSError, ValueError, AttributeError) as e:
            notes.append(f"{cfg_path}: unreadable ({e}); ignored")
    kw = dict(dataset=dataset, model=model, method=method, seed=seed, hyper=hyper)
    m_path, f_path = seed_dir / "metrics.json", seed_dir / "failed.json"
    if m_path.is_file():
        try:
            metrics = _read_json(m_path)
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            return Run(status="failed", error=f"metrics.json unreadable: {e}", notes=tuple(notes), **kw)
        got = metrics.get("dataset")
        if got is not None and got != dataset:
            notes.append(f"{m_path}: says dataset {got!r}, its directory {dataset!r}")
        got = metrics.get("model")
        if got is not None and not model.startswith(str(got)):
            notes.append(f"{m_path}: says model {got!r}, its directory {model!r}")
        return Run(status="ok", metrics=metrics, notes=tuple(notes), **kw)
    if f_path.is_file():
        try:
            data = _read_json(f_path)
            error = str(data.get("error", data)) if isinstance(data, dict) else str(data)
        except (OSError, ValueError) as e:
            error = f"failed.json unreadable: {e}"
        return Run(status="failed", error=error, notes=tuple(notes), **kw)
    return Run(status="missing", notes=tuple(notes), **kw)


def scan_runs(runs_root: str | Path) -> list[Run]:
    """Every ``<dataset>/<model>/<method>/seed<k>`` directory under ``runs_root``, sorted.

    Raises DataError (naming the path) when ``runs_root`` is not a directory, holds no seed
    directory, or a method directory's ablation name is malformed."""
    root = Path(runs_root)
    if not root.is_dir():
        raise DataError(root, f"no such runs directory (expected {LAYOUT})")
    runs = []
    for ds in _subdirs(root):
        for model in _subdirs(ds):
            for method in _subdirs(model):
                try:
                    parse_method(method.name)
                except ValueError:
                    raise DataError(method, "an ablation directory is named <method>~<key>=<value>[,<key>=<value>...]"
                                    ) from None
                for sd in _subdirs(method):
                    m = _SEED.match(sd.name)
                    if m:
                        runs.append(read_run(sd, ds.name, model.name, method.name, int(m.group(1))))
    if not runs:
        raise DataError(root, f"no run directories found (expected {LAYOUT})")
    return sorted(runs, key=lambda r: (r.dataset, r.model, r.method, r.seed))


def _subdirs(p: Path) -> list[Path]:
    return sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def read_overhead(runs_root: str | Path, path: str | Path | None = None) -> dict | None:
    """``path`` (default ``<runs_root>/overhead.json``; benchmarks/distill_step.py --json writes
    it) as {model: {method: {"time_ratio", "memory_ratio"}}}, or None when absent. A top-level
    ``"machine"`` string (where it was measured) is kept under the key ``"machine"``."""
    path = Path(path) if path is not None else Path(runs_root) / "overhead.json"
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable: {e}") from None
    machine = data.pop("machine", None) if isinstance(data, dict) and isinstance(data.get("machine"), str) else None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(path, 'expected {model: {method: {"time_ratio": float, "memory_ratio": float}}}')
    result = {}
    for model, methods in data.items():
        result[model] = {}
        for method, r in methods.items():
            r = r if isinstance(r, dict) else {}
            result[model][method] = {k: _finite(r.get(k)) for k in ("time_ratio", "memory_ratio")}
    if machine:
        result["machine"] = machine
    return result


# ----------------------------------------------------------------------------- registry
@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """Registered distillation methods: name -> {"kind", "hyper" (defaults)} (lix.distill)."""
    from lix.distill import method_table

    return {r["name"]: {"kind": r["kind"], "hyper": dict(r["hyper"])} for r in method_table()}


def kind_of(method: str) -> str:
    if method in ROLES:
        return "—"
    row = registry().get(method)
    return row["kind"] if row else "other"


def display_name(method: str) -> str:
    try:
        base, pairs = parse_method(method)
    except ValueError:
        return method
    name = DISPLAY.get(base, base)
    return name if not pairs else f"{name} ({', '.join(f'{k}={v}' for k, v in pairs.items())})"


def display_model(model: str) -> str:
    for key, nice in MODEL_DISPLAY.items():
        if model == key or model.startswith(key + "-") or model.startswith(key + "_"):
            return nice + model[len(key):].replace("_", "-")
    return model


def display_dataset(ds: str) -> str:
    return DATASET_DISPLAY.get(ds, ds)


def _method_order(method: str) -> tuple:
    order = list(DISPLAY)
    return (KIND_ORDER.index(kind_of(method)), order.index(method) if method in order else len(order), method)


# ----------------------------------------------------------------------------- statistics
def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values; None where undefined."""
    vals = [v for v in values if _finite(v) is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(runs: list[Run], seeds: Iterable[int] = ()) -> dict:
    """One table cell from the runs of one (dataset, model, method): the seeds expected are the
    runs' seeds plus ``seeds``; metrics in percent over the finished seeds."""
    by_seed = {r.seed: r for r in runs}
    expected = sorted(set(by_seed) | set(seeds))
    ok = [s for s in expected if s in by_seed and by_seed[s].status == "ok"]
    failed = [s for s in expected if s in by_seed and by_seed[s].status == "failed"]
    missing = [s for s in expected if s not in by_seed or by_seed[s].status == "missing"]
    metrics = {}
    for m in ALL_METRICS:
        values = {}
        for s in ok:
            v = _finite(by_seed[s].metrics.get(m))
            if v is not None:
                values[str(s)] = 100.0 * v
        mean, std = mean_std(values.values())
        metrics[m] = {"mean": mean, "std": std, "n": len(values), "values": values}
    per_class = {}
    for s in ok:
        pc = by_seed[s].metrics.get("per_class_iou")
        if isinstance(pc, dict):
            for cls, v in pc.items():
                per_class.setdefault(str(cls), [])
                if _finite(v) is not None:
                    per_class[str(cls)].append(100.0 * float(v))
    status = "ok" if ok else "failed" if failed else "missing"
    return {"status": status, "n": len(expected), "n_ok": len(ok), "n_failed": len(failed),
            "n_missing": len(missing), "dirs": len(by_seed),
            "seeds": {"ok": ok, "failed": failed, "missing": missing},
            "unfinished": [s for s in missing if s in by_seed],
            "errors": {str(s): by_seed[s].error for s in failed},
            "metrics": metrics,
            "per_class_iou": {c: {"mean": mean_std(v)[0], "n": len(v)} for c, v in per_class.items()},
            "bold": []}


def mark_best(cells: list[dict | None], metrics: Iterable[str] = METRICS, digits: int = 2) -> None:
    """Add each metric to ``cell["bold"]`` for the cells whose mean, at the printed precision,
    is the highest among ``cells`` (ties are all marked; nothing when fewer than two have one)."""
    for m in metrics:
        vals = [(c, round(c["metrics"][m]["mean"], digits)) for c in cells
                if c is not None and c["metrics"][m]["mean"] is not None]
        if len(vals) < 2:
            continue
        best = max(v for _, v in vals)
        for c, v in vals:
            if v == best and m not in c["bold"]:
                c["bold"].append(m)


def paired_difference(a: dict, b: dict, metric: str = "miou") -> dict:
    """Seed-paired comparison of cell ``a`` against cell ``b``: per seed finished in both,
    a − b in percentage points; the mean and sample std of the differences and how many are > 0."""
    va, vb = a["metrics"][metric]["values"], b["metrics"][metric]["values"]
    seeds = sorted((s for s in va if s in vb), key=int)
    diffs = {s: va[s] - vb[s] for s in seeds}
    mean, std = mean_std(diffs.values())
    return {"seeds": [int(s) for s in seeds], "diffs": diffs, "mean": mean, "std": std,
            "agree": sum(d > 0 for d in diffs.values()), "n": len(diffs)}


# ----------------------------------------------------------------------------- summary
def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def effective_hyper(method: str, runs: list[Run]) -> dict:
    """The method's defaults, updated by the first config.json's distill.hyper, then by the
    directory name's pairs."""
    base, pairs = parse_method(method)
    h = dict(registry().get(base, {}).get("hyper", {}))
    for r in runs:
        if r.hyper is not None:
            h.update(r.hyper)
            break
    h.update(pairs)
    return h


def _axis_key(axis: str, value: Any) -> tuple:
    known = AXIS_ORDER.get(axis, ())
    v = str(value)
    try:
        num = float(v)
    except ValueError:
        num = math.inf
    return (known.index(v) if v in known else len(known), num, v)


def _family(base: str, pairs: dict[str, str], hyper: dict) -> str:
    keys = set(pairs)
    if base in ("dwld", "lix") and keys == {"dwc_inputs"}:
        return "dwc_inputs"
    if base in ("arfd", "lix") and keys and keys <= {"kernel", "consistency"}:
        return "kernel_consistency"
    if base in ("dwld", "lix") and "beta" in keys and keys <= {"beta", "controller"} \
            and str(hyper.get("controller")) == "fixed":
        try:
            float(pairs["beta"])
            return "beta_sweep"
        except ValueError:
            pass
    return "other"


def build_summary(runs: list[Run], overhead: dict | None = None, runs_root: str = "") -> dict:
    """Every number of the report (see the module docstring), from the scanned runs."""
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
        main_methods = sorted({m for (_, m) in groups if VARIANT_SEP not in m}, key=_method_order)
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
        for model in models:
            cell = {m: by_method[m]["cells"][model] for m in ("student", "lix", "teacher") if m in by_method}
            if any(c["n_ok"] for c in cell.values()):
                per_class[model] = _per_class(cell)
            paired[model] = _paired(main, model)
            lix_best[model] = _lix_best(main, model)

        # ablations
        abl: dict[str, list[dict]] = {"dwc_inputs": [], "kernel_consistency": [], "beta_sweep": [], "other": []}
        for method in abl_methods:
            base, pairs = parse_method(method)
            cells = {}
            hyper = {}
            for model in models:
                rs = groups.get((model, method))
                if rs:
                    cells[model] = aggregate(rs)
                    hyper = hyper or effective_hyper(method, rs)
                    notes += _hyper_notes(ds, model, method, pairs, rs)
            fam = _family(base, pairs, hyper)
            params = {k: hyper.get(k) for k in _FAMILY_AXES.get(fam, tuple(pairs))}
            if fam == "beta_sweep":
                params = {"controller": "fixed", "beta": float(pairs["beta"])}
            abl[fam].append({"method": method, "base": base, "display": display_name(method),
                             "params": _jsonable(params), "source": "ablation", "cells": cells})
            problems += _problems(ds, [{"method": method, "cells": cells}])
        _add_references(abl, by_method, groups, models)
        for fam, rows in abl.items():
            if fam == "kernel_consistency":  # the paper's Table V is mFsc
                for base in sorted({r["base"] for r in rows}):
                    for model in models:
                        mark_best([r["cells"].get(model) for r in rows if r["base"] == base], ("mfsc",))
            else:
                for model in models:
                    mark_best([r["cells"].get(model) for r in rows])
            rows.sort(key=lambda r: _row_key(fam, r))
        datasets[ds] = {"display": display_dataset(ds), "models": models,
                        "model_display": {m: display_model(m) for m in models}, "teacher_x": teacher_x,
                        "main": main, "per_class": per_class, "paired": paired, "lix_best": lix_best,
                        "ablations": {k: v for k, v in abl.items() if v}}
    counts = {"run_dirs": len(runs), "finished": sum(r.status == "ok" for r in runs),
              "failed": sum(r.status == "failed" for r in runs), "missing": sum(r.status == "missing" for r in runs)}
    return {"schema": 1, "runs_root": str(runs_root), "layout": LAYOUT,
            "units": "percent (0-100); mean over the finished seeds; std: sample std (ddof=1), null with one seed",
            "counts": counts, "datasets": datasets, "overhead": overhead, "problems": problems,
            "notes": sorted(set(notes)), "paper_note": PAPER_NOTE}


_FAMILY_AXES = {"dwc_inputs": ("dwc_inputs",), "kernel_consistency": ("kernel", "consistency")}


def _jsonable(d: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in d.items()}


def _row_key(fam: str, row: dict) -> tuple:
    order = list(DISPLAY)
    base_key = (order.index(row["base"]) if row["base"] in order else len(order), row["base"])
    p = row["params"]
    if fam == "dwc_inputs":
        return (*base_key, _axis_key("dwc_inputs", p.get("dwc_inputs")))
    if fam == "kernel_consistency":
        return (*base_key, _axis_key("kernel", p.get("kernel")), _axis_key("consistency", p.get("consistency")))
    if fam == "beta_sweep":  # the DWC reference last
        return (*base_key, p.get("beta") is None, p.get("beta") or 0.0)
    return (*base_key, row["method"])


def _add_references(abl: dict, by_method: dict, groups: dict, models: list[str]) -> None:
    """The main run of a method stands for its default setting in the ablation tables (marked
    ``source: main run``), unless an ablation run already covers that setting; the fixed-β sweep's
    reference is ``<method>~controller=dwc`` or the main run when its controller is the DWC."""
    for fam, axes in _FAMILY_AXES.items():
        for base in sorted({r["base"] for r in abl[fam]}):
            if base not in by_method:
                continue
            rs = [r for m in models for r in groups.get((m, base), [])]
            h = effective_hyper(base, rs)
            params = _jsonable({k: h.get(k) for k in axes})
            if any(r["base"] == base and all(_same(r["params"].get(k), v) for k, v in params.items())
                   for r in abl[fam]):
                continue
            fam_models = [m for m in models if any(m in r["cells"] for r in abl[fam] if r["base"] == base)]
            abl[fam].append({"method": base, "base": base, "display": display_name(base), "params": params,
                             "source": "main run", "cells": _cells_of(by_method[base], groups, base, fam_models)})
    for base in sorted({r["base"] for r in abl["beta_sweep"]}):
        fam_models = [m for m in models if any(m in r["cells"] for r in abl["beta_sweep"] if r["base"] == base)]
        ref = next((r for r in abl["other"] if r["base"] == base
                    and parse_method(r["method"])[1] == {"controller": "dwc"}), None)
        if ref is not None:
            abl["beta_sweep"].append({**ref, "params": {"controller": "dwc", "beta": None}, "source": "ablation",
                                      "cells": {m: {**c, "bold": []} for m, c in ref["cells"].items()
                                                if m in fam_models}})
        elif base in by_method:
            rs = [r for m in models for r in groups.get((m, base), [])]
            if str(effective_hyper(base, rs).get("controller")) == "dwc":
                abl["beta_sweep"].append({"method": base, "base": base, "display": display_name(base),
                                          "params": {"controller": "dwc", "beta": None}, "source": "main run",
                                          "cells": _cells_of(by_method[base], groups, base, fam_models)})


def _cells_of(row: dict, groups: dict, method: str, models: list[str]) -> dict:
    """A main-table row's cells for the models that ran it, as fresh copies (own bold flags)."""
    return {m: {**row["cells"][m], "bold": []} for m in models if groups.get((m, method))}


def _hyper_notes(ds: str, model: str, method: str, pairs: dict, rs: list[Run]) -> list[str]:
    notes = []
    for r in rs:
        for k, v in pairs.items():
            if r.hyper is not None and k in r.hyper and not _same(r.hyper[k], v):
                notes.append(f"{r.name}: the directory name says {k}={v}, config.json says {k}={r.hyper[k]!r}")
    return notes


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
    cands = [r for r in main if r["kind"] in ("logit", "feature") and r["cells"][model]["metrics"]["miou"]["mean"]
             is not None]
    return max(cands, key=lambda r: r["cells"][model]["metrics"]["miou"]["mean"]) if cands else None


def _paired(main: list[dict], model: str) -> dict:
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
    ranked = [(r["method"], r["cells"][model]["metrics"]["miou"]["mean"]) for r in main
              if r["method"] != "teacher" and r["cells"][model]["metrics"]["miou"]["mean"] is not None]
    lix = next((v for m, v in ranked if m == "lix"), None)
    others = [(m, v) for m, v in ranked if m != "lix"]
    best_other = max(others, key=lambda mv: mv[1]) if others else None
    return {"lix_miou": lix, "n_methods": len(ranked),
            "best_other": best_other[0] if best_other else None,
            "best_other_miou": best_other[1] if best_other else None,
            "lix_is_best": None if lix is None else (best_other is None or lix >= best_other[1])}


# ----------------------------------------------------------------------------- markdown
def fmt_value(cell: dict | None, metric: str, digits: int = 2) -> str:
    """``mean ± std`` in percent (``± –`` with one seed; the mean in bold when marked best);
    ``failed (k of n)`` when no seed finished and k failed; ``–`` when nothing is there."""
    if cell is None or cell["n_ok"] == 0:
        if cell is not None and cell["n_failed"]:
            return f"failed ({cell['n_failed']} of {cell['n']})"
        return "–"
    m = cell["metrics"][metric]
    if m["mean"] is None:
        return "–"
    mean = f"{m['mean']:.{digits}f}"
    if metric in cell["bold"]:
        mean = f"**{mean}**"
    std = "–" if m["std"] is None else f"{m['std']:.{digits}f}"
    s = f"{mean} ± {std}"
    if m["n"] != cell["n_ok"]:
        s += f" (n={m['n']})"
    return s


def fmt_n(cell: dict | None) -> str:
    """Finished seeds of the cell's seeds, with the failed and missing ones named."""
    if cell is None or cell["n"] == 0 or cell["dirs"] == 0:
        return "–"
    extra = [f"{cell['n_failed']} failed"] * bool(cell["n_failed"]) + [f"{cell['n_missing']} missing"] * bool(
        cell["n_missing"])
    return f"{cell['n_ok']}/{cell['n']}" + (f" ({', '.join(extra)})" if extra else "")


def _pp(v: float | None, signed: bool = True) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in esc[1:])]


def _metric_columns(models: list[str], d: dict) -> list[str]:
    return [f"{d['model_display'][m]} {METRIC_LABEL[k]}" for m in models for k in (*METRICS, "n")]


def _metric_cells(cells: dict, models: list[str]) -> list[str]:
    return [fmt_value(cells.get(m), k) if k != "n" else fmt_n(cells.get(m)) for m in models for k in (*METRICS, "n")]


def _table_models(d: dict, rows: list[dict]) -> list[str]:
    return [m for m in d["models"] if any(m in r["cells"] for r in rows)]


def render_markdown(summary: dict, out_dir: Path | None = None, runs_root: Path | None = None) -> str:
    """The report (README.md) from ``build_summary``'s result; with ``out_dir`` and
    ``runs_root``, the pictures section links each run's confusion matrix relative to the report."""
    L: list[str] = ["# LIX experiment report", ""]
    c = summary["counts"]
    L += [f"Generated by `lix report` from `{summary['runs_root']}` ({summary['layout']}): "
          f"{c['run_dirs']} run directories, {c['finished']} finished, {c['failed']} failed, "
          f"{c['missing']} missing or unfinished.", "",
          "Numbers are percentages on the val split: mean ± sample standard deviation (ddof = 1) over the "
          "finished seeds (`± –`: one seed); `n` is finished seeds / seeds, with failed and missing ones "
          "named. Bold: the best mean per column among the student-side rows (all but the teacher), at the "
          "printed precision. `failed (k of n)`: no seed finished and k of n failed; `–`: no run.", "",
          summary["paper_note"], ""]
    paper = summary.get("paper") or {"datasets": {}}
    for ds, d in summary["datasets"].items():
        L += _dataset_section(ds, d, summary.get("plots", []), paper["datasets"].get(ds), paper.get("source", ""))
        L += _pictures_section(ds, d, out_dir, runs_root)
    L += _cross_section(summary.get("cross") or {})
    if summary["overhead"]:
        L += _overhead_section(summary["overhead"])
    if summary["problems"]:
        L += ["## Failed and missing runs", ""]
        for p in summary["problems"]:
            err = (p["error"] or "").strip().splitlines()
            msg = f": {err[0][:200]}" if err else (f" ({p['detail']})" if p.get("detail") else "")
            L.append(f"* `{p['run']}` {p['status']}{msg}")
        L.append("")
    if summary["notes"]:
        L += ["## Notes", "", *(f"* {n}" for n in summary["notes"]), ""]
    return "\n".join(L).rstrip() + "\n"


def _dataset_section(ds: str, d: dict, plots: list[str], paper: dict | None = None, source: str = "") -> list[str]:
    name, models = d["display"], d["models"]
    L = [f"## {name}", "", f"### {name}: student-side methods vs the teacher (Tables I–III layout)", ""]
    rows, prev = [], None
    for row in d["main"]:
        kind = row["kind"] if row["kind"] != prev else ""
        prev = row["kind"]
        rows.append([kind, row["display"], *_metric_cells(row["cells"], models)])
    L += _table(["KD type", "algorithm", *_metric_columns(models, d)], rows)
    if d["teacher_x"]:
        L += ["", "X (the teacher's geometry): " + "; ".join(f"{d['model_display'][m]}: {x}"
                                                            for m, x in d["teacher_x"].items()) + "."]
    L.append("")
    for model in models:
        lb = d["lix_best"][model]
        where = f"{name}, {d['model_display'][model]}"
        if lb["lix_miou"] is None:
            L.append(f"* **{where}**: LIX has no finished run, so whether it has the best mean mIoU is open.")
        elif lb["best_other"] is None:
            L.append(f"* **{where}**: LIX ({lb['lix_miou']:.2f} %) is the only student-side method with a "
                     f"finished run; there is nothing to compare it with.")
        elif lb["lix_is_best"]:
            L.append(f"* **{where}**: LIX has the best mean mIoU among the {lb['n_methods']} student-side methods "
                     f"with finished runs: {lb['lix_miou']:.2f} % vs {display_name(lb['best_other'])} "
                     f"{lb['best_other_miou']:.2f} % ({lb['lix_miou'] - lb['best_other_miou']:+.2f} pp).")
        else:
            L.append(f"* **{where}**: LIX does **not** have the best mean mIoU among the {lb['n_methods']} "
                     f"student-side methods with finished runs: {display_name(lb['best_other'])} "
                     f"{lb['best_other_miou']:.2f} % vs LIX {lb['lix_miou']:.2f} % "
                     f"({lb['lix_miou'] - lb['best_other_miou']:+.2f} pp).")
    L.append("")
    if paper:
        L += _paper_section(name, d, paper, source)
    L += _paired_section(name, d)
    for model, pc in d["per_class"].items():
        n = pc["n"]
        head = ["class"] + [f"{DISPLAY[m]} (n={n[m]})" if m in n else DISPLAY[m] for m in ("student", "lix", "teacher")]
        rows = [[cls, *(_pp(pc[m][cls], False) for m in ("student", "lix", "teacher")),
                 _pp(pc["lix_minus_student"][cls])] for cls in pc["classes"]]
        L += [f"### {name}, {d['model_display'][model]}: per-class IoU (%), mean over the finished seeds", ""]
        L += _table([*head, "LIX − student (pp)"], rows) + [""]
    L += _ablation_sections(ds, d, plots)
    return L


def _paper_section(name: str, d: dict, paper: dict, source: str) -> list[str]:
    """The paper's published rows beside ours (lix/paper_figures.py): per architecture the
    paper prints, each metric as `paper` and `ours` (mean ± std over our finished seeds)."""
    ours = {row["method"]: row["cells"] for row in d["main"]}
    models = sorted({m for per_model in paper["rows"].values() for m in per_model})
    methods = sorted(set(paper["rows"]) | {m for m in ours if any(mo in ours[m] for mo in models)}, key=_method_order)
    header = ["algorithm"] + [f"{display_model(m)} {METRIC_LABEL[k]} {who}" for m in models for k in METRICS
                              for who in ("paper", "ours")]
    rows = []
    for method in methods:
        cells = []
        for model in models:
            published = paper["rows"].get(method, {}).get(model, {})
            cell = ours.get(method, {}).get(model)
            for k in METRICS:
                cells += [published.get(k, "–"),
                          fmt_value({**cell, "bold": []}, k) if cell else "–"]
        rows.append([display_name(method), *cells])
    table = f"Table {paper['table']}" if paper["table"] else "its tables"
    L = [f"### {name}: the paper's published figures beside ours", "",
         f"Quoted as printed from {source} ({table}). The paper's setting: {paper['setting']}. Ours: the "
         "runs of this report (their data, resolution and schedule are those of params.yaml). Where the two "
         "settings differ, the numbers are not comparable as such; the two comparisons below are.", "",
         *_table(header, rows), ""]
    return L + _comparison_section(name, d.get("paper_comparison") or {})


def _comparison_section(name: str, comparison: dict) -> list[str]:
    """The gap each method closes, ours beside the paper's, and the rank agreement (Kendall τ)."""
    if not comparison:
        return []
    L = [f"### {name}: share of the teacher–student gap closed, ours beside the paper's", "",
         "(method − student) / (teacher − student) in mIoU: 1 = the teacher's level, 0 = the plain student's, "
         "negative = below it; `–` where a side has no run or its teacher does not lead its student. "
         "Kendall's τ compares our ordering of the methods both sides have with the paper's (+1 the same, −1 "
         "reversed; n = methods compared); both are free of the training length and the resolution.", ""]
    models = list(comparison)
    methods = sorted({m for c in comparison.values() for m in c["gap"]}, key=_method_order)
    rows = []
    for method in methods:
        cells = []
        for model in models:
            g = comparison[model]["gap"].get(method, {})
            cells += [_share(g.get("ours")), _share(g.get("paper"))]
        rows.append([display_name(method), *cells])
    L += _table(["algorithm", *(f"{display_model(m)} {who}" for m in models for who in ("ours", "paper"))], rows)
    L.append("")
    for model in models:
        c = comparison[model]
        tau = "–" if c["tau"] is None else f"{c['tau']:+.2f}"
        L.append(f"* {display_model(model)}: Kendall's τ (mIoU) between our ranking and the paper's = {tau} "
                 f"(n = {c['n']} methods).")
    return L + [""]


def _share(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


FIGURE_CAPTION = {
    "curves": "Training curves per method (train loss, val mIoU; mean over seeds, min–max band)",
    "cka": "Linear CKA between the student's and the teacher's features over training, plain student vs the "
           "distilled ones (the paper's Fig. 5; mean over the taps, 16 val images)",
    "grid": "The same val images for every method: RGB | ground truth | teacher | student | best baseline | LIX",
    "dwc": "The dynamic weight controller: the student's confidence in the true class, the mean weight over "
           "the non-target logits, and the class given the most weight, per pixel",
}


def _pictures_section(ds: str, d: dict, out_dir: Path | None, runs_root: Path | None) -> list[str]:
    import os

    figs = d.get("figures") or {}
    L: list[str] = []
    for model in d["models"]:
        items = figs.get(model) or {}
        confusions = []
        if out_dir is not None and runs_root is not None:
            for method in ("teacher", "student", "lix"):
                row = next((r for r in d["main"] if r["method"] == method), None)
                ok = row["cells"][model]["seeds"]["ok"] if row and model in row["cells"] else []
                png = Path(runs_root) / ds / model / method / f"seed{ok[0]}" / "confusion.png" if ok else None
                if png is not None and png.is_file():
                    rel = os.path.relpath(png, out_dir)
                    confusions.append(f"[{DISPLAY.get(method, method)} (seed {ok[0]})]({Path(rel).as_posix()})")
        if not items and not confusions:
            continue
        L += [f"### {d['display']}, {d['model_display'][model]}: pictures", ""]
        for name in ("curves", "cka", "grid", "dwc"):
            if name in items:
                L += [f"{FIGURE_CAPTION[name]}:", "", f"![{name}]({items[name]})", ""]
        if confusions:
            L += ["Confusion matrices: " + ", ".join(confusions) + ".", ""]
    return L


def _paired_section(name: str, d: dict) -> list[str]:
    rows = []
    for model in d["models"]:
        p = d["paired"][model]
        pairs = [("LIX vs Student (RGB)", p["lix_vs_student"])]
        if p["best_baseline"]:
            pairs.append((f"LIX vs the best baseline ({display_name(p['best_baseline'])})", p["lix_vs_best_baseline"]))
        for label, r in pairs:
            if r is None:
                continue
            per_seed = ", ".join(f"seed{s}: {r['diffs'][str(s)]:+.2f}" for s in r["seeds"]) or "–"
            agree = f"{r['agree']} of {r['n']} seeds agree" if r["n"] else "no seed finished in both"
            rows.append([d["model_display"][model], label, per_seed, _pp(r["mean"]), _pp(r["std"], False), agree])
    if not rows:
        return []
    return [f"### {name}: paired comparison over seeds (mIoU difference, pp)", "",
            "Per seed finished in both runs: LIX − the other method's mIoU; the mean and sample std of those "
            "differences; a seed agrees when the difference is > 0.", "",
            *_table(["model", "comparison", "per seed", "mean Δ", "std Δ", "agreement"], rows), ""]


def _ablation_sections(ds: str, d: dict, plots: list[str]) -> list[str]:
    name, abl = d["display"], d["ablations"]
    L = []
    if "dwc_inputs" in abl:
        rows = abl["dwc_inputs"]
        models = _table_models(d, rows)
        L += [f"### {name}: DWC inputs (Table IV layout)", ""]
        L += _table(["algorithm", "DWC inputs", *_metric_columns(models, d)],
                    [[DISPLAY.get(r["base"], r["base"]), _axis_label(r, "dwc_inputs"),
                      *_metric_cells(r["cells"], models)] for r in rows])
        L += ["", "Bold: best per column in this table." + (
            " (main run): the method's main-table run, whose setting this is." if any(
                r["source"] == "main run" for r in rows) else ""), ""]
    if "kernel_consistency" in abl:
        rows = abl["kernel_consistency"]
        L += [f"### {name}: kernel × consistency (Table V layout), mFsc (%)", "",
              "mFsc, the metric of the paper's Table V (its Laplace + CKA cell equals ARFD's mFsc in Table I).", ""]
        for base in sorted({r["base"] for r in rows}, key=lambda b: _row_key("", {"base": b, "method": b,
                                                                                    "params": {}})):
            sub = [r for r in rows if r["base"] == base]
            kernels = sorted({str(r["params"].get("kernel")) for r in sub}, key=lambda v: _axis_key("kernel", v))
            cons = sorted({str(r["params"].get("consistency")) for r in sub}, key=lambda v: _axis_key("consistency", v))
            for model in _table_models(d, sub):
                grid = []
                for k in kernels:
                    line = [k]
                    for cn in cons:
                        r = next((r for r in sub if str(r["params"].get("kernel")) == k
                                  and str(r["params"].get("consistency")) == cn), None)
                        cell = r["cells"].get(model) if r else None
                        text = fmt_value(cell, "mfsc")
                        if cell is not None:
                            text += f" (n={cell['n_ok']}/{cell['n']})" + (" †" if r["source"] == "main run" else "")
                        line.append(text)
                    grid.append(line)
                L += [f"{DISPLAY.get(base, base)}, {d['model_display'][model]} (rows: kernel, columns: consistency):",
                      "", *_table(["kernel \\ consistency", *cons], grid), ""]
        L += ["†: the method's main-table run (its default setting); bold: best in the grid.", ""]
    if "beta_sweep" in abl:
        rows = abl["beta_sweep"]
        models = _table_models(d, rows)
        L += [f"### {name}: fixed β vs the dynamic weight controller", ""]
        L += _table(["algorithm", "β", *_metric_columns(models, d)],
                    [[DISPLAY.get(r["base"], r["base"]),
                      ("DWC" if r["params"]["beta"] is None else f"{r['params']['beta']:g} (fixed)")
                      + (" (main run)" if r["source"] == "main run" else ""),
                      *_metric_cells(r["cells"], models)] for r in rows])
        L.append("")
        if f"beta_sweep_{ds}.png" in plots:
            L += [f"![fixed-β sweep, {name}](beta_sweep_{ds}.png)", ""]
    if "other" in abl:
        rows = abl["other"]
        models = _table_models(d, rows)
        L += [f"### {name}: other ablations", ""]
        L += _table(["run", *_metric_columns(models, d)], [[f"`{r['method']}`", *_metric_cells(r["cells"], models)]
                                                             for r in rows])
        L.append("")
    return L


def _axis_label(row: dict, axis: str) -> str:
    return f"{row['params'].get(axis)}" + (" (main run)" if row["source"] == "main run" else "")


def _overhead_section(overhead: dict) -> list[str]:
    machine = overhead.get("machine")
    overhead = {k: v for k, v in overhead.items() if k != "machine"}
    models = sorted(overhead)
    methods = sorted({m for v in overhead.values() for m in v}, key=_method_order)
    rows = []
    for method in methods:
        line = [kind_of(method) if method not in ROLES else "—", display_name(method)]
        for model in models:
            r = overhead[model].get(method) or {}
            line += [("–" if r.get(k) is None else f"{r[k]:.2f}×") for k in ("time_ratio", "memory_ratio")]
        rows.append(line)
    head = ["KD type", "algorithm"] + [f"{display_model(m)} {w}" for m in models for w in ("time", "memory")]
    return ["## Training overhead", "",
            "One distillation step (teacher forward included) relative to the plain student step "
            "(benchmarks/distill_step.py): time and peak memory ratios"
            + (f", measured on {machine}." if machine else "."), "", *_table(head, rows), ""]


# ----------------------------------------------------------------------------- plot
def plot_beta_sweep(d: dict, path: str | Path) -> Path:
    """mIoU against the fixed β (mean ± std over seeds, one line per method and model), the DWC's
    mean as a dashed line with its ± std band; PNG, Agg backend, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.atomic import atomic_path

    rows = d["ablations"]["beta_sweep"]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
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
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


# ----------------------------------------------------------------------------- entry point
def _first_ok_seed(d: dict, model: str, method: str) -> int | None:
    row = next((r for r in d["main"] if r["method"] == method), None)
    if row is None:
        return None
    ok = row["cells"][model]["seeds"]["ok"] if model in row["cells"] else []
    return int(ok[0]) if ok else None


def scan_cross(cross_root: str | Path | None) -> dict:
    """The cross-dataset evaluations under ``<cross_root>/<source>-to-<target>/<model>/<method>/
    seed<k>/metrics.json`` (lix cross-evaluate) as {pair: {"source", "target", "common_classes",
    "rows": [{"method", "display", "model", "cells": aggregate(...)}]}}; {} without any."""
    out: dict = {}
    root = Path(cross_root) if cross_root else None
    if root is None or not root.is_dir():
        return out
    for pair_dir in _subdirs(root):
        src, sep, tgt = pair_dir.name.partition("-to-")
        if not sep:
            continue
        rows, common = [], None
        for model_dir in _subdirs(pair_dir):
            for method_dir in sorted(_subdirs(model_dir), key=lambda p: _method_order(p.name)):
                runs = []
                for seed_dir in _subdirs(method_dir):
                    m = _SEED.match(seed_dir.name)
                    if m:
                        run = read_run(seed_dir, tgt, model_dir.name, method_dir.name, int(m.group(1)))
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


def _cross_section(cross: dict) -> list[str]:
    if not cross:
        return []
    L = ["## Cross-dataset generalisation", "",
         "Students trained on the source dataset, scored on the target's val split over the classes the two "
         "label spaces share (mapping: `lix/cross_dataset.py`); a prediction of a class without counterpart "
         "counts as wrong. Mean ± std over seeds (%).", ""]
    for pair, c in cross.items():
        L += [f"### {display_dataset(c['source'])} → {display_dataset(c['target'])}", "",
              f"Common classes ({len(c['common_classes'])}): {', '.join(c['common_classes']) or '–'}.", ""]
        rows = [[r["display"], display_model(r["model"]), fmt_value(r["cells"], "miou"), fmt_value(r["cells"], "mfsc"),
                 fmt_n(r["cells"])] for r in c["rows"]]
        L += _table(["algorithm", "model", "mIoU", "mFsc", "n"], rows) + [""]
    return L


def draw_figures(summary: dict, runs_root: Path, shards_root: Path | None, out: Path,
                 device: str = "cpu") -> list[Path]:
    """The pictures of each dataset and model (lix/figures.py) into ``out``, recorded in
    ``summary["datasets"][ds]["figures"][model]`` (name -> file) for the markdown: training
    curves, the teacher-student CKA over training (Fig. 5), and, with ``shards_root``, the
    qualitative grid (RGB | GT | teacher | student | best baseline | LIX, the same val images for
    every method, seed of the first finished LIX run) and the DWC's weight and confidence maps.
    A figure that cannot be drawn (a run without checkpoint, unreadable shards) is noted in
    ``summary["notes"]``, never fatal: the tables matter more than one picture."""
    import logging

    from lix import figures

    log = logging.getLogger(__name__)
    written: list[Path] = []
    for ds, d in summary["datasets"].items():
        d["figures"] = {}
        for model in d["models"]:
            figs: dict[str, str] = {}
            tag = f"{ds}_{model}"

            def attempt(name: str, fn, *args, **kw):
                try:
                    p = fn(*args, **kw)
                except Exception as e:  # noqa: BLE001 - a picture must not sink the report
                    summary["notes"].append(f"{ds}/{model}: the {name} figure was not drawn ({e})")
                    log.warning("%s/%s: %s figure not drawn: %s", ds, model, name, e)
                    return
                if p is not None:
                    figs[name] = Path(p).name
                    written.append(Path(p))

            attempt("curves", figures.training_curves, runs_root, ds, model, out / f"curves_{tag}.png")
            attempt("cka", figures.cka_curves, runs_root, ds, model, out / f"cka_{tag}.png",
                    methods=[m for m in ("student", "lix", "dwld", "arfd")
                             if any(r["method"] == m for r in d["main"])])
            if shards_root is not None and (Path(shards_root) / ds).is_dir():
                best = d["paired"][model].get("best_baseline")
                columns = ["teacher", "student", *([best] if best else []), "lix"]
                seed = _first_ok_seed(d, model, "lix")
                seed = seed if seed is not None else _first_ok_seed(d, model, "student")
                if seed is not None:
                    attempt("grid", figures.qualitative_grid, runs_root, shards_root, ds, model, columns,
                            out / f"grid_{tag}.png", seed=seed, device=device)
                lix_seed = _first_ok_seed(d, model, "lix")
                if lix_seed is not None:
                    attempt("dwc", figures.dwc_maps, runs_root, shards_root, ds, model, out / f"dwc_{tag}.png",
                            seed=lix_seed, device=device)
            d["figures"][model] = figs
    return written


def _mean_table(d: dict, metric: str = "miou") -> dict[str, dict[str, float]]:
    """method -> model -> our mean ``metric`` (percent) over the finished seeds, main table rows."""
    out: dict[str, dict[str, float]] = {}
    for row in d["main"]:
        for model, cell in row["cells"].items():
            mean = ((cell or {}).get("metrics") or {}).get(metric, {}).get("mean")
            if mean is not None:
                out.setdefault(row["method"], {})[model] = mean
    return out


def write_report(runs_root: str | Path, out_dir: str | Path, *, plots: bool = True,
                 shards_root: str | Path | None = None, device: str = "cpu",
                 cross_root: str | Path | None = None, overhead: str | Path | None = None,
                 paper: str | Path | None = SHIPPED) -> dict:
    """Scan ``runs_root`` (layout in the module docstring), write ``README.md``, ``summary.json``
    and the pictures (β-sweep plots; with ``plots``, lix/figures.py's figures, see
    :func:`draw_figures`) into ``out_dir`` atomically, and return the summary. Pictures of an
    earlier report that this one no longer has are removed. ``paper``: the paper's published
    figures (lix/paper_figures.py; default the shipped Tables I–V, None for none; a directory
    without tables.json gives none), loaded before anything is written, so a bad file leaves the
    previous report as it was. With them, each dataset gets ``paper_comparison``
    (lix.paper_figures.compare_with_paper: the gap closed and Kendall's τ per architecture)."""
    from pipeline.atomic import write_json, write_text

    runs = scan_runs(runs_root)
    summary = build_summary(runs, read_overhead(runs_root, overhead), runs_root=str(runs_root))
    summary["cross"] = scan_cross(cross_root)
    if paper is not None:
        summary["paper"] = load_paper_figures(paper)
        if summary["paper"]:
            for ds, entry in summary["paper"]["datasets"].items():
                if ds in summary["datasets"]:
                    summary["datasets"][ds]["paper_comparison"] = compare_with_paper(
                        _mean_table(summary["datasets"][ds]), entry["rows"])
            shown = [display_dataset(d) for d in summary["paper"]["datasets"] if d in summary["datasets"]]
            unshown = [display_dataset(d) for d in summary["paper"]["datasets"] if d not in summary["datasets"]]
            summary["paper_note"] = (f"The paper's published figures ({summary['paper']['source']}) are quoted "
                                     f"beside ours for {', '.join(shown) or 'no dataset'}"
                                     + (f"; given for {', '.join(unshown)} too, which has no runs here" * bool(unshown))
                                     + ".")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        for ds, d in summary["datasets"].items():
            if "beta_sweep" in d["ablations"]:
                written.append(plot_beta_sweep(d, out / f"beta_sweep_{ds}.png"))
        written += draw_figures(summary, Path(runs_root), Path(shards_root) if shards_root else None, out, device)
    for stale in out.glob("*.png"):
        if stale not in written:
            stale.unlink()
    summary["plots"] = sorted(p.name for p in written)
    summary["notes"] = sorted(set(summary["notes"]))
    write_json(out / "summary.json", summary)
    write_text(out / "README.md", render_markdown(summary, Path(out_dir), Path(runs_root)))
    return summary
