"""The GPU checks in one run: what anyone with a GPU runs as is, one line per check.

    python benchmarks/gpu_check.py                      # on a GPU machine: every check (< 8 min on an H100/H200)
    python benchmarks/gpu_check.py --json gpu.json      # also the figures as JSON (written atomically)
    python benchmarks/gpu_check.py --only ddp_step      # some checks only
    python benchmarks/gpu_check.py --cpu-smoke          # every code path on the CPU at tiny sizes (~1 min)

It describes the machine first (GPU, its memory, the CUDA runtime and driver versions torch
reports, the CPU, torch), then prints one line per check: its name, ``ok`` / ``skipped (...)`` /
``failed: <reason>``, its figures, and its time against its budget; then the total wall time.
Each check runs in its own subprocesses with its budget as the timeout, so a check that fails
or hangs is reported and the others still run (on the GPU one at a time; ``--cpu-smoke`` runs
two at a time). Exit status 1 when a check failed (not for a
skip). Without CUDA every check is ``skipped (no CUDA device)`` and the exit status is 0 (CI
runs it so); ``--cpu-smoke`` runs every check on the CPU at tiny sizes (a few steps, 96x64
images, SNE-RoadSeg-18, ...) to exercise the code, with the anchor comparisons "n/a (cpu smoke)".

The checks reuse the benchmarks beside this file (as subprocesses with ``--json``, or their
functions) and the trainer's own pieces:

1. ``mfnet_step``: benchmarks/train_step.py, MFNet (RGB + X, as the anchor) batch 8 at 640x480,
   bf16 autocast + channels_last and fp32: median ms, peak GiB (torch.cuda.max_memory_allocated).
2. ``sne_roadseg_step``: the same for SNE-RoadSeg-152 RGB + normals, batch 3 at 1248x384.
3. ``distill_step``: benchmarks/distill_step.py, the LIX and KD steps (teacher forward included)
   over the plain student step, MFNet at the paper's size, bf16 (goal, issue 10: LIX <= 1.3x).
4. ``compile``: the MFNet student training step (bf16 autocast, channels_last) eager vs
   ``torch.compile``: the first compiled step (compile time) and both steady-state medians.
5. ``ddp_step``: two processes (torchrun) wrap the MFNet student in DistributedDataParallel as
   lix/train.py does (place_model, the trainer's loss normalised over the global batch,
   train_one_epoch), take a few steps, and all-reduce a parameter checksum: identical on both
   ranks. NCCL on two GPUs; with one GPU, gloo with both ranks on cuda:0 (NCCL refuses two
   ranks on one device); gloo on the CPU in --cpu-smoke.
6. ``depth_throughput``: benchmarks/depth_throughput.py, Depth Anything V2-S (random weights of
   the real architecture when no local model) batched at 1, 8 and 32 at the default input
   size 518, the backend's bf16 autocast; and its naive per-image loop.
7. ``sweep``: ``lix sweep -j 4 -S 'datasets=[vkitti2]' --no-report`` (the embedded default's
   pipeline, vKITTI2's synthetic miniature only: its 5 preparation stages, the teacher, the
   plain and LIX students; 8 stages, 7 min on 2 CPU cores, about 3 min expected here) in a
   throwaway copy of the repository (lix/, pipeline/ and the DVC files of this working tree in
   a fresh git + DVC repository). Job slot k gets GPU k mod n, so with one GPU the 4 slots
   share it. Last, so that an overrun before it cuts only this check. --cpu-smoke: ``lix sweep
   --dry`` (the plan) only.

Anchors (as in benchmarks/train_step.py): the official implementations measured on one H100
(issue 9): MFNet (RGB + thermal) batch 8 at 640x480, 46.7 ms per training step in fp32;
SNE-RoadSeg-152 RGB + normals batch 3 at 1248x384, 222 ms fp32 / 195 ms bf16, peak 21.6 / 12.9
GiB. The goal is at most 0.8x those on the same GPU; on another GPU the ratios compare machines
as well as code (the line says so).

Expected runtime on one H100/H200 with 16 CPU cores: about 6 min, half of it the sweep (not
measured there yet: estimated from the CPU runs). Each check has a budget (CHECKS below) that
its subprocesses are stopped at, and the run as a whole stops every check at 7.5 min
(TOTAL_BUDGET_S), so it ends before 8 min. --cpu-smoke takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

T_START = time.perf_counter()  # the total wall time counts torch's import too
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, ROOT) if str(p) not in sys.path]  # the sibling benchmarks; lix, pipeline

from train_step import ANCHORS_H100  # noqa: E402  (same folder)

TOTAL_BUDGET_S = 450.0  # no check starts, and every timeout ends, by then (the promise: under 8 min)
SMOKE_BUDGET_SCALE = 2.0  # --cpu-smoke: budgets only against a hang (a CPU shared with other work is slow)
STEPS = {"gpu": (10, 3), "smoke": (2, 1)}  # (timed steps, warm-up steps)
NO_CUDA = "no CUDA device"


class CheckFailed(Exception):
    """A check's one-line reason for failing."""


