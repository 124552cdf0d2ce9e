"""lix sweep's scheduler without DVC: the plan (what is out of date, downstream, filtered), the
parallel runner against a fake `dvc` (dependency order, at most -j at once, failures isolated
with their dependants skipped, lock contention retried, the report last), the per-slot
environment, and `-S` edits of params.yaml. The real DVC end to end is in test_dvc_pipeline.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from lix.sweep import plan, run_plan, set_params, slot_env
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# prep -> teacher@a, teacher@b -> student@a-x, student@a-y, student@b-x -> report
ORDER = ["prep", "teacher@a", "teacher@b", "student@a-x", "student@a-y", "student@b-x", "report"]
UP = {"prep": set(), "teacher@a": {"prep"}, "teacher@b": {"prep"}, "student@a-x": {"teacher@a"},
      "student@a-y": {"teacher@a"}, "student@b-x": {"teacher@b"},
      "report": {"student@a-x", "student@a-y", "student@b-x"}}

FAKE_DVC = r'''
import json, os, sys, time
from pathlib import Path
stage = sys.argv[-1]
root = Path(os.environ["FAKE_ROOT"])
cfg = json.loads((root / "cfg.json").read_text())
events = root / "events.jsonl"
def log(kind):
    with open(events, "a") as f:
        f.write(json.dumps({"stage": stage, "kind": kind, "t": time.time(),
                            "omp": os.environ.get("OMP_NUM_THREADS")}) + "\n")
lock_file = root / f"locked_{stage}"
if stage in cfg.get("lock_once", []) and not lock_file.exists():
    lock_file.write_text("x")
    print("ERROR: Unable to acquire lock. Most likely another DVC process is running")
    sys.exit(1)
log("start")
if stage in cfg.get("hang", []):  # a stage command (grandchild of the sweep) that runs on
    import signal, subprocess
    if cfg.get("ignore_sigint"):  # a stage that does not stop on SIGINT (the child inherits it)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (root / f"child_{stage}").write_text(str(child.pid))
    child.wait()
once = root / f"once_{stage}"
if stage in cfg.get("slow_once", {}) and not once.exists():  # the first run only (a requeued job's is quick)
    once.write_text(str(os.getpid()))
    time.sleep(cfg["slow_once"][stage])
time.sleep(cfg.get("slow", {}).get(stage, cfg.get("sleep", 0.3)))
if stage in cfg.get("fail", []):
    print(f"ERROR: failed to reproduce '{stage}'")
    log("fail")
    sys.exit(1)
log("end")
'''


def _fake(tmp_path, **cfg):
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = tmp_path / "fake_dvc.py"
    script.write_text(FAKE_DVC)
    return [sys.executable, str(script)]


def _events(tmp_path):
    return [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]


def test_plan_runs_what_changed_and_everything_downstream():
    p = plan(ORDER, UP, changed={"teacher@b"})
    assert p.todo == {"teacher@b", "student@b-x", "report"}
    assert plan(ORDER, UP, changed=set()).todo == set()
    assert plan(ORDER, UP, changed={"prep"}).todo == set(ORDER)
    # a filter keeps the matching stages, what they need, and the report
    f = plan(ORDER, UP, changed=set(ORDER), filters=["student@a-*"])
    assert set(f.order) == {"prep", "teacher@a", "student@a-x", "student@a-y", "report"}
    assert plan(ORDER, UP, changed=set(ORDER), report=False).todo == set(ORDER) - {"report"}
    with pytest.raises(ConfigError, match="--filter"):
        plan(ORDER, UP, changed=set(), filters=["nothing*"])


def test_runner_order_parallelism_failures_and_report_last(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    dvc = _fake(tmp_path, fail=["teacher@a"], lock_once=["student@b-x"], sleep=0.4)
    seen = []
    out = run_plan(plan(ORDER, UP, changed=set(ORDER)), tmp_path, jobs=2, dvc=dvc, log_dir=tmp_path / "logs",
                   on_event=lambda kind, stage, _d: seen.append((kind, stage)), poll_s=0.02)
    assert out.failed.keys() == {"teacher@a"}
    assert out.skipped == {"student@a-x": "teacher@a", "student@a-y": "teacher@a"}
    assert set(out.ran) == {"prep", "teacher@b", "student@b-x", "report"}
    ev = _events(tmp_path)
    start = {e["stage"]: e["t"] for e in ev if e["kind"] == "start"}
    end = {e["stage"]: e["t"] for e in ev if e["kind"] in ("end", "fail")}
    for stage, ups in UP.items():  # nothing starts before what it needs has ended
        for u in ups:
            if stage in start and u in end:
                assert start[stage] >= end[u], (stage, u)
    assert start["report"] >= max(t for s, t in end.items() if s != "report")
    # teacher@a and teacher@b overlapped (2 jobs), and never more than 2 ran at once
    assert start["teacher@b"] < end["teacher@a"] and start["teacher@a"] < end["teacher@b"]
    points = sorted([(t, 1) for t in start.values()] + [(t, -1) for t in end.values()])
    running, peak = 0, 0
    for _t, d in points:
        running += d
        peak = max(peak, running)
    assert peak <= 2
    # the lock contention was retried (one extra start of the fake process, no failure recorded)
    assert sum(1 for k, s in seen if k == "start" and s == "student@b-x") == 2
    assert ("failed", "teacher@a") in seen and ("skipped", "student@a-y") in seen
    import os

    assert all(e["omp"] == str(max(1, (os.cpu_count() or 1) // 2)) for e in ev if e["stage"] != "report")


def test_slot_environment_shares_cpu_threads_or_assigns_gpus():
    env = slot_env(1, 2, base={}, gpus=0)
    assert "CUDA_VISIBLE_DEVICES" not in env and int(env["OMP_NUM_THREADS"]) >= 1
    assert slot_env(3, 4, base={}, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    assert slot_env(0, 4, base={"OMP_NUM_THREADS": "7"}, gpus=0)["OMP_NUM_THREADS"] == "7"  # the user's wins


def test_set_params_edits_in_place_keeps_comments_and_refuses_bad_values(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    before = p.read_text()
    got = set_params(p, ["sweep.seeds=[0,1,2]", "sweep.methods=[student, kd, lix]",
                         "distill.hyper.kd={temperature: 2}"])
    assert got == {"sweep.seeds": [0, 1, 2], "sweep.methods": ["student", "kd", "lix"],
                   "distill.hyper.kd": {"temperature": 2}}
    after = p.read_text()
    data = yaml.safe_load(after)
    assert data["sweep"]["seeds"] == [0, 1, 2] and data["distill"]["hyper"]["kd"] == {"temperature": 2}
    assert "seeds: [0, 1, 2]" in after  # flow style, as the file writes lists
    comments = [ln for ln in before.splitlines() if ln.lstrip().startswith("#")]
    assert comments == [ln for ln in after.splitlines() if ln.lstrip().startswith("#")]
    untouched = yaml.safe_load(before)
    untouched["sweep"]["seeds"], untouched["sweep"]["methods"] = [0, 1, 2], ["student", "kd", "lix"]
    untouched["distill"]["hyper"]["kd"] = {"temperature": 2}
    assert data == untouched  # nothing else changed
    for bad, key in (("sweep.sedes=[1]", "sweep.sedes"), ("sweep.seeds=[-1]", "sweep.seeds"),
                     ("train.kitti.epochs=0", "train.kitti.epochs"), ("sweep", "-S")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            set_params(p, [bad])
    assert p.read_text() == after  # a refused edit leaves the file as it was


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc")
@pytest.mark.parametrize("signals, background, ignore_sigint", [
    (["SIGTERM"], False, False), (["SIGINT"], False, False), (["SIGTERM"], True, False),
    (["SIGINT", "SIGINT"], False, True), (["SIGHUP"], False, False)])
def test_stopping_the_sweep_stops_every_stage_command(tmp_path, signals, background, ignore_sigint):
    """SIGTERM (a batch scheduler), Ctrl-C or SIGHUP (the terminal closed) stops the sweep and
    the commands its dvc processes started, well within the 30 s grace period: none outlives the
    sweep to race a resumed one over its outputs. ``background``: the sweep started with SIGINT
    ignored, as `cmd &` or nohup leave it (its stages must still stop on the SIGINT it sends).
    ``ignore_sigint``: stages that ignore SIGINT; a second Ctrl-C kills them at once."""
    import os
    import signal
    import subprocess
    import time

    dvc = _fake(tmp_path, hang=["teacher@a", "teacher@b"], ignore_sigint=ignore_sigint)
    script = (f"from lix.sweep import plan, run_plan\n"
              f"ORDER, UP = {ORDER!r}, {UP!r}\n"
              f"run_plan(plan(ORDER, UP, changed=set(ORDER)), {str(tmp_path)!r}, jobs=2, dvc={dvc!r}, poll_s=0.02)\n")
    env = {**os.environ, "FAKE_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    disposition = signal.SIG_IGN if background else signal.SIG_DFL  # not whatever pytest inherited
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    children: list[int] = []
    try:
        pid_files = [tmp_path / "child_teacher@a", tmp_path / "child_teacher@b"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(f.exists() and f.read_text() for f in pid_files):
            time.sleep(0.05)
        assert all(f.exists() and f.read_text() for f in pid_files), "the stage commands never started"
        children = [int(f.read_text()) for f in pid_files]
        assert all(_alive(c) for c in children)
        for sig in signals:
            proc.send_signal(getattr(signal, sig))
            time.sleep(1.0)
        log = proc.communicate(timeout=15)[0]  # well inside the grace: the signals stopped them
        assert proc.returncode != 0, log
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)
        assert not any(_alive(c) for c in children), log
    finally:  # never leave a sweep or a sleeper behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)


def test_set_params_checks_names_against_the_registries_and_dry_writes_nothing(tmp_path):
    """`lix sweep -S` (and `--dry -S`, which writes nothing) refuses a misspelt method as unknown."""
    import shutil

    from lix.sweep import set_params
    from pipeline.errors import ConfigError

    path = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", path)
    text = path.read_bytes()
    with pytest.raises(ConfigError, match="unknown distillation method 'lixx'"):
        set_params(path, ["sweep.methods=[student, lixx]"])
    assert set_params(path, ["distill.hyper.lix.w_dwld=0.5"], write=False) == {"distill.hyper.lix.w_dwld": 0.5}
    assert path.read_bytes() == text
