"""The diagnostics beside a profile's verdict, from its ledger alone: per dataset, model and
student method, the last epoch's training loss term by term, the linear CKA between the
student's and the teacher's features on val (at the chosen checkpoint and, tap by tap, at the
last epoch) and the CKA over training as a picture. They answer "why" when a method does not
win: a distillation term that ends large beside the cross-entropy, a student no closer to the
teacher's features than the plain one.

It was written here, beside the ledger, while lix/verdict still counted in the training-code
digest (an edit there would have made a running matrix's runs stale); both are outside it now.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from lix.verdict.figures import LIX, STUDENT, TEACHER, group_lines, mean_std
from lix.verdict.figures import paired as paired_values

# Columns of the ledger's ``last`` dictionary that are not a loss term.
NOT_A_TERM = ("train/loss", "train/samples_per_s", "train/seconds")
CKA_PREFIX = "val/cka/"
DWC_PREFIX = "train/diag.dwc."
UNIFORM = 0.05  # DWC weights whose std (across classes, across pixels) is under this share of their mean


def _mean(values) -> float | None:
    return mean_std(values)[0]


def chosen_index(curve: list[float]) -> int | None:
    """The evaluation the run's checkpoint comes from: the first maximum of its val mIoU curve
    (early stopping keeps a checkpoint only when val mIoU strictly improves)."""
    if not curve:
        return None
    best = max(curve)
    return curve.index(best)


def chosen_cka(line: dict) -> float | None:
    """The val CKA (mean over the taps) at the evaluation ``line``'s checkpoint was chosen from,
    or None when that evaluation cannot be told for sure: the ``curve`` (val mIoU) and ``cka``
    lists pair evaluations by position only, so they must be equally long, and the curve's
    maximum must be the run's recorded val mIoU (a run killed between logging the two could
    otherwise pair an evaluation with its neighbour's CKA)."""
    curve, cka = line.get("curve") or [], line.get("cka") or []
    i = chosen_index(curve)
    miou = (line.get("metrics") or {}).get("miou")
    if i is None or len(cka) != len(curve) or miou is None or abs(curve[i] - miou) > 1e-5:
        return None
    return cka[i]


def by_seed(lines: list[dict]) -> dict[int, dict]:
    """One line per seed, the ledger's last (as the verdict counts them: lix.verdict.figures)."""
    return {ln["seed"]: ln for ln in lines}


def method_diagnostics(lines: list[dict]) -> dict:
    """One method's diagnostics over its seeds' ledger lines (one per seed: :func:`by_seed`;
    means over the seeds that have each figure): ``terms`` (loss term -> last epoch's training
    value, ``ce`` first), ``total`` (the last epoch's total loss), ``cka_chosen`` (val CKA, mean
    over the taps, at the chosen checkpoint's evaluation: :func:`chosen_cka`), ``cka_last`` (tap
    -> val CKA at the last evaluation, ``mean`` included), ``cka_curves`` (seed -> the CKA
    curve), ``miou`` (val mIoU, percent), ``dwc`` (the DWC's weight statistics of the last
    epoch, when the method has one), ``seeds`` (seed -> its ``miou``, ``cka_chosen``, ``ce``, for
    comparisons paired by seed) and ``n`` (seeds)."""
    terms: dict[str, list[float]] = defaultdict(list)
    taps: dict[str, list[float]] = defaultdict(list)
    dwc: dict[str, list[float]] = defaultdict(list)
    totals: list = []
    curves: dict[int, list[float]] = {}
    seeds: dict[int, dict] = {}
    for seed, ln in sorted(by_seed(lines).items()):
        last = ln.get("last") or {}
        for k, v in last.items():
            if k.startswith("train/") and k not in NOT_A_TERM and not k.startswith("train/diag"):
                terms[k[len("train/"):]].append(v)
            elif k.startswith(CKA_PREFIX):
                taps[k[len(CKA_PREFIX):]].append(v)
            elif k.startswith(DWC_PREFIX):
                dwc[k[len(DWC_PREFIX):]].append(v)
        totals.append(last.get("train/loss"))
        if ln.get("cka"):
            curves[seed] = ln["cka"]
        miou = (ln.get("metrics") or {}).get("miou")
        seeds[seed] = {"miou": None if miou is None else 100.0 * miou, "cka_chosen": chosen_cka(ln),
                       "ce": last.get("train/ce")}
    order = sorted(terms, key=lambda t: (t != "ce", t))
    return {"n": len(seeds), "terms": {t: _mean(terms[t]) for t in order}, "total": _mean(totals),
            "cka_chosen": _mean(v["cka_chosen"] for v in seeds.values()),
            "cka_last": {t: _mean(v) for t, v in sorted(taps.items())}, "cka_curves": curves,
            "miou": _mean(v["miou"] for v in seeds.values()), "dwc": {k: _mean(v) for k, v in sorted(dwc.items())},
            "seeds": seeds}


def diagnostics(lines: list[dict], methods: list[str] | None = None) -> dict:
    """dataset -> model -> method -> :func:`method_diagnostics`, for every method but the
    teacher (whose features are the reference), in ``methods``' order (default: the ledger's)."""
    order, groups = group_lines(lines, methods, skip=(TEACHER,))
    out: dict[str, dict] = {}
    for (ds, model), by_method in groups.items():
        out.setdefault(ds, {})[model] = {m: method_diagnostics(by_method[m]) for m in order if m in by_method}
    return out