@dataclass
class Ctx:
    """What a check runs with: --cpu-smoke or not, its device, its deadline, a scratch folder."""

    smoke: bool
    device: str  # "cuda" | "cpu"
    deadline: float  # time.monotonic() by which the check's subprocesses are stopped
    tmp: Path

    @property
    def preset(self) -> str:
        return "smoke" if self.smoke else "paper"

    @property
    def steps(self) -> tuple[int, int]:
        return STEPS["smoke" if self.smoke else "gpu"]

    def timeout(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


# --------------------------------------------------------------------------- subprocesses
def _env(**extra: str) -> dict[str, str]:
    """The environment of a child: this checkout importable (lix, pipeline) without an install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env | extra


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the child's process group (what it started too), up to ``grace`` s for the child
    to end (``lix sweep`` stops its stages then), then SIGKILL to whatever of the group is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def _what(cmd: list[str]) -> str:
    """A command's short name: the module after -m, else the script (and the worker)."""
    if "-m" in cmd[:2]:
        return cmd[cmd.index("-m") + 1]
    script = next((Path(a).name for a in cmd if a.endswith(".py")), Path(cmd[0]).name)
    return f"{script} --worker {cmd[cmd.index('--worker') + 1]}" if "--worker" in cmd else script


def run(cmd: list[str], ctx: Ctx, *, cwd: Path | None = None, env: dict | None = None, check: bool = True,
        grace: float = 10.0) -> subprocess.CompletedProcess:
    """``cmd`` in its own session, stopped (with what it started) at the check's deadline: then
    CheckFailed('timed out ...') with the output so far in ``.output``. ``check``: a non-zero exit
    is CheckFailed with the last line of stderr."""
    env = dict(env or _env())
    if ctx.smoke:  # tiny steps: one thread each, or a CPU shared with other work makes OpenMP spin for seconds
        env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=ctx.timeout())
    except subprocess.TimeoutExpired:
        _stop(proc, grace)
        out, err = proc.communicate()
        exc = CheckFailed(f"{_what(cmd)} timed out at the check's budget")
        exc.output = (out or "") + (err or "")
        raise exc from None
    except BaseException:  # Ctrl-C: the child is in its own session, so the terminal's SIGINT missed it
        _stop(proc, grace)
        raise
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CheckFailed(f"{_what(cmd)} exited {proc.returncode}: {_reason(err or out)}")
    return res


def _reason(text: str) -> str:
    """A failure's one line from a child's output: the last exception with a message (a rank's
    error under torchrun's summary, too), else the last line that is not a rule of ``=``/``-``."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip(" =-_*#\t")]
    errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|Exit|Interrupt)\w*: \S", ln)]
    return (errors or lines or ["(no output)"])[-1][:300]


def _json_line(stdout: str) -> dict:
    """The last line of a worker's stdout that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise CheckFailed(f"no JSON result in the output: {_reason(stdout)}")


