"""``lix report``: whatever runs of the experiment matrix exist, as a report in the paper's layout.

Input layout (the contract the experiment matrix writes)
--------------------------------------------------------
::

    <runs_root>/<dataset>/<model>/<method>/seed<k>/metrics.json   a finished run
    <runs_root>/<dataset>/<model>/<method>/seed<k>/failed.json    a failed run: {"error": "..."}
    <runs_root>/<dataset>/<model>/<method>/seed<k>/config.json    optional: the resolved run config
                                                                  (lix.train.run_config: "train", "role",
                                                                  "world_size"; "distill": {"hyper": {...}})
    <runs_root>/<dataset>/<model>/<method>/seed<k>/summary.json   optional: lix train's summary ("epochs",
                                                                  "best_epoch", "stopped", "last": the last
                                                                  epoch's record, "provenance", "samples")
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
  failed; with neither it is missing (not run, or not finished). A ``metrics.json`` that is
  empty, ``{}``, not valid JSON, without a finite ``miou`` or with fields of the wrong type
  counts as failed, its reason shown (:func:`read_metrics`).
* The seeds of a main-table cell are the union of the ``seed<k>`` directories over the
  student-side methods (everything but the teacher, no ablations) of that dataset and model, so a
  seed that one method lacks entirely counts as missing for it; the teacher and ablation cells
  count their own seed directories.
* ``overhead.json`` is benchmarks/distill_step.py's ratios of a distillation step to the plain
  student step (time and peak memory), per model and method.
* The tables score each run's ``best.pt``: the epoch with the best val mIoU, evaluated on that
  same val split (an optimistic estimate, the report's "Protocol" says so); beside each mIoU
  the main tables give the last epoch's val mIoU from ``summary.json``. With ``--shards`` the
  depth source of each dataset is read from its shards (per-sample ``depth_backend``).

Output
------
``<out_dir>/README.md`` (markdown: a Protocol section first, then per dataset the tables, and a
setup table of every run at the end), ``<out_dir>/summary.json`` (the same numbers, machine-readable:
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
    config: dict | None = None  # config.json: the resolved run config (lix.train.run_config)
    summary: dict | None = None  # summary.json: epochs, best_epoch, stopped, last, provenance, samples

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


def _read_optional(path: Path, notes: list[str]) -> dict | None:
    """A JSON object file that only adds detail (config.json, summary.json): None when absent;
    when unreadable or not an object, None and a note (the run's numbers do not depend on it)."""
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e}); ignored")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: not a JSON object; ignored")
        return None
    return data


