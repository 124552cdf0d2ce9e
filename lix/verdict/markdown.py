"""The verdict of a profile written out from its ledger: ``README.md`` (the tables, the premise,
the paired comparisons, the gap closed beside the paper's, the rank agreement, the DWC's weights,
the stopping epochs, per-class IoU, what it cost and where it ran), ``verdict.json`` (the same
figures) and two small pictures per dataset and model (mIoU per method with every seed; the
mean val curve of the teacher, the plain student, LIX, DKD and the best other baseline)."""

from __future__ import annotations

from pathlib import Path

from lix.report.names import display_dataset, display_model
from lix.report.plot import epoch_axis, new_figure, save_png
from lix.verdict.figures import DKD, LIX, PREMISE_PP, STUDENT, TEACHER, totals, verdict
from pipeline.atomic import write_json, write_text


def _pm(m: dict, digits: int = 2) -> str:
    if m.get("mean") is None:
        return "–"
    return f"{m['mean']:.{digits}f}" + (f" ± {m['std']:.{digits}f}" if m.get("std") is not None else "")


def _pp(v: float | None, digits: int = 2, sign: bool = True) -> str:
    return "–" if v is None else f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def write_verdict(lines: list[dict], out_dir: str | Path, *, paper: dict | None, command: str, title: str,
                  methods: list[str] | None = None, plots: bool = True) -> dict:
    """Write the verdict of ``lines`` into ``out_dir``; returns what verdict.json holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    v, t = verdict(lines, paper, methods), totals(lines)
    md = [f"# {title}", "", f"Made by `{command}` from `ledger.jsonl` alone ({t['runs']} runs). The ledger's "
          f"runs: {t['first']} to {t['last']}; run time {t['run_hours']:.1f} h, CPU time {t['cpu_hours']:.1f} "
          f"h (each run's wall time x its threads).", "",
          "Machines: " + "; ".join(f"{k} ({n} runs)" for k, n in t["machines"].items()) + ".",
          "Commits: " + ", ".join(f"`{k[:12]}`{'+dirty' if k.endswith('+dirty') else ''} ({n})"
                                  for k, n in t["commits"].items()) + "; training-code digests: "
          + ", ".join(f"`{k[:12]}` ({n})" for k, n in t["code_digests"].items())
          + ("; rekeyed (`lix sweep --rekey`: proven the same training code) to "
             + ", ".join(f"`{k[:12]}` ({n})" for k, n in t["rekeyed"].items()) if t["rekeyed"] else "") + ".", ""]
    for ds, per_model in v.items():
        for model, r in per_model.items():
            md += _section(ds, model, r, out_dir, plots)
    write_text(out_dir / "README.md", "\n".join(md) + "\n")
    summary = {"totals": t, "verdict": _jsonable(v), "command": command}
    write_json(out_dir / "verdict.json", summary, nan_as_null=True)
    return summary


def _section(ds: str, model: str, r: dict, out_dir: Path, plots: bool) -> list[str]:
    cells, prem = r["cells"], r["premise"]
    name = f"{display_dataset(ds)} · {display_model(model)}"
    md = [f"## {name}", ""]
    if prem["mean"] is not None:
        md += [f"**Premise** (teacher − plain student, mean over {prem['n']} seeds): {prem['mean']:+.2f} mIoU points "
               f"(95 % interval {_pp(prem['ci95'][0]) if prem['ci95'] else '–'} to "
               f"{_pp(prem['ci95'][1]) if prem['ci95'] else '–'}): "
               + ("holds" if prem["holds"] else f"**does not hold** (needs ≥ {PREMISE_PP:g})") + ".", ""]
    md += ["| method | n | mFsc | fwFsc | mIoU | fwIoU | gap closed (ours) | gap closed (paper) | best epoch "
           "(median) | stopped |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, c in cells.items():
        g = r["gap"].get(m, {})
        stopped = ", ".join(f"{k} {n}" for k, n in c["stopped"].items())
        figures = " | ".join(_pm(c["metrics"][k]) for k in ("mfsc", "fwfsc", "miou", "fwiou"))
        md.append(f"| {m} | {c['n']} | {figures} | {_pct(g.get('ours'))} | {_pct(g.get('paper'))} | "
                  f"{_epoch(c['best_epoch_median'])} | {stopped} |")
    md += ["", "Percent, mean ± sample std over seeds; each run's checkpoint chosen on val mIoU (early stopping) "
           "and scored on val. Gap closed: (method − student) / (teacher − student) on mean mIoU over the "
           "seeds all three have. "
           "\"max_epochs\": the run hit the profile's epoch cap before its patience ran out.", ""]
    if r["comparisons"]:
        md += ["| comparison (mIoU, seed-paired) | n | mean difference | 95 % interval | seeds LIX ahead |",
               "|---|---|---|---|---|"]
        for label, p in r["comparisons"].items():
            ci = f"{_pp(p['ci95'][0])} to {_pp(p['ci95'][1])}" if p["ci95"] else "–"
            note = " (the best other baseline by mean mIoU on this same val split)" \
                if p["other"] == r["best_baseline"] and p["other"] not in (STUDENT, DKD) else ""
            md.append(f"| {label}{note} | {p['n']} | {_pp(p['mean'])} | {ci} | {p['agree']} of {p['n']} |")
        md.append("")
    rank = r["rank"]
    if rank["tau"] is not None:
        md += [f"Rank agreement with the paper's Table (mIoU, {rank['n']} distillation methods both have): Kendall's "
               f"τ = {rank['tau']:+.2f}.", ""]
    dwc = {m: c["dwc"] for m, c in cells.items() if c["dwc"]}
    if dwc:
        md += ["DWC weights (last training epoch, mean over seeds): " + "; ".join(
            f"{m}: mean {_pm(_ms(d.get('w_mean')))}, std across classes {_pm(_ms(d.get('w_std_class')))}, "
            f"across pixels {_pm(_ms(d.get('w_std_pixel')))}, at a bound {_pm(_ms(d.get('w_at_bound')), 3)}"
            for m, d in dwc.items()) + ".", ""]
    focus = [m for m in dict.fromkeys((TEACHER, STUDENT, LIX, DKD, r["best_baseline"])) if m in cells]
    classes = sorted({c for m in focus for c in cells[m]["per_class_iou"]})
    if classes:
        md += ["| class (IoU %) | " + " | ".join(focus) + " |", "|---" * (len(focus) + 1) + "|"]
        for cls in classes:
            md.append(f"| {cls} | " + " | ".join(_pp(cells[m]["per_class_iou"].get(cls), 1, sign=False)
                                                for m in focus) + " |")
        md.append("")
    if plots:
        stem = f"{ds}-{model}"
        _bars(cells, name, out_dir / f"{stem}-miou.png")
        _curves({m: cells[m] for m in focus}, name, out_dir / f"{stem}-curves.png")
        md += [f"![mIoU per method, every seed]({stem}-miou.png) ![val mIoU over training]({stem}-curves.png)", ""]
    return md


def _ms(pair) -> dict:
    return {"mean": pair[0], "std": pair[1]} if pair else {}


def _epoch(x: float | None) -> str:
    """A median epoch: whole when it is one (81, not 81.0), else to the half (80.5)."""
    return "–" if x is None else f"{x:g}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _bars(cells: dict, title: str, path: Path) -> None:
    fig = new_figure(max(4.0, 0.45 * len(cells) + 1.5), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, (m, c) in enumerate(cells.items()):
        vals = list(c["metrics"]["miou"]["values"].values())
        mean = c["metrics"]["miou"]["mean"]
        colour = "tab:red" if m == LIX else "tab:grey" if m in (TEACHER, STUDENT) else "tab:blue"
        if mean is not None:
            ax.bar(i, mean, color=colour, alpha=0.5)
        ax.plot([i] * len(vals), vals, "k.", markersize=3)
    ax.set_xticks(range(len(cells)), list(cells), rotation=60, fontsize=7)
    ax.set_ylabel("val mIoU (%)")
    lows = [v for c in cells.values() for v in c["metrics"]["miou"]["values"].values()]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 5), max(lows) + 3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The mean over seeds of (epoch, value) curves, split where the first seed stopped: (the
    epochs every seed reached, the later ones, each with the mean over the seeds still running).
    The later part is a mean over fewer and fewer runs (those that kept improving), so it is
    drawn apart rather than joined to the first."""
    at: dict[int, list[float]] = {}
    for cv in curves:
        for e, v in cv:
            at.setdefault(e, []).append(v)
    n = len(curves)
    points = [(e, sum(v) / len(v), len(v) == n) for e, v in sorted(at.items())]
    last_full = max((i for i, (_, _, full) in enumerate(points) if full), default=-1)
    return [(e, m) for e, m, _ in points[:last_full + 1]], [(e, m) for e, m, _ in points[last_full + 1:]]


def _curves(cells: dict, title: str, path: Path) -> None:
    fig = new_figure(5.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for m, c in cells.items():
        curves = [cv for cv in c["curves"].values() if cv]
        if not curves:
            continue
        full, tail = mean_curve(curves)
        width = 2.0 if m == LIX else 1.2
        line = None
        if full:
            (line,) = ax.plot([e for e, _ in full], [100 * v for _, v in full], linewidth=width,
                              label=f"{m} (n={len(curves)})")
        if tail:
            joined = full[-1:] + tail  # the dotted part starts where the solid one ends
            ax.plot([e for e, _ in joined], [100 * v for _, v in joined], linestyle=":", linewidth=width,
                    color=line.get_color() if line else None, label=None if line else f"{m} (n={len(curves)})")
    epoch_axis(ax)
    ax.set_ylabel("val mIoU (%), mean over seeds")
    ax.legend(fontsize=7)
    ax.set_title(title + "\n(dotted: after the first seed stopped, mean of the seeds still training)", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
