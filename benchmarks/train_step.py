"""Training-step time (forward, backward, optimizer step) and peak memory of the teacher
(RGB + X) and the student (RGB) of both model families.

    python benchmarks/train_step.py                    # CPU: the embedded default's sizes
    python benchmarks/train_step.py --preset paper     # the paper's sizes (a GPU; fp32 and bf16)
    python benchmarks/train_step.py --models mfnet --steps 20
    python benchmarks/train_step.py --models mfnet --roles teacher --precisions bf16 --json out.json

Each configuration runs in its own subprocess (clean peak-memory counters): ``--warmup`` steps,
then the median of ``--steps`` timed steps (CUDA synchronised). Memory: on CUDA
``torch.cuda.max_memory_allocated`` over the timed steps (what the anchors below report); on
CPU the peak resident set size of the process minus its size before the first step
(``ru_maxrss``, after the model and the batch exist), i.e. activations, gradients and optimizer
state, not the Python runtime or the weights.

Anchors, measured on one H100 with the official implementations (issue 9): SNE-RoadSeg-152
RGB + normals, batch 3 at 1248x384: 222 ms fp32 / 195 ms bf16, peak 21.6 / 12.9 GiB; MFNet
(RGB + thermal), batch 8 at 640x480: 46.7 ms fp32. The goal is at most 0.8x those on the same
GPU; the ratios are printed when the device is an H100 (elsewhere they would compare machines,
not code). Teacher / student ratios are printed on every device.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    # model -> (x channels of the teacher, batch, H, W, extra kwargs)
    "cpu": {"mfnet": (1, 8, 96, 320, {}), "sne_roadseg": (3, 2, 96, 320, {"depth": 18})},
    # the code paths only, in seconds on a CPU (benchmarks/gpu_check.py --cpu-smoke)
    "smoke": {"mfnet": (1, 2, 64, 96, {}), "sne_roadseg": (3, 1, 64, 96, {"depth": 18})},
    "paper": {"mfnet": (1, 8, 480, 640, {}), "sne_roadseg": (3, 3, 384, 1248, {"depth": 152})},
}
ANCHORS_H100 = {  # (model, precision) -> (ms per step, peak GiB or None)
    ("sne_roadseg", "fp32"): (222.0, 21.6), ("sne_roadseg", "bf16"): (195.0, 12.9), ("mfnet", "fp32"): (46.7, None),
}


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def time_training_step(loss_of, opt, dev, amp, steps: int, warmup: int) -> tuple[float, int]:
    """(median ms, peak bytes) of ``steps`` timed steps (``loss_of()`` under ``amp``, backward,
    ``opt.step()``) after ``warmup``. Peak: CUDA max allocated over the timed steps; CPU peak RSS
    growth from before the first step (the step's working set, allocator growth included)."""
    import torch

    def step():
        with amp:
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)  # as lix/train.py does on CPU
    base = _maxrss_bytes()
    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _maxrss_bytes() - base
    return 1000 * statistics.median(times), int(peak)


def measure(model: str, role: str, precision: str, device: str, preset: str, steps: int, warmup: int) -> dict:
    """One configuration in this process: {'ms', 'peak_bytes', 'params'}."""
    import torch

    from lix.models import create_model

    xc, batch, h, w, kw = PRESETS[preset][model]
    xc = xc if role == "teacher" else 0
    dev = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model, 10, xc, **kw).to(dev)
    channels_last = dev.type == "cuda" and precision == "bf16"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    rgb = torch.rand(batch, 3, h, w, device=dev)
    x = torch.rand(batch, xc, h, w, device=dev) if xc else None
    label = torch.randint(0, 10, (batch, h, w), device=dev)
    if channels_last:
        rgb = rgb.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last) if x is not None else None
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    ms, peak = time_training_step(
        lambda: torch.nn.functional.cross_entropy(net(rgb, x).float(), label, ignore_index=255), opt, dev, amp,
        steps, warmup)
    return {"ms": ms, "peak_bytes": peak,
            "params": sum(p.numel() for p in net.parameters()), "batch": batch, "size": f"{w}x{h}"}


def describe_machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from _machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: paper on CUDA, cpu otherwise")
    ap.add_argument("--models", nargs="+", default=["mfnet", "sne_roadseg"])
    ap.add_argument("--device", default=None, help="default: cuda when available")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 5 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--roles", nargs="+", choices=["teacher", "student"], default=["teacher", "student"])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                    help="default: fp32 and bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--json", default=None, help="also write every configuration's figures (or its error) as JSON: "
                                                 "{\"machine\", \"preset\", \"steps\", \"warmup\", \"results\": [...]}")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(measure(**cfg)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    preset = args.preset or ("paper" if cuda else "cpu")
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    precisions = args.precisions or (["fp32", "bf16"] if cuda else ["fp32"])
    h100 = cuda and "H100" in torch.cuda.get_device_name(0)
    machine = describe_machine(device)
    rows: list[dict] = []
    print(f"# train_step on {machine}; preset {preset}; median of {steps} steps after {warmup}")
    print("| model | role | precision | batch | size | params | ms/step | peak | teacher/student time | "
          "teacher/student memory | vs H100 anchor (time, memory) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for precision in precisions:
            res = {}
            for role in args.roles:
                cfg = dict(model=model, role=role, precision=precision, device=device, preset=preset, steps=steps,
                           warmup=warmup)
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                    print(f"| {model} | {role} | {precision} | failed: {error} |")
                    rows.append({**cfg, "error": error})
                    continue
                res[role] = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({**cfg, **res[role]})
            for role, r in res.items():
                ratio_t = ratio_m = ""
                if role == "teacher" and "student" in res:
                    ratio_t = f"{r['ms'] / res['student']['ms']:.2f}x"
                    ratio_m = f"{r['peak_bytes'] / max(res['student']['peak_bytes'], 1):.2f}x"
                anchor = ""
                if role == "teacher" and h100 and preset == "paper" and (model, precision) in ANCHORS_H100:
                    a_ms, a_gib = ANCHORS_H100[(model, precision)]
                    anchor = f"{r['ms'] / a_ms:.2f}x"
                    if a_gib:
                        anchor += f", {r['peak_bytes'] / 2**30 / a_gib:.2f}x"
                print(f"| {model} | {role} | {precision} | {r['batch']} | {r['size']} | {r['params'] / 1e6:.2f} M | "
                      f"{r['ms']:.1f} | {r['peak_bytes'] / 2**30:.2f} GiB | {ratio_t} | {ratio_m} | {anchor} |")
    if not h100:
        print("(anchor ratios need an H100 and --preset paper: the anchors were measured there)")
    if args.json:
        from pipeline.atomic import write_json

        write_json(args.json, {"machine": machine, "preset": preset, "steps": steps, "warmup": warmup,
                               "results": rows})


if __name__ == "__main__":
    main()