def _gib(nbytes: float, ctx: Ctx):
    return round(nbytes / 2**30, 2) if ctx.device == "cuda" else "n/a (cpu)"


def _vs_anchor(value: float, anchor: float, ctx: Ctx):
    return "n/a (cpu smoke)" if ctx.smoke else f"{value / anchor:.2f}x"


def _anchor_gpu_note(ctx: Ctx) -> dict:
    if ctx.smoke:
        return {}
    import torch

    name = torch.cuda.get_device_name(0)
    return {} if "H100" in name else {"anchor_note": f"the anchors are an H100's, this is {name}: "
                                                     f"the ratios compare GPUs too"}


# --------------------------------------------------------------------------- the checks
def _train_step(ctx: Ctx, model: str) -> dict:
    """benchmarks/train_step.py for the teacher of ``model`` in fp32 and bf16 (+ channels_last on
    CUDA): {precision: its JSON row}."""
    steps, warmup = ctx.steps
    out = ctx.tmp / f"train_step_{model}.json"
    run([sys.executable, str(HERE / "train_step.py"), "--preset", ctx.preset, "--models", model, "--roles", "teacher",
         "--precisions", "fp32", "bf16", "--device", ctx.device, "--steps", str(steps), "--warmup", str(warmup),
         "--json", str(out)], ctx)
    rows = {r["precision"]: r for r in json.loads(out.read_text())["results"]}
    bad = {p: r["error"] for p, r in rows.items() if "error" in r}
    if bad or set(rows) != {"fp32", "bf16"}:
        why = "; ".join(f"{p}: {e}" for p, e in bad.items()) or f"rows {sorted(rows)}"
        raise CheckFailed(f"train_step.py: {why}")
    return rows


def check_mfnet_step(ctx: Ctx) -> dict:
    rows = _train_step(ctx, "mfnet")
    bf16, fp32 = rows["bf16"], rows["fp32"]
    anchor = ANCHORS_H100[("mfnet", "fp32")][0]
    return {"model": "mfnet teacher (RGB + X, as the anchor)", "batch": bf16["batch"], "size": bf16["size"],
            "bf16": "autocast" + (" + channels_last" if ctx.device == "cuda" else " (cpu: no channels_last)"),
            "bf16_ms": bf16["ms"], "bf16_peak_gib": _gib(bf16["peak_bytes"], ctx),
            "fp32_ms": fp32["ms"], "fp32_peak_gib": _gib(fp32["peak_bytes"], ctx),
            "bf16_over_fp32": f"{bf16['ms'] / fp32['ms']:.2f}x", "anchor_h100_fp32_ms": anchor,
            "fp32_vs_anchor": _vs_anchor(fp32["ms"], anchor, ctx),
            "bf16_vs_anchor": _vs_anchor(bf16["ms"], anchor, ctx),
            **_anchor_gpu_note(ctx)}


def check_sne_roadseg_step(ctx: Ctx) -> dict:
    rows = _train_step(ctx, "sne_roadseg")
    res: dict = {"model": f"sne_roadseg-{18 if ctx.smoke else 152} teacher (RGB + normals)",
                 "batch": rows["fp32"]["batch"], "size": rows["fp32"]["size"]}
    for precision in ("fp32", "bf16"):
        r = rows[precision]
        a_ms, a_gib = ANCHORS_H100[("sne_roadseg", precision)]
        gib = _gib(r["peak_bytes"], ctx)
        res |= {f"{precision}_ms": r["ms"], f"{precision}_peak_gib": gib,
                f"{precision}_anchor_h100": f"{a_ms:g} ms, {a_gib:g} GiB",
                f"{precision}_vs_anchor": "n/a (cpu smoke)" if ctx.smoke else
                f"{r['ms'] / a_ms:.2f}x time, {gib / a_gib:.2f}x memory"}
    return res | _anchor_gpu_note(ctx)


