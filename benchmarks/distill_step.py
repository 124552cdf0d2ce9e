"""Training-step time and peak memory of every distillation method relative to the plain
student step, side by side in one run.

    python benchmarks/distill_step.py                       # CPU: MFNet and SNE-RoadSeg-18, all methods
    python benchmarks/distill_step.py --models mfnet --methods kd dkd lix
    python benchmarks/distill_step.py --preset paper        # a GPU: the paper's sizes, bf16 autocast

One step = the frozen teacher's forward (no_grad, its taps hooked), the student's forward with
its taps, the method's terms, backward and the SGD step: exactly what ``lix distill`` runs
(lix/distill/train.py ``StudentWithDistiller``). The baseline is the plain student step
(cross-entropy only). Each configuration runs in its own subprocess; the median of ``--steps``
timed steps after ``--warmup``; memory as in benchmarks/train_step.py (CUDA: max allocated; CPU:
peak RSS growth from before the first step, after the model and the batch exist: the working
set of a step (activations, gradients, optimizer state, the allocator's growth)). Methods with a
pre-training phase are timed in their distillation phase. Goal (issue 10): LIX at most 1.3x the
plain student step, teacher forward included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from train_step import PRESETS, describe_machine, time_training_step  # noqa: E402  (same folder)


def measure(model: str, method: str | None, device: str, preset: str, steps: int, warmup: int) -> dict:
    import torch

    from lix.distill import create_distiller
    from lix.distill.train import StudentWithDistiller
    from lix.inputs import Inputs
    from lix.models import create_model

    xc, batch, h, w, kw = PRESETS[preset][model]
    dev = torch.device(device)
    torch.manual_seed(0)
    n_classes = 10
    student = create_model(model, n_classes, 0, **kw).to(dev)
    batch_data = {"rgb": torch.rand(batch, 3, h, w, device=dev),
                  "depth": torch.rand(batch, 1, h, w, device=dev) * 60 + 2,
                  "depth_valid": torch.ones(batch, 1, h, w, dtype=torch.bool, device=dev),
                  "normals": torch.nn.functional.normalize(torch.randn(batch, 3, h, w, device=dev), dim=1),
                  "label": torch.randint(0, n_classes, (batch, h, w), device=dev)}
    x = "depth" if xc == 1 else "normals"
    if method is None:
        module = student

        def loss_of():
            return torch.nn.functional.cross_entropy(student(batch_data["rgb"]).float(), batch_data["label"],
                                                     ignore_index=255)
    else:
        teacher = create_model(model, n_classes, xc, **kw).to(dev).eval().requires_grad_(False)
        distiller = create_distiller(method, student, teacher)
        if distiller.needs_pretrain:
            distiller.after_pretrain()
        module = StudentWithDistiller(student, distiller, teacher, Inputs(None), Inputs(x)).to(dev)

        def loss_of():
            return module(batch_data)["loss"]
    module.train()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    ms, peak = time_training_step(loss_of, opt, dev, amp, steps, warmup)
    return {"ms": ms, "peak_bytes": peak, "batch": batch, "size": f"{w}x{h}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--models", nargs="+", default=["mfnet", "sne_roadseg"])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the ratios as lix report's overhead.json: "
                                                 "{model: {method: {time_ratio, memory_ratio}}, \"machine\": ...}")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    import torch

    from lix.distill import method_table

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    preset = args.preset or ("paper" if cuda else "cpu")
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    methods = args.methods or [r["name"] for r in method_table()]
    machine = describe_machine(device)
    print(f"# distill_step on {machine}; preset {preset}; median of {steps} steps after {warmup}")
    ratios: dict = {}
    for model in args.models:
        xc, batch, h, w, kw = PRESETS[preset][model]
        print(f"\n## {model} {kw or ''} batch {batch} at {w}x{h}, teacher RGB + {'depth' if xc == 1 else 'normals'}")
        print("| method | ms/step | x student time | peak | x student memory |")
        print("|---|---|---|---|---|")
        base = None
        for method in [None, *methods]:
            cfg = dict(model=model, method=method, device=device, preset=preset, steps=steps, warmup=warmup)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            name = method or "student (CE only)"
            if proc.returncode != 0:
                print(f"| {name} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]} | | | |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = base or r
            print(f"| {name} | {r['ms']:.1f} | {r['ms'] / base['ms']:.2f} | {r['peak_bytes'] / 2**20:.0f} MiB | "
                  f"{r['peak_bytes'] / max(base['peak_bytes'], 1):.2f} |", flush=True)
            if method is not None:
                ratios.setdefault(model, {})[method] = {"time_ratio": r["ms"] / base["ms"],
                                                        "memory_ratio": r["peak_bytes"] / max(base["peak_bytes"], 1)}
    if args.json:
        from pipeline.atomic import write_json

        write_json(args.json, {**ratios, "machine": f"{machine}; preset {preset}"})


if __name__ == "__main__":
    main()
