"""The report's tables beside the main one: the ablations (Tables IV and V layouts, the fixed-β
sweep, other variants) and the paper's published figures with the two scale-free comparisons."""

from __future__ import annotations

from lix.report.ablations import axis_key, row_key
from lix.report.cells import fmt_value, md_table, metric_cells, metric_columns, table_models
from lix.report.names import DISPLAY, METRIC_LABEL, METRICS, display_model, display_name, method_order


def ablation_sections(ds: str, d: dict, plots: list[str]) -> list[str]:
    """The ablation tables of one dataset: DWC inputs (Table IV layout), kernel × consistency (Table V
    layout, mFsc), the fixed-β sweep against the DWC, other variants."""
    name, abl = d["display"], d["ablations"]
    L = []
    if "dwc_inputs" in abl:
        rows = abl["dwc_inputs"]
        models = table_models(d, rows)
        L += [f"### {name}: DWC inputs (Table IV layout)", ""]
        L += md_table(["algorithm", "DWC inputs", *metric_columns(models, d)],
                    [[DISPLAY.get(r["base"], r["base"]), _axis_label(r, "dwc_inputs"),
                      *metric_cells(r["cells"], models)] for r in rows])
        L += ["", "Bold: best per column in this table." + (
            " (main run): the method's main-table run, whose setting this is." if any(
                r["source"] == "main run" for r in rows) else ""), ""]
    if "kernel_consistency" in abl:
        rows = abl["kernel_consistency"]
        L += [f"### {name}: kernel × consistency (Table V layout), mFsc (%)", "",
              "mFsc, the metric of the paper's Table V (its Laplace + CKA cell equals ARFD's mFsc in Table I).", ""]
        for base in sorted({r["base"] for r in rows}, key=lambda b: row_key("", {"base": b, "method": b,
                                                                                    "params": {}})):
            sub = [r for r in rows if r["base"] == base]
            kernels = sorted({_setting(r["params"].get("kernel")) for r in sub}, key=lambda v: axis_key("kernel", v))
            cons = sorted({_setting(r["params"].get("consistency")) for r in sub},
                          key=lambda v: axis_key("consistency", v))
            for model in table_models(d, sub):
                grid = []
                for k in kernels:
                    line = [k]
                    for cn in cons:
                        r = next((r for r in sub if _setting(r["params"].get("kernel")) == k
                                  and _setting(r["params"].get("consistency")) == cn), None)
                        cell = r["cells"].get(model) if r else None
                        text = fmt_value(cell, "mfsc")
                        if cell is not None:
                            text += f" (n={cell['n_ok']}/{cell['n']})" + (" †" if r["source"] == "main run" else "")
                        line.append(text)
                    grid.append(line)
                L += [f"{DISPLAY.get(base, base)}, {d['model_display'][model]} (rows: kernel, columns: consistency):",
                      "", *md_table(["kernel \\ consistency", *cons], grid), ""]
        L += ["†: the method's main-table run (its default setting); bold: best in the grid.", ""]
    if "beta_sweep" in abl:
        rows = abl["beta_sweep"]
        models = table_models(d, rows)
        L += [f"### {name}: fixed β vs the dynamic weight controller", ""]
        L += md_table(["algorithm", "β", *metric_columns(models, d)],
                    [[DISPLAY.get(r["base"], r["base"]),
                      ("DWC" if r["params"]["beta"] is None else f"{r['params']['beta']:g} (fixed)")
                      + (" (main run)" if r["source"] == "main run" else ""),
                      *metric_cells(r["cells"], models)] for r in rows])
        L.append("")
        if f"beta_sweep_{ds}.png" in plots:
            L += [f"![fixed-β sweep, {name}](beta_sweep_{ds}.png)", ""]
    if "other" in abl:
        rows = abl["other"]
        models = table_models(d, rows)
        L += [f"### {name}: other ablations", ""]
        L += md_table(["run", *metric_columns(models, d)], [[f"`{r['method']}`", *metric_cells(r["cells"], models)]
                                                             for r in rows])
        L.append("")
    return L


def _axis_label(row: dict, axis: str) -> str:
    return _setting(row["params"].get(axis)) + (" (main run)" if row["source"] == "main run" else "")


def _setting(value: object) -> str:
    """An ablation axis' value as the table shows it; "unknown" where the run did not record it."""
    return "unknown" if value is None else str(value)


def paper_section(name: str, d: dict, paper: dict, source: str) -> list[str]:
    """The paper's published rows beside ours (lix/report/paper.py): per architecture the
    paper prints, each metric as `paper` and `ours` (mean ± std over our finished seeds)."""
    ours = {row["method"]: row["cells"] for row in d["main"]}
    models = sorted({m for per_model in paper["rows"].values() for m in per_model})
    methods = sorted(set(paper["rows"]) | {m for m in ours if any(mo in ours[m] for mo in models)}, key=method_order)
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
         *md_table(header, rows), ""]
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
    methods = sorted({m for c in comparison.values() for m in c["gap"]}, key=method_order)
    rows = []
    for method in methods:
        cells = []
        for model in models:
            g = comparison[model]["gap"].get(method, {})
            cells += [_share(g.get("ours")), _share(g.get("paper"))]
        rows.append([display_name(method), *cells])
    L += md_table(["algorithm", *(f"{display_model(m)} {who}" for m in models for who in ("ours", "paper"))], rows)
    L.append("")
    for model in models:
        c = comparison[model]
        tau = "–" if c["tau"] is None else f"{c['tau']:+.2f}"
        L.append(f"* {display_model(model)}: Kendall's τ (mIoU) between our ranking and the paper's = {tau} "
                 f"(n = {c['n']} methods).")
    return L + [""]


def _share(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"
