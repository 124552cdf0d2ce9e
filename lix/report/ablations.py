"""The ablation tables: each ``<method>~<key>=<value>`` run's setting, its family (DWC inputs,
kernel × consistency, fixed-β sweep, other) and the main run that stands for the default setting.

A run's hyper-parameters are read from the run (:func:`run_hyper`), never re-derived from the
registry's defaults: the distiller resolves them once and the trainer writes the result to
``config.json``'s ``distill.resolved_hyper``, the whole truth; a key it does not hold is unknown.
"""

from __future__ import annotations

import math
from typing import Any

from lix.report.names import DISPLAY, display_name, legacy_hyper, parse_method
from lix.report.scan import Run
from lix.report.stats import aggregate, mark_best

AXIS_ORDER = {"dwc_inputs": ("softmax", "softmax_conf", "teacher_softmax_conf"),
              "kernel": ("laplace", "gaussian", "linear", "none"),
              "consistency": ("cka", "cosine", "euclidean", "pearson")}

_FAMILY_AXES = {"dwc_inputs": ("dwc_inputs",), "kernel_consistency": ("kernel", "consistency")}


def _same(a: Any, b: Any) -> bool:
    """Whether two settings are the same value: as numbers where both are, else as text, case ignored."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def run_hyper(method: str, runs: list[Run]) -> tuple[dict, set[str]]:
    """(hyper-parameters, keys assumed) of the runs of ``method`` as they recorded them: the first
    config.json's ``distill.resolved_hyper`` (every value the distiller used, so a key it lacks is
    unknown), then the directory name's pairs (the setting the run is named after; a disagreement
    with config.json is a note, :func:`_hyper_notes`).

    A run whose config.json records no ``resolved_hyper`` was written before the trainer recorded
    it: for it alone the registry's current defaults, updated by what the run was asked for
    (``distill.hyper``), stand in (:func:`legacy_hyper`), and the keys taken from the defaults are
    returned as assumed, so that the report can say so."""
    base, pairs = parse_method(method)
    recorded = next((r.hyper for r in runs if r.hyper is not None), None)
    if recorded is not None:
        h, assumed = dict(recorded), set()
    else:
        given = next((r.given_hyper for r in runs if r.given_hyper is not None), None) or {}
        h = legacy_hyper(base) | given
        assumed = set(h) - set(given) - set(pairs)
    h.update(pairs)
    return h, assumed


def _assumed_note(where: str, keys: set[str], used: tuple[str, ...]) -> list[str]:
    """A note for the keys of ``used`` that came from the registry's defaults, not from the run."""
    shown = [k for k in used if k in keys]
    if not shown:
        return []
    return [f"{where}: config.json records no distill.resolved_hyper (a run from before the trainer wrote it); "
            f"the ablation tables take its {', '.join(shown)} from the registry's current defaults"]


def axis_key(axis: str, value: Any) -> tuple:
    """Sort key of an ablation axis' values: the known order (AXIS_ORDER), then numbers, then text."""
    known = AXIS_ORDER.get(axis, ())
    v = str(value)
    try:
        num = float(v)
    except ValueError:
        num = math.inf
    return (known.index(v) if v in known else len(known), num, v)


def _family(base: str, pairs: dict[str, str], hyper: dict) -> str:
    """Which ablation table a variant belongs to, from the keys its name sets."""
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


def _jsonable(d: dict) -> dict:
    """The values of ``d`` as JSON scalars (anything else as its text)."""
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in d.items()}


def row_key(fam: str, row: dict) -> tuple:
    """Sort key of an ablation row in its family's table: the method's row order, then its setting."""
    order = list(DISPLAY)
    base_key = (order.index(row["base"]) if row["base"] in order else len(order), row["base"])
    p = row["params"]
    if fam == "dwc_inputs":
        return (*base_key, axis_key("dwc_inputs", p.get("dwc_inputs")))
    if fam == "kernel_consistency":
        return (*base_key, axis_key("kernel", p.get("kernel")), axis_key("consistency", p.get("consistency")))
    if fam == "beta_sweep":  # the DWC reference last
        return (*base_key, p.get("beta") is None, p.get("beta") or 0.0)
    return (*base_key, row["method"])