def check_distill_step(ctx: Ctx) -> dict:
    steps, warmup = ctx.steps
    out = ctx.tmp / "distill_step.json"
    res = run([sys.executable, str(HERE / "distill_step.py"), "--preset", ctx.preset, "--models", "mfnet",
               "--methods", "kd", "lix", "--device", ctx.device, "--steps", str(steps), "--warmup", str(warmup),
               "--json", str(out)], ctx)
    ratios = json.loads(out.read_text()).get("mfnet", {})
    missing = [m for m in ("kd", "lix") if m not in ratios]
    if missing:  # distill_step.py prints a failed row and leaves the method out of its JSON
        failed = [ln for ln in res.stdout.splitlines() if "failed" in ln]
        raise CheckFailed(f"distill_step.py: no result for {', '.join(missing)}: {_reason(chr(10).join(failed))}")
    lix, kd = ratios["lix"]["time_ratio"], ratios["kd"]["time_ratio"]
    figures = {"model": "mfnet", "amp": "bf16" if ctx.device == "cuda" else "fp32 (cpu)",
               "lix_over_student_time": f"{lix:.2f}x", "kd_over_student_time": f"{kd:.2f}x"}
    if ctx.device == "cuda":
        figures |= {"lix_over_student_memory": f"{ratios['lix']['memory_ratio']:.2f}x",
                    "kd_over_student_memory": f"{ratios['kd']['memory_ratio']:.2f}x"}
    return figures | {"goal": "lix <= 1.3x (issue 10)",
                      "goal_met": "n/a (cpu smoke)" if ctx.smoke else ("yes" if lix <= 1.3 else "no")}


def check_compile(ctx: Ctx) -> dict:
    cfg = {"device": ctx.device, "preset": ctx.preset, "steps": ctx.steps[0], "warmup": ctx.steps[1],
           # inductor's C++ build of the CPU kernels takes a minute on 2 cores: the smoke traces only
           "backend": "aot_eager" if ctx.smoke else "inductor"}
    r = _json_line(run([sys.executable, __file__, "--worker", "compile", json.dumps(cfg)], ctx).stdout)
    return {"model": "mfnet student", "batch": r["batch"], "size": r["size"], "backend": cfg["backend"],
            "eager_ms": r["eager_ms"], "compiled_ms": r["compiled_ms"], "first_compiled_step_s": r["compile_s"],
            "compiled_over_eager": f"{r['compiled_ms'] / r['eager_ms']:.2f}x",
            "eager_peak_gib": _gib(r["eager_peak_bytes"], ctx),
            "compiled_peak_gib": _gib(r["compiled_peak_bytes"], ctx)}


def check_ddp_step(ctx: Ctx) -> dict:
    import torch

    if ctx.device == "cpu":
        backend, note = "gloo", "gloo on the CPU (cpu smoke)"
    elif torch.cuda.device_count() >= 2:
        backend, note = "nccl", "nccl, ranks on cuda:0 and cuda:1"
    else:
        backend, note = "gloo-cuda0", "gloo, both ranks on cuda:0 (one GPU: NCCL refuses two ranks on one device)"
    cfg = {"device": ctx.device, "backend": backend, "preset": ctx.preset, "steps": ctx.steps[0],
           "warmup": ctx.steps[1]}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           "--worker", "ddp", json.dumps(cfg)]
    r = _json_line(run(cmd, ctx).stdout)
    if not r["identical"]:
        raise CheckFailed(f"parameters differ across the ranks after {r['steps']} steps "
                          f"(max |checksum difference| {r['max_diff']:.3g})")
    return {"backend": note, "sync_bn": r["sync_bn"], "world_size": r["world_size"],
            "batch_per_rank": r["batch"], "size": r["size"], "ms_per_step": r["ms"],
            "steps": f"{r['steps']} ({cfg['warmup']} warm-up, {cfg['steps']} timed)",
            "init_differed_per_rank": r["init_differed"], "params_identical_after": r["identical"]}


