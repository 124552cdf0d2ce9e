"""Peak memory of ``lix predict`` on one large image, before and after the memory budget
(issue 18): the whole image through the network (the code of ``--before-ref``) against
sliding-window tiles under ``--memory-budget``.

    python benchmarks/predict_memory.py                          # 4000x3000, budgets 2 and 1 GiB
    python benchmarks/predict_memory.py --size 2000x1500 --budgets 2,1,0.5 --threads 2

The model is a randomly initialised MFNet student with the 19 KITTI classes (weights do not
change memory or time), exported as ``model.safetensors`` with its run config, so nothing needs
training or downloading. The image is smooth random colour (upsampled noise), saved as PNG.

Every variant runs ``predict_folder`` on the CPU in its own subprocess, so that the peak resident
set size (``ru_maxrss``: all memory the process touched, torch's CPU tensors included, which
tracemalloc does not see) belongs to that variant alone. ``floor`` is the new code on a 64x64
image: imports, weights, the memory probe and the Python runtime, the floor under every
figure. "before" loads ``lix/predict.py`` as it was at ``--before-ref`` (git show), the code
before the budget existed; it needs git and that commit. Labels: the share of pixels whose
label equals the before run's (tiling changes labels near tile borders only; with random
weights almost every pixel is one class, so this is a check of the stitching, not of accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (a sibling module: the benchmarks run as scripts)

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REF = "4a30c91"  # the last commit whose lix/predict.py had no memory budget


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


def child(args: argparse.Namespace) -> None:
    """One variant in this process; prints {"peak_bytes", "seconds", "tiles"} as JSON."""
    import importlib.util

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    if args.variant == "before":
        spec = importlib.util.spec_from_file_location("predict_before", args.before_file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        run = lambda: mod.predict_folder(args.ckpt, args.input, args.output, device="cpu", progress=False)  # noqa
    else:
        import lix.predict as mod

        budget = None if args.variant == "floor" else float(args.variant)
        run = lambda: mod.predict_folder(args.ckpt, args.input, args.output, device="cpu",  # noqa: E731
                                         progress=False, memory_budget_gib=budget)
    t = time.perf_counter()
    r = run()
    seconds = time.perf_counter() - t
    tiles = [o.get("tile") for o in r.get("outputs", {}).values()]
    print(json.dumps({"peak_bytes": _maxrss_bytes(), "seconds": seconds, "tiles": tiles}))


def machine(threads: int) -> str:
    import cv2
    import torch

    cpu = cpu_model()
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / (1 << 20):.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {threads} torch thread(s); {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"OpenCV {cv2.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4000x3000", help="image WxH")
    ap.add_argument("--budgets", default="2,1", help="--memory-budget values to run (GiB), comma-separated")
    ap.add_argument("--before-ref", default=BEFORE_REF, help="git commit of the lix/predict.py to compare with")
    ap.add_argument("--no-before", action="store_true", help="skip the before run (4 GiB at 4000x3000)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every variant")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    for hidden in ("ckpt", "input", "output", "before-file"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)

    sys.path.insert(0, str(ROOT))
    w, h = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="predict_memory_") as tmp:
        run_all(args, Path(tmp), w, h)


def run_all(args: argparse.Namespace, tmp: Path, w: int, h: int) -> None:
    """Make the model and the image under ``tmp``, run every variant, print the table."""
    import cv2
    import numpy as np
    import torch

    from lix.checkpoint import export_safetensors
    from lix.config import TrainConfig
    from lix.model_factory import build_model
    from lix.provenance import run_config
    from pipeline.imageio import read_raw, write_image
    from pipeline.sources import kitti

    torch.manual_seed(0)
    cfg = TrainConfig(model="mfnet", device="cpu")
    names = list(kitti.CLASS_NAMES)
    ckpt = export_safetensors(build_model(cfg, len(names), None).state_dict(), tmp / "model.safetensors",
                              run_config(cfg, "kitti", "student", names, 1))
    (tmp / "in").mkdir()
    small = np.random.default_rng(0).integers(0, 256, (max(1, h // 64), max(1, w // 64), 3), dtype=np.uint8)
    write_image(tmp / "in" / "big.png", cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    (tmp / "tiny").mkdir()
    write_image(tmp / "tiny" / "big.png", cv2.resize(small, (64, 64), interpolation=cv2.INTER_AREA))

    variants = ["floor"] + ([] if args.no_before else ["before"]) + [b.strip() for b in args.budgets.split(",")]
    before_file = tmp / "predict_before.py"
    if not args.no_before:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.before_ref}:lix/predict.py"],
                             capture_output=True, text=True, check=True).stdout
        before_file.write_text(src)
    print(f"# lix predict, one {w}x{h} image, MFNet student (19 classes, random weights), CPU")
    print(f"# machine: {machine(args.threads)}")
    rows = []
    for v in variants:
        out = tmp / f"out_{v}"
        cmd = [sys.executable, __file__, "--variant", v, "--ckpt", str(ckpt),
               "--input", str(tmp / ("tiny" if v == "floor" else "in")),
               "--output", str(out), "--before-file", str(before_file), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            print(f"{v}: failed (status {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append((v, r, out))
    ref = next((out for v, _, out in rows if v == "before"), None)
    ref_lab = read_raw(ref / "big_label.png") if ref else None
    floor = next((r["peak_bytes"] for v, r, _ in rows if v == "floor"), 0)
    print(f"{'variant':<34} {'peak RSS':>9} {'- floor':>9} {'seconds':>8}  {'tiles':<9}  labels = before")
    for v, r, out in rows:
        name = {"floor": "floor (same code, a 64x64 image)", "before": f"before ({args.before_ref}, whole image)"}.get(
            v, f"after, --memory-budget {v} GiB")
        same = ""
        if ref_lab is not None and v != "floor":
            same = f"{100 * (read_raw(out / 'big_label.png') == ref_lab).mean():.3f} %"
        tiles = "whole" if not r["tiles"] or r["tiles"][0] is None else "x".join(map(str, r["tiles"][0]))
        print(f"{name:<34} {r['peak_bytes'] / (1 << 30):>7.2f} G {(r['peak_bytes'] - floor) / (1 << 30):>7.2f} G "
              f"{r['seconds']:>8.1f}  {tiles:<9}  {same}")

if __name__ == "__main__":
    main()