def read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """(metrics, None) for a usable ``metrics.json``, else (None, why not). Usable: a JSON object
    with a finite ``miou`` and fields of the types evaluate_checkpoint writes. An empty file,
    ``{}``, invalid JSON or a file without ``miou`` is what an evaluation that died half-way
    leaves; counting it as finished would put a row of dashes in the tables as if the run had no
    numbers to give, so it is a failure with its reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        return None, f"metrics.json unreadable: {e}"
    if not text.strip():
        return None, "metrics.json is empty (0 bytes): the evaluation did not finish"
    try:
        metrics = json.loads(text)
    except ValueError as e:
        return None, f"metrics.json is not valid JSON ({e}): the evaluation did not finish"
    if not isinstance(metrics, dict):
        return None, "metrics.json is not a JSON object"
    if not metrics:
        return None, "metrics.json is empty ({}): the evaluation wrote no numbers"
    if _finite(metrics.get("miou")) is None:
        has = ", ".join(sorted(map(str, metrics))[:8])
        return None, f"metrics.json is incomplete: no finite 'miou' (it has: {has})"
    wrong = _wrong_type(metrics)
    if wrong:
        return None, f"metrics.json is malformed: {wrong}"
    return metrics, None


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _wrong_type(metrics: dict) -> str | None:
    """The first field of ``metrics`` that evaluate_checkpoint could not have written: a scalar
    metric that is not a number (or null), a per-class table that is not {class: number or null}.
    Such a file was damaged after the fact; its other numbers are not to be trusted either."""
    for k in ALL_METRICS:
        if not _is_number(metrics.get(k)):
            return f"{k!r} is a {type(metrics[k]).__name__}, not a number"
    for k in ("per_class_iou", "per_class_f1"):
        table = metrics.get(k)
        if table is None:
            continue
        if not isinstance(table, dict):
            return f"{k!r} is a {type(table).__name__}, not a {{class: value}} object"
        bad = next((c for c, v in table.items() if not _is_number(v)), None)
        if bad is not None:
            return f"{k}[{bad!r}] is a {type(table[bad]).__name__}, not a number"
    return None


def _failed_error(f_path: Path) -> str:
    try:
        data = _read_json(f_path)
        return str(data.get("error", data)) if isinstance(data, dict) else str(data)
    except (OSError, ValueError) as e:
        return f"failed.json unreadable: {e}"


def read_run(seed_dir: Path, dataset: str, model: str, method: str, seed: int) -> Run:
    """The state of one seed directory (see the module docstring)."""
    notes: list[str] = []
    config = _read_optional(seed_dir / "config.json", notes)
    hyper = None
    if config is not None:
        distill = config.get("distill")
        h = distill.get("hyper") if isinstance(distill, dict) else None
        hyper = dict(h) if isinstance(h, dict) else None
    summary = _read_optional(seed_dir / "summary.json", notes)
    kw = dict(dataset=dataset, model=model, method=method, seed=seed, hyper=hyper, config=config, summary=summary)
    m_path, f_path = seed_dir / "metrics.json", seed_dir / "failed.json"
    if m_path.is_file():
        metrics, why = read_metrics(m_path)
        if metrics is None:
            if f_path.is_file():  # the run's own account of what went wrong, when it left one
                why += f"; failed.json: {_failed_error(f_path)}"
            return Run(status="failed", error=why, notes=tuple(notes), **kw)
        got = metrics.get("dataset")
        if got is not None and got != dataset:
            notes.append(f"{m_path}: says dataset {got!r}, its directory {dataset!r}")
        got = metrics.get("model")
        if got is not None and not model.startswith(str(got)):
            notes.append(f"{m_path}: says model {got!r}, its directory {model!r}")
        return Run(status="ok", metrics=metrics, notes=tuple(notes), **kw)
    if f_path.is_file():
        return Run(status="failed", error=_failed_error(f_path), notes=tuple(notes), **kw)
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


# ----------------------------------------------------------------------------- depth source
# What the teacher's X was computed from decides what "distilling geometry" means: KITTI's X on
# the default pipeline is classical SGBM stereo, where the paper used a CREStereo network. The
# shards record the depth backend of every sample (pipeline/shards.py: ``depth_backend``, from
# `lix prepare depth`'s manifest), so the report reads it there rather than trusting params.
DEPTH_BACKEND_KIND = {"sgbm": "stereo", "crestereo": "stereo network", "depth_anything": "monocular network",
                      "ground_truth": "the dataset's own depth"}
PAPER_DEPTH = {"vkitti2": ("ground_truth", "rendered depth"), "kitti": ("crestereo", "CREStereo"),
               "nuimages": ("depth_anything", "Depth Anything")}  # the paper's Sec. IV-A


def read_depth_source(shard_dir: str | Path) -> dict[str, int]:
    """{depth backend: samples} over the train and val shards of ``shard_dir`` (the per-sample
    ``depth_backend`` field; "" where the preparation recorded none). DataError when the shards
    cannot be read."""
    from pipeline.shards import open_shard, read_manifest

    shard_dir = Path(shard_dir)
    counts: dict[str, int] = {}
    for split in read_manifest(shard_dir)["splits"].values():
        for entry in split["shards"]:
            with open_shard(shard_dir / entry["file"]) as f:
                names = f["depth_backend"][:] if "depth_backend" in f else [b""] * len(f["id"])
                for b in names:
                    name = b.decode() if isinstance(b, bytes) else str(b)
                    counts[name] = counts.get(name, 0) + 1
    return counts


def depth_sources(shards_root: str | Path | None, datasets: Iterable[str]) -> tuple[dict, list[str]]:
    """({dataset: {backend: samples}}, notes) for the datasets with shards under ``shards_root``;
    {} without a shards root. A dataset whose shards cannot be read is left out, with a note."""
    out, notes = {}, []
    if shards_root is None:
        return out, notes
    for ds in datasets:
        d = Path(shards_root) / ds
        if not d.is_dir():
            continue
        try:
            out[ds] = read_depth_source(d)
        except (DataError, OSError, KeyError) as e:
            notes.append(f"{d}: the depth source could not be read from the shards ({e})")
    return out, notes


def fmt_depth_source(counts: dict[str, int] | None) -> str:
    """"sgbm (stereo)", or a mix "crestereo (stereo network) 150, sgbm (stereo) 50"; "—" unknown."""
    if not counts:
        return "—"
    order = sorted(counts, key=lambda b: (-counts[b], b))

    def label(b: str) -> str:
        return (b or "not recorded") + (f" ({DEPTH_BACKEND_KIND[b]})" if b in DEPTH_BACKEND_KIND else "")

    if len(order) == 1:
        return label(order[0])
    return ", ".join(f"{label(b)} {counts[b]}" for b in order)


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
    last = {m: _last_epoch_values([by_seed[s] for s in ok], m) for m in METRICS}
    status = "ok" if ok else "failed" if failed else "missing"
    return {"status": status, "n": len(expected), "n_ok": len(ok), "n_failed": len(failed),
            "n_missing": len(missing), "dirs": len(by_seed),
            "seeds": {"ok": ok, "failed": failed, "missing": missing},
            "unfinished": [s for s in missing if s in by_seed],
            "errors": {str(s): by_seed[s].error for s in failed},
            "metrics": metrics,
            "per_class_iou": {c: {"mean": mean_std(v)[0], "n": len(v)} for c, v in per_class.items()},
            "last": last, "selection_gap": _selection_gap(metrics["miou"], last["miou"]),
            "epochs": {str(s): _epochs_of(by_seed[s]) for s in ok},
            "bold": []}


def _last_record(run: Run) -> dict:
    """summary.json's ``last``: the history record of the run's last epoch ({} when absent)."""
    last = (run.summary or {}).get("last")
    return last if isinstance(last, dict) else {}


def _last_epoch_values(runs: list[Run], metric: str) -> dict:
    """The last epoch's val ``metric`` (percent) of each run that recorded it: the figure no
    checkpoint selection touched, to set beside the best-on-val one."""
    values = {}
    for r in runs:
        v = _finite(_last_record(r).get(f"val/{metric}"))
        if v is not None:
            values[str(r.seed)] = 100.0 * v
    mean, std = mean_std(values.values())
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _selection_gap(best: dict, last: dict) -> dict:
    """Per seed with both, best-on-val − last-epoch (pp): what choosing the epoch on the split it
    is scored on adds to the reported figure."""
    diffs = {s: best["values"][s] - last["values"][s] for s in best["values"] if s in last["values"]}
    return {"mean": mean_std(diffs.values())[0], "n": len(diffs), "diffs": diffs}


def _epochs_of(run: Run) -> dict:
    s = run.summary or {}
    return {"best": s.get("best_epoch"), "ran": s.get("epochs"),
            "configured": _train_config(run).get("epochs")}


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
        premise = {model: teacher_vs_student(by_method, model) for model in models}
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
                        "premise": premise,
                        "ablations": {k: v for k, v in abl.items() if v}}
    counts = {"run_dirs": len(runs), "finished": sum(r.status == "ok" for r in runs),
              "failed": sum(r.status == "failed" for r in runs), "missing": sum(r.status == "missing" for r in runs)}
    return {"schema": 1, "runs_root": str(runs_root), "layout": LAYOUT,
            "units": "percent (0-100); mean over the finished seeds; std: sample std (ddof=1), null with one seed",
            "counts": counts, "datasets": datasets, "overhead": overhead, "problems": problems,
            "setup": [setup_row(r) for r in sorted(runs, key=_setup_order)], "depth_sources": {},
            "notes": sorted(set(notes)), "paper_note": PAPER_NOTE}


_FAMILY_AXES = {"dwc_inputs": ("dwc_inputs",), "kernel_consistency": ("kernel", "consistency")}


def teacher_vs_student(by_method: dict, model: str) -> dict | None:
    """The distillation premise, checked: the teacher's and the plain student's mean mIoU (%)
    over the seeds both finished, and whether the teacher is at least as good (``holds``).
    None when the two share no finished seed (nothing to compare like with like)."""
    if "teacher" not in by_method or "student" not in by_method:
        return None
    t = by_method["teacher"]["cells"][model]["metrics"]["miou"]["values"]
    s = by_method["student"]["cells"][model]["metrics"]["miou"]["values"]
    seeds = sorted((k for k in t if k in s), key=int)
    if not seeds:
        return None
    teacher, student = (statistics.fmean(v[k] for k in seeds) for v in (t, s))
    return {"seeds": [int(k) for k in seeds], "teacher": teacher, "student": student, "holds": teacher >= student}


# ----------------------------------------------------------------------------- setup of each run
def _train_config(run: Run) -> dict:
    """config.json's ``train``: the resolved TrainConfig ({} when absent)."""
    train = (run.config or {}).get("train")
    return train if isinstance(train, dict) else {}


