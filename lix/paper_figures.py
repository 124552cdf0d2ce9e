"""The paper's published figures, quoted beside ours in the report (``lix report --paper``).

The paper's Tables I–III (Guo et al., "LIX: Implicitly Infusing Spatial Geometric Prior Knowledge
into Visual Semantic Segmentation for Autonomous Driving", IEEE TIP 2025, arXiv:2403.08215) are
facts, to be quoted as printed. They are **not shipped**: this project's sandbox could read only
the paper's abstract (no table, no hyper-parameter), and we do not type numbers we cannot check.
Whoever has the paper writes them once into ``data/paper/tables.json``; the report then puts each
published row beside the matching row of ours, with the paper's setting stated next to it, so a
reader sees at once where a setting matches (real data, the paper's resolution and schedule)
and where it does not (the embedded synthetic testbed never does).

Format (JSON; values in percent, as printed in the paper; every key below is checked)::

    {"source": "Guo et al., IEEE TIP 2025, Table I (page, version)",
     "datasets": {
       "vkitti2": {"table": "I", "setting": "vKITTI2, 700 images 5:2, depth from ..., 500 epochs",
                   "rows": {"teacher": {"mfnet": {"mfsc": 0.0, "fwfsc": 0.0, "miou": 0.0, "fwiou": 0.0},
                                        "sne_roadseg": {...}},
                            "student": {...}, "kd": {...}, "lix": {...}}}}}

Dataset keys are registered datasets (``vkitti2``, ``kitti``, ``nuimages``); row keys
``teacher``, ``student`` or a method of ``lix distill --list``; model keys an architecture of the
model registry; metric keys ``mfsc``, ``fwfsc``, ``miou``, ``fwiou`` (any subset: a figure the
paper does not print is left out, never written as 0). Figures are kept as written in the file
(``61.3`` stays ``61.3``, not ``61.30``): quoted, not reformatted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError

METRICS = ("mfsc", "fwfsc", "miou", "fwiou")  # the paper's column order; lix/report.py uses it too
DEFAULT_FILE = "tables.json"


def _known_methods() -> set[str]:
    from lix.distill import method_table

    return {"teacher", "student", *(r["name"] for r in method_table())}


def _known_datasets() -> set[str]:
    from pipeline.sources import READERS

    return set(READERS)


def _known_models() -> set[str]:
    from lix.models import MODELS

    return set(MODELS)


def load_paper_figures(path: str | Path) -> dict | None:
    """The published figures of ``path`` (a JSON file, or a directory holding ``tables.json``),
    validated: {"source": str, "datasets": {dataset: {"table", "setting", "rows": {method:
    {model: {metric: float}}}}}}. None when ``path`` is a directory without ``tables.json``
    (nothing typed in yet). Raises DataError/ConfigError naming the file and key at fault."""
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_FILE
        if not p.is_file():
            return None
    if not p.is_file():
        raise DataError(p, "not found: expected the paper's figures as JSON (format: lix/paper_figures.py)")
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
    extra = set(raw) - {"source", "datasets"}
    need(not extra, ", ".join(sorted(extra)), "unknown key(s); expected 'source' and 'datasets'")
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
    return out