def _repo_copy(dst: Path) -> None:
    """What the DVC stages need (their code and the pipeline files, as in this working tree) in a
    fresh git + DVC repository at ``dst`` (as tests/test_dvc_pipeline.py builds its scratch repo)."""
    ignore = shutil.ignore_patterns("__pycache__", ".ruff_cache", "*.egg-info")
    for package in ("lix", "pipeline"):
        shutil.copytree(ROOT / package, dst / package, ignore=ignore)
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "pyproject.toml", "data/cross/README.md"):
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, dst / name)
    git = ["git", "-c", "user.name=gpu_check", "-c", "user.email=gpu_check@localhost"]
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                [*git, "commit", "-qm", "gpu_check scratch copy"]):
        res = subprocess.run(cmd, cwd=dst, capture_output=True, text=True, env=_env(), timeout=120)
        if res.returncode != 0:
            raise CheckFailed(f"the scratch repository: {' '.join(cmd[:3])}: {_reason(res.stderr or res.stdout)}")


def check_sweep(ctx: Ctx) -> dict:
    import torch

    copy = ctx.tmp / "repo"
    _repo_copy(copy)
    bin_dir = ctx.tmp / "bin"  # the stages run `lix ...`: this checkout's, installed or not
    bin_dir.mkdir()
    (bin_dir / "lix").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lix.cli "$@"\n')
    (bin_dir / "lix").chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = _env(PATH=path, PYTHONPATH=str(copy), COLUMNS="200")
    cmd = [sys.executable, "-m", "lix.cli", "sweep", "-j", "4", "-S", "datasets=[vkitti2]", "--no-report"]
    if ctx.smoke:
        res = run([*cmd, "--dry"], ctx, cwd=copy, env=env)
        m = re.search(r"(\d+) of (\d+) stage\(s\) would run", res.stdout)
        if not m:
            raise CheckFailed(f"lix sweep --dry: no plan in its output: {_reason(res.stdout)}")
        return {"mode": "--dry (cpu smoke: the plan only)", "stages_would_run": int(m[1]),
                "stages_in_plan": int(m[2]), "note": "--dry does not write -S: the default matrix's plan"}
    n_gpus = torch.cuda.device_count()
    shared = "" if "CUDA_VISIBLE_DEVICES" not in os.environ else " (CUDA_VISIBLE_DEVICES set: slots keep it)"
    t0 = time.perf_counter()
    try:
        res = run(cmd, ctx, cwd=copy, env=env, check=False, grace=45.0)  # the sweep stops its stages on SIGTERM
    except CheckFailed as exc:
        log = getattr(exc, "output", "")
        done = re.findall(r"^done\s+(\S+)", log, re.M)
        started = re.findall(r"^start\s+(\S+)", log, re.M)
        raise CheckFailed(f"timed out after {time.perf_counter() - t0:.0f} s: {len(done)} stage(s) done "
                          f"({', '.join(done) or 'none'}), running: "
                          f"{', '.join(s for s in started if s not in done) or 'none'}") from None
    wall = time.perf_counter() - t0
    m = re.search(r"(\d+) ran, (\d+) up to date, (\d+) failed, (\d+) skipped", res.stdout)
    if not m:
        raise CheckFailed(f"lix sweep exited {res.returncode} without its summary: {_reason(res.stderr)}")
    ran, up_to_date, failed, skipped = map(int, m.groups())
    if res.returncode != 0 or failed:
        logs = re.findall(r"failed:\s+(\S+):\s+(\S+)", res.stderr)
        why = "; ".join(f"{stage}: {_reason(_read(copy / log))}" for stage, log in logs[:2])
        raise CheckFailed(f"{failed} of {ran + failed + skipped} stage(s) failed, {skipped} skipped: {why}")
    return {"command": "lix sweep -j 4 -S 'datasets=[vkitti2]' --no-report", "gpus": n_gpus,
            "slots": (f"4 job slots on {n_gpus} GPU(s): slot k on GPU k mod {n_gpus}" if n_gpus else
                      "4 job slots sharing the CPU cores") + (", all 4 share cuda:0" if n_gpus == 1 else "") + shared,
            "stages_ran": ran, "failed": failed, "skipped": skipped, "up_to_date": up_to_date, "wall_s": wall}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path.name})"