def _setup_order(run: Run) -> tuple:
    ds = list(DATASET_DISPLAY).index(run.dataset) if run.dataset in DATASET_DISPLAY else 99
    return (ds, run.dataset, run.model, VARIANT_SEP in run.method, _method_order(parse_method(run.method)[0]),
            run.method, run.seed)


def setup_row(run: Run) -> dict:
    """What one run was: its schedule, data and code, from config.json, summary.json and
    metrics.json; None where the run did not record it (older runs: no provenance, no samples)."""
    train, summ = _train_config(run), run.summary or {}
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


LAST_LABEL = "mIoU (last epoch)"
SELECTION_GAP_PP = 2.0  # best-on-val − last-epoch mIoU (pp) from which the report calls it out


def fmt_last(cell: dict | None, metric: str = "miou", digits: int = 2) -> str:
    """The last epoch's val ``metric``, ``mean ± std`` over the finished seeds that recorded it
    (``(n=k)`` when not all did); ``–`` where none did (a run from before summary.json had it)."""
    if cell is None or cell["n_ok"] == 0 or not cell.get("last") or cell["last"][metric]["mean"] is None:
        return "–"
    m = cell["last"][metric]
    std = "–" if m["std"] is None else f"{m['std']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {std}" + (f" (n={m['n']})" if m["n"] != cell["n_ok"] else "")