def paired(a: dict[int, dict], b: dict[int, dict], key: str) -> tuple[float | None, int]:
    """(mean of a − b over the seeds where both have ``key``, how many seeds): the verdict's
    seed pairing (lix.verdict.figures.paired) on one figure of the per-seed records."""
    p = paired_values(*({s: v[key] for s, v in x.items() if v[key] is not None} for x in (a, b)))
    return p["mean"], p["n"]


def reading(cells: dict) -> list[str]:
    """What the diagnostics of one dataset and model say, as sentences of measured differences
    paired by seed, with their number of seeds (no judgement beyond their signs: a difference
    within one seed's spread is reported like any other, the verdict's intervals say which
    are): each of LIX, DWLD and ARFD against the plain student in mIoU, val CKA with the
    teacher at the chosen checkpoint and the last epoch's training CE; and whether a DWC's
    weights stayed nearly one weight everywhere (then DWLD is close to DKD with that β: with
    equal weights it is DKD exactly, lix/losses/dwld.py)."""
    out = []
    base = cells.get(STUDENT)
    for m in (LIX, "dwld", "arfd"):
        c = cells.get(m)
        if base is None or c is None:
            continue
        (dm, n), (dc, nc), (dce, nce) = (paired(c["seeds"], base["seeds"], k) for k in ("miou", "cka_chosen", "ce"))
        if dm is None or dc is None:
            continue
        verdict = {(True, True): "closer to the teacher's features and more accurate",
                   (True, False): "closer to the teacher's features without gaining accuracy",
                   (False, True): "more accurate without moving toward the teacher's features",
                   (False, False): "neither closer to the teacher's features nor more accurate"}[(dc > 0, dm > 0)]
        ce_text = f", last-epoch train CE {dce:+.3f}" if dce is not None else ""
        seeds = f"{n} seed{'s' if n > 1 else ''}" + (f" ({nc} for the CKA)" if nc != n else "")
        out.append(f"{m} − plain student, paired over {seeds}: mIoU {dm:+.2f} points, val CKA with the teacher at "
                   f"the chosen checkpoint {dc:+.3f}{ce_text}: {verdict}.")
    for m, c in cells.items():
        mean, by_class, by_pixel = (c["dwc"].get(k) for k in ("w_mean", "w_std_class", "w_std_pixel"))
        if mean and by_class is not None and by_pixel is not None:
            one = max(by_class, by_pixel) < UNIFORM * mean
            out.append(f"{m}'s DWC weights at the last epoch (mean over {c['n']} seed{'s' if c['n'] > 1 else ''}): "
                       f"mean {mean:.2f}, std across classes {by_class:.2f} and across pixels {by_pixel:.3f}"
                       + (f": nearly one weight everywhere, so its NCLD is close to DKD's with β ≈ {mean:.1f}."
                          if one else "."))
    return out


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def diagnostics_markdown(diag: dict, out_dir: str | Path, *, focus: tuple[str, ...] = (STUDENT, LIX, "dwld", "arfd",
                                                                                       "dkd"),
                         plots: bool = True) -> list[str]:
    """The "Diagnostics" section of the verdict's README (lines), drawing one CKA-over-training
    picture per dataset and model into ``out_dir`` for the methods of ``focus`` it has."""
    from lix.report.names import display_dataset, display_model

    md = ["## Diagnostics", "",
          "Per student method, mean over seeds: the last training epoch's loss terms (each as logged, "
          "before its weight λ), the total loss, and the linear CKA between the student's and the teacher's "
          "features on the first 16 val images (lix/distill/monitor.py; 1 = the same up to a rotation and "
          "scale; \"chosen\": at the evaluation the checkpoint was chosen from, mean over the taps; then "
          "each tap at the last evaluation).", ""]
    for ds, per_model in diag.items():
        for model, cells in per_model.items():
            name = f"{display_dataset(ds)} · {display_model(model)}"
            taps = [t for t in dict.fromkeys(t for c in cells.values() for t in c["cka_last"]) if t != "mean"]
            md += [f"### {name}", "",
                   "| method | n | train ce | distillation terms | train loss | CKA chosen | "
                   + " | ".join(f"CKA {t} (last)" for t in taps) + " |",
                   "|---" * (6 + len(taps)) + "|"]
            for m, c in cells.items():
                kd = ", ".join(f"{t} {_f(v)}" for t, v in c["terms"].items() if t != "ce") or "–"
                md.append(f"| {m} | {c['n']} | {_f(c['terms'].get('ce'))} | {kd} | {_f(c['total'])} | "
                          f"{_f(c['cka_chosen'])} | "
                          + " | ".join(_f(c["cka_last"].get(t)) for t in taps) + " |")
            md.append("")
            sentences = reading(cells)
            md += [f"* {sentence}" for sentence in sentences] + ([""] if sentences else [])
            shown = {m: cells[m] for m in focus if m in cells and cells[m]["cka_curves"]}
            if plots and shown:
                stem = f"{ds}-{model}-cka"
                _cka_curves(shown, name, Path(out_dir) / f"{stem}.png")
                md += [f"![val CKA with the teacher over training]({stem}.png)", ""]
    return md


def _cka_curves(cells: dict, title: str, path: Path) -> None:
    from lix.report.plot import new_figure, save_png

    fig = new_figure(5.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for m, c in cells.items():
        curves = list(c["cka_curves"].values())
        n = max(len(cv) for cv in curves)
        mean = [statistics.fmean(cv[k] for cv in curves if len(cv) > k) for k in range(n)]
        ax.plot(range(1, n + 1), mean, label=m, linewidth=2.0 if m == LIX else 1.2)
    ax.set_xlabel("evaluation (late ones: mean over the seeds still running)")
    ax.set_ylabel("val CKA with the teacher")
    ax.set_title(f"{title}: mean over taps and seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