def check_depth_throughput(ctx: Ctx) -> dict:
    if ctx.smoke:  # 2 images of 42x28 at input side 28 (2x2 patches): the code path, not a figure
        batches, shape = (1, 2), ["--images", "2", "--size", "28", "42", "--input-size", "28"]
    else:
        batches, shape = (1, 8, 32), ["--images", "64"]
    figures: dict = {}
    for b in batches:
        out = ctx.tmp / f"depth_b{b}.json"
        run([sys.executable, str(HERE / "depth_throughput.py"), "--device", ctx.device, "--batch", str(b), *shape,
             "--crestereo-frames", "0", "--json", str(out)], ctx)
        r = json.loads(out.read_text())
        if not figures:
            figures = {"model": f"Depth Anything V2-S ({r['weights']} weights)", "images": r["images"],
                       "size": "x".join(map(str, r["size"][::-1])), "input_size": r["input_size"],
                       "autocast": "bf16 (the backend's, on CUDA)" if r["autocast"] else "none (cpu)",
                       "naive_loop_img_s": r["naive_img_s"]}
        figures[f"batch{b}_img_s"] = r["batched_img_s"]
    return figures


CHECKS: dict[str, tuple[Callable[[Ctx], dict], float]] = {  # name -> (check, budget in seconds)
    "mfnet_step": (check_mfnet_step, 60),
    "sne_roadseg_step": (check_sne_roadseg_step, 90),
    "distill_step": (check_distill_step, 75),
    "compile": (check_compile, 150),
    "ddp_step": (check_ddp_step, 60),
    "depth_throughput": (check_depth_throughput, 75),
    "sweep": (check_sweep, 240),  # last: if the checks before overran, the run's budget cuts this one
}


# --------------------------------------------------------------------------- workers (subprocesses)
def worker_compile(cfg: dict) -> dict:
    """MFNet student step, bf16 autocast (+ channels_last on CUDA), eager then torch.compile'd."""
    import torch
    from train_step import PRESETS, time_training_step

    from lix.models import create_model

    _, batch, h, w, kw = PRESETS[cfg["preset"]]["mfnet"]
    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    net = create_model("mfnet", 10, 0, **kw).to(dev)
    rgb = torch.rand(batch, 3, h, w, device=dev)
    label = torch.randint(0, 10, (batch, h, w), device=dev)
    if dev.type == "cuda":
        net, rgb = net.to(memory_format=torch.channels_last), rgb.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def loss_of(model):
        return lambda: torch.nn.functional.cross_entropy(model(rgb, None).float(), label, ignore_index=255)

    eager_ms, eager_peak = time_training_step(loss_of(net), opt, dev, amp, cfg["steps"], cfg["warmup"])
    compiled = torch.compile(net, backend=cfg["backend"])
    sync()
    t0 = time.perf_counter()
    with amp:
        loss = loss_of(compiled)()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    compile_s = time.perf_counter() - t0
    compiled_ms, compiled_peak = time_training_step(loss_of(compiled), opt, dev, amp, cfg["steps"], cfg["warmup"])
    return {"batch": batch, "size": f"{w}x{h}", "eager_ms": eager_ms, "compiled_ms": compiled_ms,
            "compile_s": compile_s, "eager_peak_bytes": eager_peak, "compiled_peak_bytes": compiled_peak}