def _main_keys() -> list[str]:
    """The main tables' columns per model: the paper's metrics, the last-epoch mIoU right after
    the mIoU it qualifies, then n."""
    keys = list(METRICS)
    keys.insert(keys.index("miou") + 1, "last")
    return [*keys, "n"]


def _main_columns(models: list[str], d: dict) -> list[str]:
    return [f"{d['model_display'][m]} {LAST_LABEL if k == 'last' else METRIC_LABEL[k]}" for m in models
            for k in _main_keys()]


def _main_cells(cells: dict, models: list[str]) -> list[str]:
    out = []
    for m in models:
        for k in _main_keys():
            out.append(fmt_n(cells.get(m)) if k == "n" else fmt_last(cells.get(m)) if k == "last"
                       else fmt_value(cells.get(m), k))
    return out


def _premise_warnings(d: dict) -> list[str]:
    """One line per model whose teacher is weaker than its plain student (teacher_vs_student)."""
    out = []
    for model in d["models"]:
        p = (d.get("premise") or {}).get(model)
        if p is None or p["holds"]:
            continue
        out.append(f"* ⚠ **{d['display']}, {d['model_display'][model]}: the teacher is weaker than its plain "
                   f"student**: {p['teacher']:.2f} % vs {p['student']:.2f} % mIoU (seeds "
                   f"{', '.join(map(str, p['seeds']))}, finished by both). The distillation premise, an RGB + X "
                   "teacher at least as good as the RGB student, does not hold here: a distilled student's gain or "
                   "loss is not knowledge passed down from a better model.")
    return out


