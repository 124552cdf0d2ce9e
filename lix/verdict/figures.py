"""The verdict of a profile, from its ledger alone (lix.sweep.ledger): per dataset and model, each
method's figures over seeds, the premise (teacher over plain student), seed-paired differences
with a 95 % interval (LIX against the plain student, DKD and the best other baseline), the share
of the teacher-student gap each method closes beside the paper's, the rank agreement with the
paper, the DWC's weights, stopping epochs and reasons, per-class IoU, and the cost. Pure
functions of the ledger's lines; :mod:`lix.verdict.markdown` writes them out."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from lix.report.paper import gap_closed, kendall_tau

METRICS = ("mfsc", "fwfsc", "miou", "fwiou")
TEACHER, STUDENT, LIX, DKD = "teacher", "student", "lix", "dkd"
PREMISE_PP = 5.0  # the premise the profile must meet: teacher - plain student >= 5 mIoU points (mean over seeds)
DWC_KEYS = ("w_mean", "w_std_class", "w_std_pixel", "w_at_bound")
# Student's t quantile t_{0.975, df} for df = 1..30 (standard tables); beyond, the normal 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_std(values) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """Seed-paired a − b (points) over the seeds both have: mean, sample std, the 95 % interval of
    the mean difference (Student's t, n − 1 degrees of freedom), and how many seeds have a > b."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = mean_std(diffs)
    ci = None
    if mean is not None and std is not None:
        half = t975(len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = (mean - half, mean + half)
    return {"n": len(diffs), "mean": mean, "std": std, "ci95": ci, "agree": sum(d > 0 for d in diffs),
            "seeds": seeds}


def _cell(lines: list[dict]) -> dict:
    """One method's figures over its seeds (percent)."""
    by_seed = {ln["seed"]: ln for ln in lines}
    metrics = {}
    for m in METRICS:
        values = {s: 100.0 * ln["metrics"][m] for s, ln in by_seed.items() if ln["metrics"].get(m) is not None}
        mean, std = mean_std(values.values())
        metrics[m] = {"mean": mean, "std": std, "values": values}
    classes: dict[str, list[float]] = defaultdict(list)
    for ln in by_seed.values():
        for c, v in (ln["metrics"].get("per_class_iou") or {}).items():
            if v is not None:
                classes[c].append(100.0 * v)
    dwc = {}
    for k in DWC_KEYS:
        vals = [(ln.get("last") or {}).get(f"train/diag.dwc.{k}") for ln in by_seed.values()]
        if any(v is not None for v in vals):
            dwc[k] = mean_std(vals)
    epochs = [ln.get("best_epoch") for ln in by_seed.values() if ln.get("best_epoch") is not None]
    return {"n": len(by_seed), "seeds": sorted(by_seed), "metrics": metrics,
            "per_class_iou": {c: statistics.fmean(v) for c, v in classes.items()},
            "best_epoch_median": statistics.median(epochs) if epochs else None,
            "epochs_run": [ln.get("epochs") for ln in by_seed.values()],
            "hit_cap": sum(ln.get("stopped") == "max_epochs" for ln in by_seed.values()),
            "stopped": _count(ln.get("stopped") for ln in by_seed.values()),
            "dwc": dwc, "seconds": sum(ln.get("seconds") or 0.0 for ln in by_seed.values()),
            "curves": {s: curve_points(ln) for s, ln in by_seed.items()}}


def curve_points(line: dict) -> list[tuple[int, float]]:
    """A ledger line's val mIoU curve as (epoch, value) pairs. Lines written before the ledger kept
    ``curve_epochs`` hold the values alone; their evaluations were evenly spaced and the last
    came at the last epoch, so evaluation k (from 1) was at epoch k * epochs / len(curve), when
    that spacing is a whole number (else the evaluation's number stands in for its epoch)."""
    values = line.get("curve") or []
    epochs = line.get("curve_epochs")
    if epochs is None or len(epochs) != len(values):
        n, last = len(values), line.get("epochs")
        step = last // n if n and isinstance(last, int) and last % n == 0 else 1
        epochs = [step * (k + 1) for k in range(n)]
    return list(zip((int(e) for e in epochs), values))


def _count(items) -> dict:
    out: dict[str, int] = {}
    for i in items:
        out[str(i)] = out.get(str(i), 0) + 1
    return dict(sorted(out.items()))


def group_lines(lines: list[dict], methods: list[str] | None = None, skip: tuple[str, ...] = ()
                ) -> tuple[list[str], dict[tuple[str, str], dict[str, list[dict]]]]:
    """(the methods in row order, (dataset, model) -> method -> its ledger lines), ``skip``'s
    methods left out. Row order: ``methods``' (those the ledger has), then the ledger's others in
    their first appearance."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for ln in lines:
        if ln["method"] in skip:
            continue
        groups[(ln["dataset"], ln["model"])][ln["method"]].append(ln)
        if ln["method"] not in order:
            order.append(ln["method"])
    wanted = methods or []
    return [m for m in wanted if m in order] + [m for m in order if m not in wanted], groups


def verdict(lines: list[dict], paper: dict | None = None, methods: list[str] | None = None) -> dict:
    """The verdict of ``lines`` (a ledger's): dataset -> model -> the figures listed in the module
    docstring. ``paper``: lix.report.paper's validated figures (for the gap closed and the rank
    agreement); ``methods``: the order of the rows (default: the ledger's first appearance)."""
    order, groups = group_lines(lines, methods)
    out: dict[str, dict] = {}
    for (ds, model), by_method in groups.items():
        cells = {m: _cell(by_method[m]) for m in order if m in by_method}
        out.setdefault(ds, {})[model] = _compare(ds, model, cells, paper)
    return out


def _miou(cells: dict, m: str) -> dict[int, float]:
    return cells[m]["metrics"]["miou"]["values"] if m in cells else {}


def _compare(ds: str, model: str, cells: dict, paper: dict | None) -> dict:
    premise = paired(_miou(cells, TEACHER), _miou(cells, STUDENT))
    premise["holds"] = premise["mean"] is not None and premise["mean"] >= PREMISE_PP
    baselines = [m for m in cells if m not in (TEACHER, STUDENT, LIX)]
    means = {m: cells[m]["metrics"]["miou"]["mean"] for m in baselines}
    means = {m: v for m, v in means.items() if v is not None}
    best = max(means, key=means.get) if means else None
    comparisons = {}
    for other in (STUDENT, DKD, best):
        if other and other in cells and LIX in cells and f"lix vs {other}" not in comparisons:
            comparisons[f"lix vs {other}"] = {**paired(_miou(cells, LIX), _miou(cells, other)), "other": other}
    rows = ((paper or {}).get("datasets", {}).get(ds) or {}).get("rows", {})

    def paper_value(m: str) -> float | None:
        v = rows.get(m, {}).get(model, {}).get("miou")
        return float(v) if v is not None else None

    gap = {}
    for m in cells:
        if m in (TEACHER, STUDENT):
            continue
        gap[m] = {"ours": _gap_on_shared_seeds(_miou(cells, m), _miou(cells, STUDENT), _miou(cells, TEACHER)),
                  "paper": gap_closed(paper_value(m), paper_value(STUDENT), paper_value(TEACHER))}
    both = [m for m in gap if cells[m]["metrics"]["miou"]["mean"] is not None and paper_value(m) is not None]
    tau = kendall_tau([cells[m]["metrics"]["miou"]["mean"] for m in both], [paper_value(m) for m in both]) \
        if len(both) >= 2 else None
    return {"cells": cells, "premise": premise, "best_baseline": best, "comparisons": comparisons, "gap": gap,
            "rank": {"tau": tau, "n": len(both), "methods": both}}


def _gap_on_shared_seeds(method: dict[int, float], student: dict[int, float],
                        teacher: dict[int, float]) -> float | None:
    """The share of the gap ``method`` closes, on the means over the seeds all three have (so
    that a method short of some seeds is not set against another seed set's teacher and
    student); None when they share none."""
    seeds = set(method) & set(student) & set(teacher)
    if not seeds:
        return None
    return gap_closed(*(statistics.fmean(d[s] for s in seeds) for d in (method, student, teacher)))


def totals(lines: list[dict]) -> dict:
    """What the ledger cost and where it ran: runs, the CPU time (each run's wall time x its
    threads), machines, commits, code digests (as each run recorded it; ``rekeyed``: the code
    digests ``lix sweep --rekey`` keyed lines on since), dates."""
    cpu = sum((ln.get("seconds") or 0.0) * int(ln.get("threads") or 1) for ln in lines)
    return {"runs": len(lines), "cpu_hours": cpu / 3600.0, "run_hours": sum(ln.get("seconds") or 0.0
                                                                           for ln in lines) / 3600.0,
            "machines": _count(ln.get("machine") for ln in lines), "commits": _count(ln.get("commit") for ln in lines),
            "code_digests": _count(ln.get("code_digest") for ln in lines),
            "rekeyed": _count((ln.get("rekeyed") or {}).get("code_digest") for ln in lines if ln.get("rekeyed")),
            "first": min((ln.get("date") or "" for ln in lines), default=""),
            "last": max((ln.get("date") or "" for ln in lines), default="")}