def worker_ddp(cfg: dict) -> dict | None:
    """One rank (under torchrun) of the trainer's DDP step: lix/train.py's model placement, loss
    and epoch loop on random batches that differ per rank; then a checksum of the parameters is
    all-reduced (max and min): identical on every rank. Rank 0 returns the figures."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from train_step import PRESETS

    from lix.config import TrainConfig
    from lix.inputs import Inputs
    from lix.model_factory import build_model
    from lix.runtime import DistInfo, init_distributed
    from lix.train import build_optimizer, place_model, supervised_task, train_one_epoch

    _, batch, h, w, _ = PRESETS[cfg["preset"]]["mfnet"]
    if cfg["backend"] == "gloo-cuda0":  # one GPU: both ranks on it, gloo (init_distributed would take nccl)
        dist.init_process_group("gloo")
        torch.cuda.set_device(0)
        d = DistInfo(dist.get_rank(), dist.get_world_size(), 0, torch.device("cuda", 0))
    else:  # what the trainer does: nccl on cuda:LOCAL_RANK, gloo on the CPU
        d = init_distributed(cfg["device"])
    cuda = d.device.type == "cuda"
    tc = TrainConfig(model="mfnet", batch_size=batch, device=cfg["device"], sync_bn=cfg["backend"] == "nccl")
    n_classes = 10
    torch.manual_seed(1000 + d.rank)  # a different init per rank: DDP's broadcast from rank 0 must unify it
    model = build_model(tc, n_classes, None)
    if d.distributed and tc.sync_bn and cuda:  # as lix/train.py's make_model
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    reduce_dev = d.device if cfg["backend"] == "nccl" else torch.device("cpu")

    def spread(m: nn.Module) -> float:
        """max - min over the ranks of every parameter's (sum, sum of squares), float64."""
        cs = torch.cat([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                        for p in m.parameters()]).to(reduce_dev)
        hi, lo = cs.clone(), cs.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return float((hi - lo).abs().max())

    init_differed = spread(model) > 0
    ddp, plain = place_model(model, tc, d)
    optimizer = build_optimizer(tc, ddp)
    task = supervised_task(ddp, Inputs(None), d)
    gen = torch.Generator().manual_seed(d.rank)

    def batches(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            label = torch.randint(0, n_classes, (batch, h, w), generator=gen, dtype=torch.uint8)
            label[torch.rand(batch, h, w, generator=gen) < 0.2 * (1 + d.rank)] = 255  # unequal shares ignored
            out.append({"rgb": torch.randint(0, 256, (batch, 3, h, w), generator=gen, dtype=torch.uint8),
                        "label": label})
        return out

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    train_one_epoch(task.module, task.loss_fn, optimizer, batches(cfg["warmup"]), 0, 0, d=d, amp=tc.amp,
                    channels_last=cuda and tc.channels_last)
    timed = batches(cfg["steps"])
    sync()
    dist.barrier()
    t0 = time.perf_counter()
    _, step = train_one_epoch(task.module, task.loss_fn, optimizer, timed, 1, cfg["warmup"], d=d, amp=tc.amp,
                              channels_last=cuda and tc.channels_last)
    sync()
    seconds = time.perf_counter() - t0
    diff = spread(plain)
    dist.destroy_process_group()
    if not d.is_main:
        return None
    return {"world_size": d.world_size, "sync_bn": tc.sync_bn and cuda, "batch": batch, "size": f"{w}x{h}",
            "steps": step, "ms": 1000 * seconds / cfg["steps"], "init_differed": init_differed,
            "identical": diff == 0.0, "max_diff": diff}


WORKERS = {"compile": worker_compile, "ddp": worker_ddp}


# --------------------------------------------------------------------------- machine, printing, main
def describe_machine() -> dict:
    import torch
    from _machine import cpu_model

    cpu = {"cpu": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__}
    if not torch.cuda.is_available():
        return {"gpu": "none (torch.cuda.is_available() is False)"} | cpu
    props = torch.cuda.get_device_properties(0)
    info = {"gpu": f"{props.name} x{torch.cuda.device_count()}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}
    try:  # the driver's CUDA version (e.g. 12040 -> 12.4); the NVIDIA driver's own version is nvidia-smi's
        v = torch._C._cuda_getDriverVersion()
        info["cuda_driver"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001 - a private API: absent in some builds
        pass
    return info | cpu


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


def line(name: str, result: dict) -> str:
    """The one line of a check: name, status, figures, time against budget."""
    status = result["status"]
    if status == "failed":
        status = f"failed: {result['reason']}"
    elif status == "skipped":
        status = f"skipped ({result['reason']})"
    figures = "; ".join(f"{k}={_fmt(v)}" for k, v in result.get("figures", {}).items())
    timing = f"  [{result['seconds']:.1f} s of {result['budget_s']:.0f} s]" if "seconds" in result else ""
    return f"{name:<17} {status}" + (f"  {figures}" if figures else "") + timing


def run_check(name: str, ctx: Ctx) -> dict:
    """The check's result: {"status": "ok", "figures"} or {"status": "failed", "reason"}, with its
    seconds and its budget (up to its deadline)."""
    fn = CHECKS[name][0]
    t0, budget = time.perf_counter(), ctx.deadline - time.monotonic()
    try:
        figures = fn(ctx)
        result = {"status": "ok", "figures": figures}
    except Exception as exc:  # noqa: BLE001 - one check's failure is its line, the others still run
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, CheckFailed):
            reason = f"{type(exc).__name__}: {reason}"
            traceback.print_exc(file=sys.stderr)
        result = {"status": "failed", "reason": reason[:400]}
    return result | {"seconds": time.perf_counter() - t0, "budget_s": budget}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the machine and every check's result here")
    ap.add_argument("--cpu-smoke", action="store_true", help="every check on the CPU at tiny sizes (the code paths)")
    ap.add_argument("--only", nargs="+", choices=list(CHECKS), default=None, metavar="CHECK",
                    help=f"run only these checks, of: {', '.join(CHECKS)}")
    ap.add_argument("--worker", nargs=2, metavar=("NAME", "CONFIG"), help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    if args.worker:
        result = WORKERS[args.worker[0]](json.loads(args.worker[1]))
        if result is not None:
            print(json.dumps(result), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    smoke = args.cpu_smoke
    mode = "cpu smoke" if smoke else ("gpu" if cuda else "no CUDA: every check skipped")
    machine = describe_machine()
    print(f"# gpu_check ({mode})")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    names = args.only or list(CHECKS)
    results: dict[str, dict] = {}
    scale = SMOKE_BUDGET_SCALE if smoke else 1.0
    end = time.monotonic() + TOTAL_BUDGET_S * scale
    def one(name: str, tmp: str) -> dict:
        if not (cuda or smoke):
            return {"status": "skipped", "reason": NO_CUDA}
        if time.monotonic() >= end:
            return {"status": "failed", "reason": f"not started: the run's {TOTAL_BUDGET_S * scale:.0f} s were spent"}
        scratch = Path(tmp) / name
        scratch.mkdir()
        ctx = Ctx(smoke=smoke, device="cpu" if smoke else "cuda",
                  deadline=min(time.monotonic() + CHECKS[name][1] * scale, end), tmp=scratch)
        return run_check(name, ctx)

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        if smoke:  # timings mean nothing there: two checks at a time (their processes are single-threaded)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {name: pool.submit(one, name, tmp) for name in names}
                for name in names:
                    results[name] = futures[name].result()
                    print(line(name, results[name]), flush=True)
        else:  # one at a time: each check's timings and peak memory are its own
            for name in names:
                results[name] = one(name, tmp)
                print(line(name, results[name]), flush=True)
    total = time.perf_counter() - T_START
    counts = {s: sum(r["status"] == s for r in results.values()) for s in ("ok", "skipped", "failed")}
    print(f"total wall time {total:.1f} s ({counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed)")
    if args.json:  # atomically (a temporary sibling, then os.replace)
        from pipeline.atomic import write_json

        write_json(args.json, {"mode": mode, "machine": machine, "checks": results, "total_s": total,
                               "summary": counts}, sort_keys=False, nan_as_null=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