def _add_references(ds: str, abl: dict, by_method: dict, groups: dict, models: list[str]) -> list[str]:
    """The main run of a method stands for its default setting in the ablation tables (marked
    ``source: main run``), unless an ablation run already covers that setting; the fixed-β sweep's
    reference is ``<method>~controller=dwc`` or the main run when its controller is the DWC.
    Returns the notes on settings assumed (:func:`run_hyper`)."""
    notes = []
    for fam, axes in _FAMILY_AXES.items():
        for base in sorted({r["base"] for r in abl[fam]}):
            if base not in by_method:
                continue
            rs = [r for m in models for r in groups.get((m, base), [])]
            h, assumed = run_hyper(base, rs)
            notes += _assumed_note(f"{ds}/{base}", assumed, axes)
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
            h, assumed = run_hyper(base, rs)
            notes += _assumed_note(f"{ds}/{base}", assumed, ("controller",))
            if str(h.get("controller")) == "dwc":
                abl["beta_sweep"].append({"method": base, "base": base, "display": display_name(base),
                                          "params": {"controller": "dwc", "beta": None}, "source": "main run",
                                          "cells": _cells_of(by_method[base], groups, base, fam_models)})
    return notes


def _cells_of(row: dict, groups: dict, method: str, models: list[str]) -> dict:
    """A main-table row's cells for the models that ran it, as fresh copies (own bold flags)."""
    return {m: {**row["cells"][m], "bold": []} for m in models if groups.get((m, method))}


def _hyper_notes(rs: list[Run], pairs: dict) -> list[str]:
    """Runs whose config.json contradicts the setting their directory is named after."""
    notes = []
    for r in rs:
        for k, v in pairs.items():
            if r.hyper is not None and k in r.hyper and not _same(r.hyper[k], v):
                notes.append(f"{r.name}: the directory name says {k}={v}, config.json says {k}={r.hyper[k]!r}")
    return notes


def ablation_rows(ds: str, models: list[str], groups: dict[tuple[str, str], list[Run]], by_method: dict,
                  methods: list[str]) -> tuple[dict[str, list[dict]], list[dict], list[str]]:
    """The ablation tables of one dataset: ({family: rows}, the ablation rows in ``methods`` order
    for the problem list, notes). ``groups``: (model, method) -> runs; ``by_method``: the main
    table's rows by method (the references of the default settings)."""
    abl: dict[str, list[dict]] = {"dwc_inputs": [], "kernel_consistency": [], "beta_sweep": [], "other": []}
    checked, notes = [], []
    for method in methods:
        base, pairs = parse_method(method)
        cells, hyper, assumed = {}, {}, set()
        for model in models:
            rs = groups.get((model, method))
            if rs:
                cells[model] = aggregate(rs)
                if not hyper:
                    hyper, assumed = run_hyper(method, rs)
                notes += _hyper_notes(rs, pairs)
        fam = _family(base, pairs, hyper)
        axes = _FAMILY_AXES.get(fam, tuple(pairs))
        params = {k: hyper.get(k) for k in axes}
        if fam == "beta_sweep":
            params = {"controller": "fixed", "beta": float(pairs["beta"])}
        notes += _assumed_note(f"{ds}/{method}", assumed, ("controller",) if fam == "beta_sweep" else axes)
        abl[fam].append({"method": method, "base": base, "display": display_name(method),
                         "params": _jsonable(params), "source": "ablation", "cells": cells})
        checked.append({"method": method, "cells": cells})
    notes += _add_references(ds, abl, by_method, groups, models)
    for fam, rows in abl.items():
        if fam == "kernel_consistency":  # the paper's Table V is mFsc
            for base in sorted({r["base"] for r in rows}):
                for model in models:
                    mark_best([r["cells"].get(model) for r in rows if r["base"] == base], ("mfsc",))
        else:
            for model in models:
                mark_best([r["cells"].get(model) for r in rows])
        rows.sort(key=lambda r: row_key(fam, r))
    return abl, checked, notes
