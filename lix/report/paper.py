"""The paper's published figures, quoted beside ours in the report.

The paper's Tables I–V (Guo et al., "LIX: Implicitly Infusing Spatial Geometric Prior Knowledge
into Visual Semantic Segmentation for Autonomous Driving", IEEE TIP 2025, arXiv:2403.08215) are
facts, quoted as printed. They ship with the package (``lix/report/paper_tables.json``,
transcribed from the paper's text; :data:`SHIPPED`) and ``lix report`` quotes them by default;
``--paper FILE`` quotes another file of the same format instead (e.g. a later version of the
paper). The report puts each published row beside the matching row of ours with the paper's
setting stated, and adds two comparisons that do not depend on the training length or resolution
(lix/report/markdown_tables.py): the share of the teacher–student gap a method closes, and the
rank agreement (Kendall's τ) between our ordering of the methods and the paper's.

Format (JSON; values in percent, as printed in the paper; every key below is checked)::

    {"source": "Guo et al., IEEE TIP 2025, Table I (page, version)",
     "datasets": {
       "vkitti2": {"table": "I", "setting": "vKITTI2, 700 images 5:2, depth from ..., 500 epochs",
                   "rows": {"teacher": {"mfnet": {"mfsc": 0.0, "fwfsc": 0.0, "miou": 0.0, "fwiou": 0.0},
                                        "sne_roadseg": {...}},
                            "student": {...}, "kd": {...}, "lix": {...}}}},
     "ablations": {                                   (optional)
       "dwc_inputs": {"table": "IV", "dataset": "vkitti2", "model": "mfnet", "setting": "...",
                      "rows": [{"label": "...", "mfsc": 0.0, ...}, ...]},
       "kernel_consistency": {"table": "V", "dataset": "vkitti2", "model": "mfnet", "metric": "mfsc",
                              "setting": "...", "rows": {kernel: {measure: value}}}}}

Dataset keys are registered datasets (``vkitti2``, ``kitti``, ``nuimages``); row keys
``teacher``, ``student`` or a method of ``lix distill --list``; model keys an architecture of the
model registry; metric keys ``mfsc``, ``fwfsc``, ``miou``, ``fwiou`` (any subset: a figure the
paper does not print is left out, never written as 0); Table V's kernels are ARFD's ``kernel``
values and its measures ARFD's ``consistency`` values. Figures are kept as written in the file
(``61.3`` stays ``61.3``, not ``61.30``): quoted, not reformatted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lix.report.names import METRICS  # the paper's column order, the report's too
from pipeline.errors import ConfigError, DataError

DEFAULT_FILE = "tables.json"
SHIPPED = Path(__file__).with_name("paper_tables.json")  # Tables I–V of the paper, package data


def _known_methods() -> set[str]:
    from lix.distill import method_table

    return {"teacher", "student", *(r["name"] for r in method_table())}


def _known_datasets() -> set[str]:
    from pipeline.datasets import DATASETS

    return set(DATASETS)


def _known_models() -> set[str]:
    from lix.models import MODELS

    return set(MODELS)


def load_paper_figures(path: str | Path = SHIPPED) -> dict | None:
    """The published figures of ``path`` (a JSON file, or a directory holding ``tables.json``;
    default the shipped Tables I–V), validated: {"source": str, "datasets": {dataset: {"table",
    "setting", "rows": {method: {model: {metric: str}}}}}, "ablations": {...}} (figures as their
    printed text). None when ``path`` is a directory without ``tables.json``. Raises
    DataError/ConfigError naming the file and key at fault."""
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_FILE
        if not p.is_file():
            return None
    if not p.is_file():
        raise DataError(p, "not found: expected the paper's figures as JSON (format: lix/report/paper.py)")
    try:  # numbers as written, so the report quotes them exactly
        raw = json.loads(p.read_text(encoding="utf-8"), parse_float=_Printed, parse_int=_Printed)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(p, f"not valid JSON ({e})") from None
    return validate(raw, str(p))


class _Printed(str):
    """A number as written in the JSON file (so that it is quoted, not reformatted)."""


def _figure(v: Any) -> str | None:
    """The figure as text, or None when ``v`` is not a percentage in [0, 100]."""
    if isinstance(v, bool):
        return None
    if isinstance(v, _Printed):
        text = str(v)
    elif isinstance(v, (int, float)):
        text = repr(v)
    else:
        return None
    try:
        x = float(text)
    except (ValueError, OverflowError):
        return None
    return text if math.isfinite(x) and 0 <= x <= 100 else None


def validate(raw: Any, where: str = "paper figures") -> dict:
    """``raw`` checked against the format of the module docstring; figures as their text."""
    def need(cond: bool, key: str, problem: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {key}", problem)

    need(isinstance(raw, dict), "(top level)", "expected an object with 'source' and 'datasets'")
    extra = set(raw) - {"source", "datasets", "ablations"}
    need(not extra, ", ".join(sorted(extra)), "unknown key(s); expected 'source', 'datasets', 'ablations'")
    need(isinstance(raw.get("source"), str) and raw["source"].strip() != "", "source",
         "expected the citation the figures are quoted from (paper, table, version)")
    need(isinstance(raw.get("datasets"), dict) and raw["datasets"], "datasets", "expected a non-empty object")
    methods, models, datasets = _known_methods(), _known_models(), _known_datasets()
    out: dict = {"source": raw["source"].strip(), "datasets": {}}
    for ds, entry in raw["datasets"].items():
        key = f"datasets.{ds}"
        need(ds in datasets, key, f"unknown dataset; expected one of {sorted(datasets)}")
        need(isinstance(entry, dict), key, "expected an object with 'table', 'setting', 'rows'")
        table = entry.get("table", "")
        need(isinstance(table, str) or (isinstance(table, int) and not isinstance(table, bool)), f"{key}.table",
             f"expected the paper's table number as text (e.g. \"I\"), got {table!r}")
        extra = set(entry) - {"table", "setting", "rows"}
        need(not extra, f"{key}.{sorted(extra)[0] if extra else ''}", "unknown key; expected table, setting, rows")
        need(isinstance(entry.get("setting"), str) and entry["setting"].strip() != "", f"{key}.setting",
             "expected the paper's setting in words (data, resolution, geometry source, schedule)")
        need(isinstance(entry.get("rows"), dict) and entry["rows"], f"{key}.rows", "expected a non-empty object")
        rows: dict = {}
        for method, per_model in entry["rows"].items():
            mkey = f"{key}.rows.{method}"
            need(method in methods, mkey, f"unknown method; expected one of {sorted(methods)}")
            need(isinstance(per_model, dict) and per_model, mkey, "expected {model: {metric: value}}")
            rows[method] = {}
            for model, values in per_model.items():
                vkey = f"{mkey}.{model}"
                need(model in models, vkey, f"unknown architecture; expected one of {sorted(models)}")
                need(isinstance(values, dict) and values, vkey, f"expected {{metric: value}} with metrics {METRICS}")
                rows[method][model] = {}
                for metric, v in values.items():
                    need(metric in METRICS, f"{vkey}.{metric}", f"unknown metric; expected one of {METRICS}")
                    text = _figure(v)
                    need(text is not None, f"{vkey}.{metric}", f"expected a percentage in [0, 100], got {str(v)!r}")
                    rows[method][model][metric] = text
        out["datasets"][ds] = {"table": str(table), "setting": entry["setting"].strip(), "rows": rows}
    if "ablations" in raw:
        out["ablations"] = _validate_ablations(raw["ablations"], need, datasets, models)
    return out


ABLATIONS = ("dwc_inputs", "kernel_consistency")  # Table IV, Table V


def _validate_ablations(raw: Any, need, datasets: set[str], models: set[str]) -> dict:
    from lix.losses.arfd import KERNELS
    from lix.losses.cka import CONSISTENCY

    need(isinstance(raw, dict), "ablations", f"expected an object with keys among {ABLATIONS}")
    out: dict = {}
    for name, entry in raw.items():
        key = f"ablations.{name}"
        need(name in ABLATIONS, key, f"unknown ablation; expected one of {ABLATIONS}")
        need(isinstance(entry, dict), key, "expected an object with table, dataset, model, setting, rows")
        allowed = {"table", "dataset", "model", "setting", "rows"} | ({"metric"} if name == "kernel_consistency"
                                                                      else set())
        extra = set(entry) - allowed
        need(not extra, f"{key}.{sorted(extra)[0] if extra else ''}", f"unknown key; expected {sorted(allowed)}")
        need(isinstance(entry.get("table"), str) and entry["table"].strip() != "", f"{key}.table",
             "expected the paper's table number as text")
        need(entry.get("dataset") in datasets, f"{key}.dataset", f"expected one of {sorted(datasets)}")
        need(entry.get("model") in models, f"{key}.model", f"expected one of {sorted(models)}")
        need(isinstance(entry.get("setting"), str) and entry["setting"].strip() != "", f"{key}.setting",
             "expected the setting in words")
        item = {k: str(entry[k]).strip() for k in ("table", "dataset", "model", "setting")}
        rows = entry.get("rows")
        if name == "dwc_inputs":
            need(isinstance(rows, list) and rows, f"{key}.rows", "expected a non-empty list of rows")
            item["rows"] = []
            for i, r in enumerate(rows):
                rkey = f"{key}.rows[{i}]"
                need(isinstance(r, dict) and isinstance(r.get("label"), str), rkey,
                     "expected {label: text, metric: value, ...}")
                figures = {}
                for metric, v in r.items():
                    if metric == "label":
                        continue
                    need(metric in METRICS, f"{rkey}.{metric}", f"unknown metric; expected one of {METRICS}")
                    text = _figure(v)
                    need(text is not None, f"{rkey}.{metric}", f"expected a percentage in [0, 100], got {str(v)!r}")
                    figures[metric] = text
                item["rows"].append({"label": r["label"], **figures})
        else:
            need(entry.get("metric") in METRICS, f"{key}.metric", f"expected one of {METRICS}")
            item["metric"] = entry["metric"]
            need(isinstance(rows, dict) and rows, f"{key}.rows", "expected {kernel: {measure: value}}")
            item["rows"] = {}
            for kernel, cells in rows.items():
                rkey = f"{key}.rows.{kernel}"
                need(kernel in KERNELS, rkey, f"unknown kernel; expected one of {KERNELS}")
                need(isinstance(cells, dict) and cells, rkey, f"expected {{measure: value}} for {CONSISTENCY}")
                item["rows"][kernel] = {}
                for measure, v in cells.items():
                    need(measure in CONSISTENCY, f"{rkey}.{measure}", f"unknown measure; expected {CONSISTENCY}")
                    text = _figure(v)
                    need(text is not None, f"{rkey}.{measure}", f"expected a percentage in [0, 100], got {str(v)!r}")
                    item["rows"][kernel][measure] = text
        out[name] = item
    return out


# --------------------------------------------------------------------------- scale-free comparisons
def gap_closed(method: float | None, student: float | None, teacher: float | None) -> float | None:
    """The share of the teacher–student gap a method closes: (method − student) / (teacher −
    student); 1 = the teacher's level, 0 = the plain student's, < 0 below it. None when a value is
    missing or the teacher does not lead the student (no gap to close)."""
    if method is None or student is None or teacher is None or not teacher > student:
        return None
    return (method - student) / (teacher - student)


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's τ-b between two scorings of the same items (ties handled as τ-b does): +1 the
    same order, −1 the reverse. None with fewer than 2 items or when either side is all ties."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two equally long lists, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom > 0 else None


def compare_with_paper(ours: dict[str, dict[str, float]], paper_rows: dict[str, dict[str, dict[str, str]]],
                       metric: str = "miou") -> dict[str, dict]:
    """Per architecture the paper prints: for every distillation method (not the teacher or the
    plain student) the gap it closes in ours and in the paper's (``metric``), and Kendall's τ
    between our ordering of the methods both have and the paper's, with n.

    ``ours``: method -> model -> mean value (percent); ``paper_rows``: the validated figures'
    ``rows`` of one dataset. Returns model -> {"gap": {method: {"ours", "paper"}}, "tau", "n",
    "metric", "methods"}."""
    out: dict[str, dict] = {}
    models = sorted({m for per_model in paper_rows.values() for m in per_model})
    for model in models:
        def value(source: str, method: str) -> float | None:
            if source == "paper":
                v = paper_rows.get(method, {}).get(model, {}).get(metric)
                return float(v) if v is not None else None
            return ours.get(method, {}).get(model)

        gaps, both = {}, []
        candidates = sorted((set(paper_rows) | set(ours)) - {"teacher", "student"})
        for method in candidates:
            g_ours = gap_closed(value("ours", method), value("ours", "student"), value("ours", "teacher"))
            g_paper = gap_closed(value("paper", method), value("paper", "student"), value("paper", "teacher"))
            if g_ours is None and g_paper is None:
                continue
            gaps[method] = {"ours": g_ours, "paper": g_paper}
            if value("ours", method) is not None and value("paper", method) is not None:
                both.append(method)
        tau = kendall_tau([value("ours", m) for m in both], [value("paper", m) for m in both]) if len(both) >= 2 \
            else None
        out[model] = {"metric": metric, "gap": gaps, "tau": tau, "n": len(both), "methods": both}
    return out
