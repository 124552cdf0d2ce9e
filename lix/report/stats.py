"""The report's statistics, pure functions of the scanned runs: one table cell per (dataset, model,
method) in percent over the finished seeds (mean, sample std with ddof=1), the best-on-val vs
last-epoch gap, bold marks and seed-paired differences.
"""

from __future__ import annotations

import statistics
from typing import Iterable

from lix.report.names import ALL_METRICS, METRICS
from lix.report.scan import Run, finite


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values; None where undefined."""
    vals = [v for v in values if finite(v) is not None]
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
            v = finite(by_seed[s].metrics.get(m))
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
                if finite(v) is not None:
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
        v = finite(_last_record(r).get(f"val/{metric}"))
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
            "configured": run.train.get("epochs")}


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
