"""Training-step time and peak memory of every distillation method relative to the plain
student step, side by side in one run.

    python benchmarks/distill_step.py                       # CPU: MFNet and SNE-RoadSeg-18, all methods
    python benchmarks/distill_step.py --models mfnet --methods kd dkd lix
    python benchmarks/distill_step.py --preset paper        # a GPU: the paper's sizes, bf16 autocast
    python benchmarks/distill_step.py --preset testbed --threads 1 2 --compare --repeats 3 --breakdown

One step = the frozen teacher's forward (no_grad, its taps hooked), the student's forward with
its taps, the method's terms, backward and the SGD step: exactly what ``lix distill`` runs
(lix/distill/train.py ``StudentWithDistiller``). The baseline is the plain student step
(cross-entropy only). Each configuration runs in its own subprocess; the median of ``--steps``
timed steps after ``--warmup``; memory as in benchmarks/train_step.py (CUDA: max allocated; CPU:
peak RSS growth from before the first step, after the model and the batch exist: the working
set of a step (activations, gradients, optimizer state, the allocator's growth)). Methods with a
pre-training phase are timed in their distillation phase. Goal (issue 10): LIX at most 1.3x the
plain student step, teacher forward included; issue 21 (on the CPU, the testbed's sizes): LIX at
most 1.5x, the logit methods (kd, dkd, cwkd, dist, wsld) at most 1.15x.

``--preset testbed``: the synthetic testbed's training steps, MFNet batch 8 on the crops of
``params.yaml`` (vKITTI2 96x160, nuImages 144x128), 10 classes, the bottom tenth of every label
map ignored (255; crops past a rescaled image are padded so), on ``--threads`` intra-op threads
(default 1 and 2: the sweep runs 2 processes on 2 cores, one thread each). ``--preset profile``:
the same steps at the crops ``lix sweep --profile testbed`` trains on (lix/sweep/profiles/testbed.yaml:
vKITTI2 48x80, nuImages 72x64, from half-size frames). ``--methods`` takes
variants too (``lix~dwc_training=adversarial``).

``--compare`` runs every method also on its reference implementations (``LIX_REFERENCE_LOSSES=1``:
the loss formulas and the NCHW teacher as first written, before issue 21) and prints both ratios
beside issue 21's figures. Every measurement of a method (new or old) follows its own plain
student measurement: a ratio is the median over ``--repeats`` rounds of those pairs' ratios (a
shared machine's load drifts within a run; the pairs see the same load), ms the median step. ``--breakdown`` adds,
per method, the median milliseconds of each part of the step (teacher forward, student forward,
cross-entropy, each loss term's forward, backward, optimizer) and, when the dataset's shards
exist (``data/shards/<dataset>``), loading and augmenting one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from train_step import PRESETS, describe_machine, time_training_step  # noqa: E402  (same folder)

# label -> (model, x channels of the teacher, batch, H, W, extra kwargs, dataset): the testbed's training steps
TESTBED = {"mfnet-vkitti2": ("mfnet", 1, 8, 96, 160, {}, "vkitti2"),
           "mfnet-nuimages": ("mfnet", 1, 8, 144, 128, {}, "nuimages")}
TESTBED_METHODS = ["kd", "dkd", "cwkd", "dist", "wsld", "at", "fitnet", "sp", "vid", "dwld", "arfd", "lix"]
IGNORED_ROWS = 0.1  # testbed: the share of label rows set to 255
# issue 21's figures for the code before it (CPU, testbed sizes): the ratio to the plain student step
ISSUE_OLD = {"lix": "2.4 (2.1-2.8)"}
GOALS = {"lix": 1.5, **{m: 1.15 for m in ("kd", "dkd", "cwkd", "dist", "wsld")}}
REFERENCE_ENV = "LIX_REFERENCE_LOSSES"  # lix/losses/_common.py


TESTBED_PRESETS = ("testbed", "profile")


def profile_testbed(name: str = "testbed") -> dict[str, tuple]:
    """TESTBED at the crops a sweep profile trains on (``lix sweep --profile testbed``: half the
    stored frames, crops of half the default's); batch and classes as in TESTBED."""
    from lix.sweep.profile import load_profile

    sets = load_profile(name).set
    out = {}
    for label, (model, xc, batch, h, w, kw, dataset) in TESTBED.items():
        h, w = sets.get(f"train.{dataset}.crop", [h, w])
        out[label] = (model, xc, batch, int(h), int(w), kw, dataset)
    return out


def profile_resolutions(name: str = "testbed") -> dict[str, float]:
    """dataset -> the profile's ``train.<dataset>.resolution`` (the frames' scale before the crop)."""
    from lix.sweep.profile import load_profile

    sets = load_profile(name).set
    return {d: float(sets[f"train.{d}.resolution"]) for d in {v[6] for v in TESTBED.values()}
            if f"train.{d}.resolution" in sets}


def configurations(preset: str, models: list[str], datasets: list[str] | None = None) -> dict[str, tuple]:
    """label -> (model, xc, batch, H, W, kwargs, dataset or None)."""
    if preset in TESTBED_PRESETS:
        table = TESTBED if preset == "testbed" else profile_testbed()
        return {k: v for k, v in table.items() if v[0] in models and (not datasets or v[6] in datasets)}
    return {m: (m, *PRESETS[preset][m], None) for m in models}


def _build(cfg: dict):
    """(module, student, teacher or None, batch dict, distiller or None, optimizer, loss_of) for one
    configuration, in this process."""
    import torch

    from lix.config import variant_hyper
    from lix.distill import create_distiller, validate_hyper
    from lix.distill.train import StudentWithDistiller
    from lix.inputs import Inputs
    from lix.models import create_model

    model, xc, batch, h, w, kw = cfg["model"], cfg["xc"], cfg["batch"], cfg["h"], cfg["w"], cfg["kw"]
    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    n_classes = 10
    student = create_model(model, n_classes, 0, **kw).to(dev)
    label = torch.randint(0, n_classes, (batch, h, w), device=dev)
    if cfg.get("ignored_rows"):
        label[:, h - max(1, round(h * cfg["ignored_rows"])):] = 255
    batch_data = {"rgb": torch.rand(batch, 3, h, w, device=dev),
                  "depth": torch.rand(batch, 1, h, w, device=dev) * 60 + 2,
                  "depth_valid": torch.ones(batch, 1, h, w, dtype=torch.bool, device=dev),
                  "normals": torch.nn.functional.normalize(torch.randn(batch, 3, h, w, device=dev), dim=1),
                  "label": label}
    x = "depth" if xc == 1 else "normals"
    method = cfg["method"]
    if method is None:
        module, teacher, distiller = student, None, None

        def loss_of():
            return torch.nn.functional.cross_entropy(student(batch_data["rgb"]).float(), batch_data["label"],
                                                     ignore_index=255)
    else:
        name, variant = variant_hyper(method)
        teacher = create_model(model, n_classes, xc, **kw).to(dev).eval().requires_grad_(False)
        distiller = create_distiller(name, student, teacher, **validate_hyper(name, variant))
        if distiller.needs_pretrain:
            distiller.after_pretrain()
        module = StudentWithDistiller(student, distiller, teacher, Inputs(None), Inputs(x)).to(dev)

        def loss_of():
            return module(batch_data)["loss"]
    module.train()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    return module, student, teacher, batch_data, distiller, opt, loss_of


def measure(cfg: dict) -> dict:
    """One configuration's step in this process: {'ms', 'peak_bytes', 'batch', 'size'}."""
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    dev = torch.device(cfg["device"])
    _module, _student, _teacher, _batch, _distiller, opt, loss_of = _build(cfg)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    ms, peak = time_training_step(loss_of, opt, dev, amp, cfg["steps"], cfg["warmup"])
    return {"ms": ms, "peak_bytes": peak, "batch": cfg["batch"], "size": f"{cfg['w']}x{cfg['h']}"}


def breakdown(cfg: dict) -> dict:
    """Median milliseconds of each part of one configuration's step (CPU timings, no autocast):
    teacher_fwd, student_fwd, ce, <term>_fwd for each loss term (the DWLD and ARFD heads apart;
    ``terms_fwd`` for other methods), backward, optimizer, total."""
    import torch

    from lix.distill.base import DistillBatch
    from lix.models.taps import FeatureTaps
    from lix.train import cross_entropy

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.set_flush_denormal(True)
    module, student, _teacher, batch, distiller, opt, _loss_of = _build(cfg)
    times: dict[str, list[float]] = {}

    def timed(key: str, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(key, []).append(1000 * (time.perf_counter() - t0))
        return out

    for _ in range(cfg["warmup"] + cfg["steps"]):
        t_step = time.perf_counter()
        if distiller is None:
            logits = timed("student_fwd", lambda: student(batch["rgb"]))
            loss = timed("ce", lambda: cross_entropy(logits, batch["label"]))
        else:
            t_logits, t_feats = timed("teacher_fwd", lambda: module.teacher_outputs(batch))

            def student_forward():
                with FeatureTaps(student, module.taps) as taps:
                    out = student(*module.student_inputs(batch))
                return out, dict(taps.features)

            s_logits, s_feats = timed("student_fwd", student_forward)
            loss = timed("ce", lambda: cross_entropy(s_logits, batch["label"]))
            sf = module._student_forward(batch) if distiller.wants_student_forward else None
            b = DistillBatch(s_logits.float(), t_logits.float(), batch["label"],
                             {k: v.float() for k, v in s_feats.items()}, {k: v.float() for k, v in t_feats.items()},
                             student_forward=sf)
            terms = {}
            if hasattr(distiller, "dwld"):
                terms["dwld"] = timed("dwld_fwd", lambda: distiller.dwld(
                    b.student_logits, b.teacher_logits, b.target, b.ignore_index, 1, sf,
                    distiller.loss_weights.get("dwld", 1.0)))
            if hasattr(distiller, "arfd"):
                terms["arfd"] = timed("arfd_fwd", lambda: distiller.arfd(b.student_feats, b.teacher_feats, 1))
            if not terms:
                terms = timed("terms_fwd", lambda: distiller(b))
            for name, value in terms.items():
                loss = loss + distiller.loss_weights.get(name, 1.0) * value

        def backward():
            opt.zero_grad(set_to_none=True)
            loss.backward()

        timed("backward", backward)
        timed("optimizer", opt.step)
        times.setdefault("total", []).append(1000 * (time.perf_counter() - t_step))
    return {k: statistics.median(v[cfg["warmup"]:]) for k, v in times.items()}


def data_time(dataset: str, crop: tuple[int, int], batch: int, repeats: int = 5,
              resolution: float = 1.0) -> float | None:
    """Median ms to read, augment, collate and convert one batch of ``dataset``'s training shards on
    one thread (the trainer's ``num_workers: 0`` path; the random rescale range times
    ``resolution``, as lix/loaders.py does); None without the shards."""
    from pathlib import Path

    import torch
    from torch.utils.data import default_collate

    from lix.data import AugmentConfig, ShardDataset
    from lix.loaders import prepare_batch

    shards = Path(__file__).resolve().parents[1] / "data" / "shards" / dataset
    if not (shards / "manifest.json").is_file():
        return None
    torch.set_num_threads(1)
    lo, hi = AugmentConfig().scale
    ds = ShardDataset(shards, "train", augment=AugmentConfig(crop=crop, scale=(lo * resolution, hi * resolution)),
                      verify="none")
    times, start = [], 0
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        items = [ds[(start + i) % len(ds)] for i in range(batch)]
        prepare_batch(default_collate(items), torch.device("cpu"))
        times.append(1000 * (time.perf_counter() - t0))
        start += batch
    return statistics.median(times[1:])


def _run(cfg: dict, reference: bool, what: str = "one") -> dict | str:
    env = dict(os.environ)
    env[REFERENCE_ENV] = "1" if reference else "0"
    proc = subprocess.run([sys.executable, __file__, f"--{what}", json.dumps(cfg)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:120]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_ms(results: list) -> float | None:
    ok = [r["ms"] for r in results if isinstance(r, dict)]
    return statistics.median(ok) if ok else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted([*PRESETS, *TESTBED_PRESETS]), default=None)
    ap.add_argument("--models", nargs="+", default=["mfnet", "sne_roadseg"])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="default: every registered method (testbed: the logit methods, at, fitnet, sp, vid and ours)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--datasets", nargs="+", default=None, help="testbed: the configurations to run (default both)")
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="intra-op threads per measurement (default: testbed 1 and 2; otherwise torch's default)")
    ap.add_argument("--compare", action="store_true",
                    help="also measure the reference implementations (LIX_REFERENCE_LOSSES=1), side by side")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the whole table, interleaved; medians reported")
    ap.add_argument("--breakdown", action="store_true", help="also time each part of every method's step")
    ap.add_argument("--json", default=None, help="also write the ratios as lix report's overhead.json: "
                                                 "{model: {method: {time_ratio, memory_ratio}}, \"machine\": ...}")
    ap.add_argument("--json-full", default=None, help="also write every measurement (old and new, breakdowns)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--parts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    if args.parts:
        print(json.dumps(breakdown(json.loads(args.parts))))
        return
    import torch

    from lix.distill import method_table

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    preset = args.preset or ("paper" if cuda else "cpu")
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    threads = args.threads or ([1, 2] if preset in TESTBED_PRESETS else [None])
    methods = args.methods or (TESTBED_METHODS if preset in TESTBED_PRESETS else [r["name"] for r in method_table()])
    models = ["mfnet"] if preset in TESTBED_PRESETS and args.models == ap.get_default("models") else args.models
    modes = [False, True] if args.compare else [False]
    resolutions = profile_resolutions() if preset == "profile" else {}
    issue_old = ISSUE_OLD if preset == "testbed" else {}  # the issue's figures are at the default crops
    from _machine import cpu_model

    print(f"# distill_step on {describe_machine(device)}; preset {preset}; median of {steps} steps after {warmup}; "
          f"{args.repeats} round(s)" + (", new code and reference (old) side by side" if args.compare else ""))
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the start (other jobs share the machine when it is > 0)")
    ratios: dict = {}
    full: list[dict] = []
    for label, (model, xc, batch, h, w, kw, dataset) in configurations(preset, models, args.datasets).items():
        for nt in threads:
            key = label if len(threads) == 1 else f"{label}-{nt}t"
            base_cfg = dict(model=model, xc=xc, batch=batch, h=h, w=w, kw=kw, device=device, steps=steps,
                            warmup=warmup, threads=nt, ignored_rows=IGNORED_ROWS if preset in TESTBED_PRESETS else 0.0)
            print(f"\n## {key}: {model} {kw or ''} batch {batch} at {w}x{h}, teacher RGB + "
                  f"{'depth' if xc == 1 else 'normals'}, {nt or torch.get_num_threads()} thread(s)")
            # every measurement of a method is paired with a plain student step measured just before it:
            # the ratio of each pair (the machine's load changes over a run), the median over rounds
            results: dict = {(m, ref): [] for m in methods for ref in modes}
            bases: list = []
            for _ in range(args.repeats):
                for method in methods:
                    for ref in modes:
                        base_r = _run({**base_cfg, "method": None}, False)
                        bases.append(base_r)
                        results[(method, ref)].append((_run({**base_cfg, "method": method}, ref), base_r))
            base = _median_ms(bases)
            if base is None:
                print(f"| student (CE only) | failed: {bases[-1]} |", flush=True)
                continue
            base_peak = statistics.median([r["peak_bytes"] for r in bases if isinstance(r, dict)])
            head = "| method | ms/step | x student time | peak | x student memory |"
            if args.compare:
                head += " old ms/step | old x student | issue 21 old | goal |"
            print(head)
            print("|" + "---|" * (head.count("|") - 1))
            print(f"| student (CE only) | {base:.1f} | 1.00 | {base_peak / 2**20:.0f} MiB | 1.00 |"
                  + (f" {base:.1f} | 1.00 | | |" if args.compare else ""))
            for method in methods:
                new = [(r, b) for r, b in results[(method, False)] if isinstance(r, dict) and isinstance(b, dict)]
                if not new:
                    print(f"| {method} | failed: {results[(method, False)][-1][0]} |", flush=True)
                    continue
                ms = statistics.median([r["ms"] for r, _b in new])
                ratio = statistics.median([r["ms"] / b["ms"] for r, b in new])
                peak = statistics.median([r["peak_bytes"] for r, _b in new])
                mem = statistics.median([r["peak_bytes"] / max(b["peak_bytes"], 1) for r, b in new])
                row = f"| {method} | {ms:.1f} | {ratio:.2f} | {peak / 2**20:.0f} MiB | {mem:.2f} |"
                old_ms = old_ratio = None
                if args.compare:
                    old = [(r, b) for r, b in results[(method, True)] if isinstance(r, dict) and isinstance(b, dict)]
                    if old:
                        old_ms = statistics.median([r["ms"] for r, _b in old])
                        old_ratio = statistics.median([r["ms"] / b["ms"] for r, b in old])
                    row += (f" {_fmt(old_ms, '.1f')} | {_fmt(old_ratio)} | {issue_old.get(method, '')} | "
                            f"{('<= %.2f' % GOALS[method]) if method in GOALS else ''} |")
                print(row, flush=True)
                ratios.setdefault(key, {})[method] = {"time_ratio": ratio, "memory_ratio": mem}
                full.append({"config": key, "method": method, "ms": ms, "ratio": ratio, "old_ms": old_ms,
                             "old_ratio": old_ratio, "peak_bytes": peak, "base_ms": base,
                             "pairs": [(r["ms"], b["ms"]) for r, b in new],
                             "old_pairs": [(r["ms"], b["ms"]) for r, b in results.get((method, True), [])
                                           if isinstance(r, dict) and isinstance(b, dict)]})
            if args.breakdown and device == "cpu":
                _print_breakdown(key, base_cfg, [None, *methods], modes, full)
                if dataset is not None and nt in (None, 1):
                    ms_data = data_time(dataset, (h, w), batch, resolution=resolutions.get(dataset, 1.0))
                    print(f"\nloading + augmenting one batch of {dataset} ({batch} crops {w}x{h}, 1 thread, "
                          f"in the main process): " + ("no shards" if ms_data is None else
                                                        f"{ms_data:.1f} ms = {ms_data / base:.2f} x the student step"))
                    full.append({"config": key, "data_ms": ms_data})
    if args.json:
        from pipeline.atomic import write_json

        write_json(args.json, {**ratios, "machine": f"{describe_machine(device)}; preset {preset}"})
    if args.json_full:
        from pipeline.atomic import write_json

        write_json(args.json_full, {"machine": describe_machine(device), "preset": preset, "steps": steps,
                                    "warmup": warmup, "repeats": args.repeats, "rows": full})


def _print_breakdown(key: str, base_cfg: dict, methods: list, modes: list, full: list) -> None:
    """Per-part medians of every method (new, and old with --compare): one table per configuration."""
    parts = ["teacher_fwd", "student_fwd", "ce", "dwld_fwd", "arfd_fwd", "terms_fwd", "backward", "optimizer",
             "total"]
    print(f"\n### {key}: ms per part of the step (median of the timed steps; 'old' = reference implementations)")
    print("| method | " + " | ".join(parts) + " |")
    print("|---|" + "---|" * len(parts))
    for method in methods:
        for ref in (modes if method is not None else [False]):
            r = _run({**base_cfg, "method": method}, ref, "parts")
            name = (method or "student") + (" (old)" if ref else "")
            if not isinstance(r, dict):
                print(f"| {name} | failed: {r} |")
                continue
            print(f"| {name} | " + " | ".join(_fmt(r.get(p), ".1f") for p in parts) + " |", flush=True)
            full.append({"config": key, "method": method, "reference": ref, "parts": r})


if __name__ == "__main__":
    main()
