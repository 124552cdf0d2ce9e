"""benchmarks/gpu_check.py: without CUDA every check is skipped (exit 0, one line each, the JSON
says so); --cpu-smoke runs every check's code path on the CPU; one failing check is its own
line and the exit status, the others still run; a check's subprocess stops at its budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

NAMES = list(gpu_check.CHECKS)


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, also on a machine that has one
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=1200)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def _check_lines(stdout: str) -> dict[str, str]:
    """check name -> its line; exactly one line per check."""
    lines: dict[str, str] = {}
    for ln in stdout.splitlines():
        name = ln.split(" ", 1)[0]
        if name in NAMES:
            assert name not in lines, f"two lines for {name}:\n{stdout}"
            lines[name] = ln
    assert sorted(lines) == sorted(NAMES), stdout
    return lines


def test_without_cuda_every_check_is_skipped_and_the_exit_status_is_0(tmp_path):
    proc, result = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, ln in _check_lines(proc.stdout).items():
        assert ln.split()[1:] == ["skipped", "(no", "CUDA", "device)"], ln
    assert proc.stdout.splitlines()[1].startswith("machine: ")
    assert "total wall time" in proc.stdout.splitlines()[-1]
    assert list(result["checks"]) == NAMES
    assert {r["status"] for r in result["checks"].values()} == {"skipped"}
    assert {r["reason"] for r in result["checks"].values()} == {"no CUDA device"}
    assert result["summary"] == {"ok": 0, "skipped": len(NAMES), "failed": 0}
    assert not list(tmp_path.glob(".gpu_check.json.tmp-*"))  # written through a temporary, then renamed


@pytest.mark.slow
def test_cpu_smoke_runs_every_check_on_the_cpu(tmp_path):
    proc, result = _run(tmp_path, "--cpu-smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _check_lines(proc.stdout)
    for name, r in result["checks"].items():
        assert r["status"] == "ok", (name, r)
        assert lines[name].split()[1] == "ok", lines[name]
    figures = {name: r["figures"] for name, r in result["checks"].items()}
    for name in ("mfnet_step", "sne_roadseg_step"):  # anchors are a GPU's: not compared on the CPU
        assert "n/a (cpu smoke)" in lines[name]
    assert figures["mfnet_step"]["fp32_vs_anchor"] == "n/a (cpu smoke)"
    assert figures["sne_roadseg_step"]["model"].startswith("sne_roadseg-18")
    assert figures["mfnet_step"]["bf16_peak_gib"] == "n/a (cpu)"  # CUDA's max_memory_allocated only
    assert figures["ddp_step"]["init_differed_per_rank"] and figures["ddp_step"]["params_identical_after"]
    assert figures["ddp_step"]["world_size"] == 2
    assert figures["compile"]["eager_ms"] > 0 and figures["compile"]["compiled_ms"] > 0
    assert figures["distill_step"]["goal_met"] == "n/a (cpu smoke)"
    assert figures["sweep"]["stages_would_run"] > 0
    assert {"batch1_img_s", "batch2_img_s"} <= set(figures["depth_throughput"])


def test_a_failing_check_is_one_line_and_exit_1_and_the_others_still_run(monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(gpu_check, "CHECKS", {"broken": (broken, 5), "fine": (lambda ctx: {"ms": 1.5}, 5)})
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--cpu-smoke"])
    assert gpu_check.main() == 1
    out = capsys.readouterr().out.splitlines()
    broken_line = next(ln for ln in out if ln.startswith("broken"))
    assert "failed: RuntimeError: something broke" in broken_line and "second line" not in broken_line
    assert any(ln.startswith("fine") and " ok " in ln and "ms=1.5" in ln for ln in out)
    assert "1 ok, 0 skipped, 1 failed" in out[-1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_check_subprocess_is_stopped_with_what_it_started_at_its_budget(tmp_path):
    ctx = gpu_check.Ctx(smoke=True, device="cpu", deadline=time.monotonic() + 3, tmp=tmp_path)
    pidfile = tmp_path / "grandchild.pid"
    grandchild = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    with pytest.raises(gpu_check.CheckFailed, match="timed out"):
        gpu_check.run([sys.executable, "-c", child], ctx, grace=1)
    pid = int(pidfile.read_text())
    for _ in range(50):  # killed with its group; reaped by init soon after
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)