def _selection_warnings(d: dict) -> list[str]:
    """One line per main-table cell whose best-on-val mIoU exceeds its last-epoch mIoU by
    SELECTION_GAP_PP or more (mean over the seeds with both)."""
    out = []
    for row in d["main"]:
        for model in d["models"]:
            c = row["cells"].get(model)
            gap = (c or {}).get("selection_gap") or {}
            if gap.get("mean") is None or gap["mean"] < SELECTION_GAP_PP:
                continue
            seeds = sorted(gap["diffs"], key=int)
            best = statistics.fmean(c["metrics"]["miou"]["values"][k] for k in seeds)
            last = statistics.fmean(c["last"]["miou"]["values"][k] for k in seeds)
            epochs = ", ".join(f"{_dash(c['epochs'][k]['best'])} of {_dash(c['epochs'][k]['ran'])}" for k in seeds)
            out.append(f"* ⚠ **{d['display']}, {d['model_display'][model]}, {row['display']}: {best:.2f} % mIoU at "
                       f"the epoch chosen on val vs {last:.2f} % at the last epoch** ({gap['mean']:+.2f} pp from "
                       f"choosing on the split it is scored on; best epoch {epochs}; seeds "
                       f"{', '.join(seeds)}).")
    return out


def _dash(v: Any) -> str:
    return "—" if v is None else str(v)


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
    L += _protocol_section(summary)
    paper = summary.get("paper") or {"datasets": {}}
    for ds, d in summary["datasets"].items():
        L += _dataset_section(ds, d, summary.get("plots", []), paper["datasets"].get(ds), paper.get("source", ""))
        L += _pictures_section(ds, d, out_dir, runs_root)
    L += _cross_section(summary.get("cross") or {})
    if summary["overhead"]:
        L += _overhead_section(summary["overhead"])
    L += _setup_section(summary)
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


def _protocol_section(summary: dict) -> list[str]:
    """How the numbers were made: checkpoint selection, the teacher-vs-student premise, the data
    and schedule per dataset, the code; the per-run detail is the setup table further down."""
    L = ["## Protocol", "", f"* {PROTOCOL_SELECTION}", f"* {_premise_line(summary)}"]
    rows = summary.get("setup") or []
    for ds, d in summary["datasets"].items():
        mine = [r for r in rows if r["dataset"] == ds]
        L.append(f"* **{d['display']}**: depth source of X {_depth_phrase(ds, summary.get('depth_sources'))}; "
                 f"epochs configured {_distinct(mine, _fmt_epochs_configured)}; crop {_distinct(mine, _fmt_crop)}; "
                 f"batch {_distinct(mine, _fmt_batch)}; images (train / val) {_distinct(mine, _fmt_images)}.")
    torch, python = (_distinct(rows, lambda r, k=k: _dash(r[k])) for k in ("torch", "python"))
    L.append(f"* **Code**: commit {_distinct(rows, _fmt_commit)}; torch {torch}; python {python}. Per run (epochs "
             "run, stop reason, best epoch, commit, run digest): [Setup of each run](#setup-of-each-run).")
    return L + [""]


def _premise_line(summary: dict) -> str:
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
    return _dash(r["epochs_configured"])


def _fmt_crop(r: dict) -> str:
    crop = r["crop"]
    if not r["crop_known"]:
        return "—"
    if crop is None:
        return "full image"
    return "×".join(map(str, crop)) if isinstance(crop, (list, tuple)) else str(crop)


def _fmt_batch(r: dict) -> str:
    ws = r["world_size"]
    return _dash(r["batch_size"]) + (f" × {ws} processes" if isinstance(ws, int) and ws > 1 else "")


def _fmt_images(r: dict) -> str:
    return f"{_dash(r['train_images'])} / {_dash(r['val_images'])}"


def _fmt_commit(r: dict) -> str:
    if not r["commit"]:
        return "—"
    return str(r["commit"])[:10] + (" (dirty)" if r["dirty"] else "")


