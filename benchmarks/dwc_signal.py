"""Which training signal should the dynamic weight controller get? (issue 17, Fig. 4a)

For one dataset: a teacher per seed, then per seed one MFNet student for each variant below,
all with the same recipe (``train.<dataset>`` of params.yaml, ``--epochs`` epochs, the same
patience), in parallel processes. Prints and writes (``<out>/<dataset>.jsonl``, a line per run as
it finishes; ``<out>/<dataset>-summary.md``) the best val mIoU / mFsc per run and, for every run
with varying weights, what the weights do on the val split (lix.report.dwc.dwc_statistics: spread
across classes and pixels, share at a bound, correlation with the student's per-class error).

Variants: the plain student; DKD with fixed β ∈ {1, 2, 4, 8, 10} (Fig. 4a); DWLD with the DWC
trained ``adversarial`` (ours), ``joint`` (the literal reading of minimising (18), generalized
and the paper's signed terms), ``lookahead`` (one-step virtual update, Ren et al. 2018); and the
parameter-free ``confidence`` control.

    python benchmarks/dwc_signal.py --dataset vkitti2 --epochs 25 --jobs 14 --device cuda
    python benchmarks/dwc_signal.py --dataset vkitti2 --epochs 1 --seeds 0 --variants student dkd-b8 lookahead

Runs land in ``<out>/runs/<dataset>/<variant>/seed<k>``; finished runs are not retrained (their
results are read back), so an interrupted call resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS: dict[str, tuple[str, dict]] = {
    "student": ("student", {}),
    **{f"dkd-b{b}": ("dkd", {"beta": float(b)}) for b in (1, 2, 4, 8, 10)},
    "adversarial": ("dwld", {"dwc_training": "adversarial"}),
    "joint": ("dwld", {"dwc_training": "joint"}),
    "joint-paper": ("dwld", {"dwc_training": "joint", "ncld_terms": "paper"}),
    "lookahead": ("dwld", {"dwc_training": "lookahead"}),
    "confidence": ("dwld", {"controller": "confidence"}),
}


def _cfg(params_file: str, dataset: str, seed: int, epochs: int, device: str, workers: int):
    from lix.config import load_params

    cfg = load_params(params_file).train_config(dataset, "mfnet", seed)
    return dataclasses.replace(cfg, epochs=epochs, device=device, num_workers=workers)


def _job(kind: str, dataset: str, shards: str, out: str, seed: int, epochs: int, device: str, workers: int,
         params_file: str, variant: str | None = None, teacher: str | None = None) -> dict:
    """One run in its own process (one CPU thread: the jobs share the machine)."""
    import torch

    torch.set_num_threads(1)
    from lix.distill.train import distill_fit
    from lix.train import fit

    cfg = _cfg(params_file, dataset, seed, epochs, device, workers)
    t0 = time.perf_counter()
    if kind == "teacher":
        summary = fit(shards, out, cfg, dataset=dataset, role="teacher", progress=False)
    else:
        method, hyper = VARIANTS[variant]
        summary = distill_fit(shards, out, cfg, dataset=dataset, method=method, teacher_checkpoint=teacher,
                              hyper=hyper, progress=False)
    from lix.evaluate import evaluate_checkpoint

    evaluate_checkpoint(Path(out) / "best.pt", shards, out, progress=False, device=device,
                        metrics=summary.get("best_val"))  # metrics.json: per-class IoU, no second pass
    result = _result(summary, out, kind, variant, seed, time.perf_counter() - t0)
    if kind == "student" and VARIANTS[variant][0] == "dwld":
        from lix.report.dwc import dwc_statistics

        result["weights"] = dwc_statistics(out, shards, teacher, device=device)
    return result


def _result(summary: dict, out: str, kind: str, variant: str | None, seed: int, seconds: float) -> dict:
    best = summary.get("best_val") or {}
    return {"kind": kind, "variant": variant, "seed": seed, "miou": summary.get("best_miou"),
            "mfsc": best.get("mfsc"), "best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs"),
            "stop": summary.get("stopped"), "seconds": round(seconds, 1), "dir": out}


def _fmt(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def summarise(rows: list[dict], dataset: str, header: str) -> str:
    """The markdown table: variant | mIoU | mFsc (mean ± sample std over seeds, n) | weights."""
    lines = [header, "", "| variant | n | mIoU | mFsc | best epoch | w mean | w std (classes) | "
             "w std (pixels) | at a bound | corr(w, error) |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = ["teacher", *VARIANTS]
    for name in order:
        rs = [r for r in rows if (r["variant"] or "teacher") == name and r.get("miou") is not None]
        if not rs:
            continue
        w = [r.get("weights") or {} for r in rs]
        pct = [x * 100 if x is not None else None for x in (r.get("mfsc") for r in rs)]
        lines.append(f"| {name} | {len(rs)} | {_fmt([r['miou'] * 100 for r in rs])} | {_fmt(pct)} | "
                     f"{_fmt([r['best_epoch'] for r in rs])} | {_fmt([x.get('w_mean') for x in w])} | "
                     f"{_fmt([x.get('w_std_class') for x in w])} | {_fmt([x.get('w_std_pixel') for x in w])} | "
                     f"{_fmt([100 * x['w_at_bound'] if 'w_at_bound' in x else None for x in w])} % | "
                     f"{_fmt([x.get('corr_error') for x in w])} |")
    return "\n".join(lines) + "\n"


SIGNALS = ("adversarial", "joint", "joint-paper", "lookahead", "confidence")  # the DWC's candidates
MAX_AT_BOUND = 0.5   # degenerate: more than half of the non-target weights within 1 % of a bound
MIN_SPREAD = 0.05    # degenerate: spread across classes + across pixels below this (one fixed β)


def select_default(per_dataset: dict[str, list[dict]]) -> tuple[str | None, dict[str, dict]]:
    """The selection rule fixed before the measurement (README, "DWC training signal"): among the
    DWC signals, the one with the highest val mIoU averaged over the datasets (each the mean over
    its seeds) that is not degenerate on any dataset (mean over seeds: share at a bound ≤ 0.5 and
    spread across classes + across pixels ≥ 0.05). ``per_dataset``: dataset -> the jsonl rows.
    Returns (the chosen signal or None, signal -> {"miou": {ds: mean}, "score", "degenerate", "why"})."""
    table: dict[str, dict] = {}
    for sig in SIGNALS:
        miou, why = {}, []
        for ds, rows in per_dataset.items():
            rs = [r for r in rows if r.get("variant") == sig and r.get("miou") is not None]
            if not rs:
                continue
            miou[ds] = 100 * sum(r["miou"] for r in rs) / len(rs)
            w = [r.get("weights") or {} for r in rs]
            at_bound = sum(x.get("w_at_bound", 0.0) for x in w) / len(w)
            spread = sum(x.get("w_std_class", 0.0) + x.get("w_std_pixel", 0.0) for x in w) / len(w)
            if at_bound > MAX_AT_BOUND:
                why.append(f"{ds}: {100 * at_bound:.0f} % of the weights at a bound")
            if spread < MIN_SPREAD:
                why.append(f"{ds}: spread {spread:.3f} < {MIN_SPREAD}")
        if miou:
            complete = len(miou) == len(per_dataset)
            table[sig] = {"miou": miou, "score": sum(miou.values()) / len(miou) if complete else None,
                          "degenerate": bool(why), "why": why}
    ok = [s for s, v in table.items() if not v["degenerate"] and v["score"] is not None]
    return (max(ok, key=lambda s: table[s]["score"]) if ok else None), table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--shards", default=None, help="default data/shards/<dataset>")
    ap.add_argument("--out", default="data/dwc_signal", help="results (jsonl, summary)")
    ap.add_argument("--runs", default=None, help="run directories (default <out>/runs)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=25, help="epochs of every student (and teacher)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="default --epochs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per student run")
    ap.add_argument("--teacher-workers", type=int, default=None, help="DataLoader workers per teacher run "
                    "(default --workers; the teachers run first, so they can use the cores the students will)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--select", nargs="+", metavar="DATASET", default=None,
                    help="train nothing: apply the selection rule to <out>/<dataset>.jsonl of these datasets")
    a = ap.parse_args(argv)
    if a.select:
        rows = {ds: [json.loads(ln) for ln in (Path(a.out) / f"{ds}.jsonl").read_text().splitlines()]
                for ds in a.select}
        chosen, table = select_default(rows)
        for sig, v in table.items():
            score = "–" if v["score"] is None else f"{v['score']:.2f}"
            print(f"{sig:12s} " + " ".join(f"{ds} {m:.2f}" for ds, m in v["miou"].items()) +
                  f"  mean {score}" + (f"  DEGENERATE ({'; '.join(v['why'])})" if v["degenerate"] else ""))
        print(f"default: {chosen}")
        return 0
    shards = a.shards or f"data/shards/{a.dataset}"
    out = Path(a.out)
    runs = Path(a.runs or out / "runs") / a.dataset
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{a.dataset}.jsonl"
    done = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["kind"], r["variant"], r["seed"])] = r
    rows = list(done.values())
    ctx = mp.get_context("spawn")
    t_epochs = a.teacher_epochs or a.epochs
    start = time.time()

    def record(r: dict) -> None:
        rows.append(r)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"[{time.time() - start:7.1f}s] {r['kind']:7s} {r['variant'] or '':12s} seed{r['seed']} "
              f"mIoU {100 * (r['miou'] or 0):.2f} best epoch {r['best_epoch']} ({r['seconds']:.0f}s)", flush=True)

    with cf.ProcessPoolExecutor(max_workers=a.jobs, mp_context=ctx) as pool:
        teachers, futures = {}, {}
        for seed in a.seeds:
            tdir = runs / "teacher" / f"seed{seed}"
            teachers[seed] = str(tdir / "best.pt")
            if ("teacher", None, seed) not in done:
                t_workers = a.workers if a.teacher_workers is None else a.teacher_workers
                futures[pool.submit(_job, "teacher", a.dataset, shards, str(tdir), seed, t_epochs, a.device,
                                    t_workers, a.params)] = ("teacher", None, seed)
        pending_students = [(v, s) for s in a.seeds for v in a.variants if ("student", v, s) not in done]

        def submit_ready() -> None:
            for v, s in list(pending_students):
                if ("teacher", None, s) in done or any(r["kind"] == "teacher" and r["seed"] == s for r in rows):
                    pending_students.remove((v, s))
                    futures[pool.submit(_job, "student", a.dataset, shards, str(runs / v / f"seed{s}"), s,
                                        a.epochs, a.device, a.workers, a.params, v, teachers[s])] = ("student", v, s)

        submit_ready()
        while futures:
            finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                key = futures.pop(fut)
                try:
                    record(fut.result())
                except Exception as e:  # one failed run must not stop the others
                    print(f"FAILED {key}: {type(e).__name__}: {e}", flush=True)
                    with open(out / f"{a.dataset}-failed.txt", "a") as f:
                        f.write(f"{key}: {type(e).__name__}: {e}\n")
            submit_ready()

    import torch

    header = (f"### DWC training signal on {a.dataset}: MFNet, {a.epochs} epochs (teachers {t_epochs}), seeds "
              f"{a.seeds}; {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}; "
              f"{time.time() - start:.0f} s wall")
    text = summarise(rows, a.dataset, header)
    (out / f"{a.dataset}-summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