def _setup_section(summary: dict) -> list[str]:
    """One row per run directory: what it ran and with which code (— where the run did not
    record it: runs older than summary.json's provenance and samples)."""
    rows = []
    for r in summary.get("setup") or []:
        rows.append([display_dataset(r["dataset"]), display_model(r["model"]),
                     r["role"] if r["method"] in ROLES else f"{r['role']}: {display_name(r['method'])}",
                     str(r["seed"]), r["status"], f"{_dash(r['epochs_run'])} / {_dash(r['epochs_configured'])}",
                     STOP_REASON.get(r["stopped"], _dash(r["stopped"])), _dash(r["best_epoch"]), _fmt_crop(r),
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
            *_table(head, rows), ""]


def _dataset_section(ds: str, d: dict, plots: list[str], paper: dict | None = None, source: str = "") -> list[str]:
    name, models = d["display"], d["models"]
    L = [f"## {name}", "", f"### {name}: student-side methods vs the teacher (Tables I–III layout)", ""]
    rows, prev = [], None
    for row in d["main"]:
        kind = row["kind"] if row["kind"] != prev else ""
        prev = row["kind"]
        rows.append([kind, row["display"], *_main_cells(row["cells"], models)])
    L += _table(["KD type", "algorithm", *_main_columns(models, d)], rows)
    if d["teacher_x"]:
        L += ["", "X (the teacher's geometry): " + "; ".join(f"{d['model_display'][m]}: {x}"
                                                            for m, x in d["teacher_x"].items()) + "."]
    L += ["", f"`{LAST_LABEL}`: the val mIoU of the run's last epoch (summary.json), beside the mIoU of the "
              "checkpoint chosen on val (see Protocol).", ""]
    warnings = _premise_warnings(d) + _selection_warnings(d)
    if warnings:
        L += [*warnings, ""]
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
    "dwc": "The dynamic weight controller: the student's confidence in the true class, the mean weight over "
           "the non-target logits, and the class given the most weight, per pixel (class legend below)",
}


def grid_caption(info: dict) -> str:
    """The qualitative grid's caption from the columns it drew (figures.grid_titles, recorded by
    draw_figures), so the caption cannot promise a column the picture lacks."""
    cols = info["columns"]
    text = (f"The first val images, the same for every column ({len(cols)} columns, seed {info['seed']}): "
            + " | ".join(cols) + ". Predictions are drawn over the RGB in the class colours of the legend under "
            "the grid; a run without its checkpoint is a grey column marked missing")
    if info.get("best_baseline"):
        text += f"; {display_name(info['best_baseline'])} is the best baseline by mean val mIoU"
    return text


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
        info = (d.get("figure_info") or {}).get(model) or {}
        for name in ("curves", "cka", "grid", "dwc"):
            if name in items:
                caption = grid_caption(info["grid"]) if name == "grid" and "grid" in info else FIGURE_CAPTION.get(
                    name, name)
                L += [f"{caption}:", "", f"![{name}]({items[name]})", ""]
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
    qualitative grid (RGB | GT | teacher | student | the best baseline where one finished | LIX,
    the same val images for every method, seed of the first finished LIX run; its columns recorded
    in ``d["figure_info"][model]["grid"]`` for the caption) and the DWC's weight and confidence maps.
    A figure that cannot be drawn (a run without checkpoint, unreadable shards) is noted in
    ``summary["notes"]``, never fatal: the tables matter more than one picture."""
    import logging

    from lix import figures

    log = logging.getLogger(__name__)
    written: list[Path] = []
    for ds, d in summary["datasets"].items():
        d["figures"], d["figure_info"] = {}, {}
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
                    if "grid" in figs:  # what the caption lists: the titles the grid drew
                        d["figure_info"][model] = {"grid": {"columns": figures.grid_titles(columns), "seed": seed,
                                                            "best_baseline": best}}
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
    summary["depth_sources"], depth_notes = depth_sources(shards_root, summary["datasets"])
    summary["notes"] += depth_notes
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
