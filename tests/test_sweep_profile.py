"""`lix sweep --profile`: the profile's matrix, its digests (what changes one), the ledger
(appended, never edited, read back strictly), and the resume across clones: a sweep stopped
partway, its ledger and teachers committed, a fresh clone resumed: only the missing runs run,
none twice. Runs and the preparation are stand-ins here (the real commands are what the DVC
pipeline tests run); their argv is checked against the CLI's options."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lix.sweep.ledger import Ledger
from lix.sweep.profile import TEACHER, Run, command, digests, load_profile, runs, write_params
from pipeline.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

FAKE_RUN = r'''
import json, os, sys, time
from pathlib import Path
stage, out = sys.argv[1], Path(sys.argv[sys.argv.index("--out") + 1])
root = Path(os.environ["FAKE_ROOT"])
with open(root / "events.jsonl", "a") as f:
    f.write(json.dumps({"stage": stage, "t": time.time()}) + "\n")
if stage in json.loads(os.environ.get("FAKE_HANG", "[]")):
    time.sleep(120)
out.mkdir(parents=True, exist_ok=True)
seed = int(stage.rsplit("-", 1)[1])
miou = 0.5 + 0.01 * seed + (0.1 if stage.startswith("teacher") else 0.0)
(out / "summary.json").write_text(json.dumps({"best_miou": miou, "best_epoch": 7, "epochs": 12,
                                              "stopped": "early_stopping", "seconds_per_epoch": 1.0,
                                              "last": {"train/loss": 0.3, "train/ce": 0.2}}))
(out / "metrics.json").write_text(json.dumps({"miou": miou, "mfsc": miou + 0.1, "fwiou": 0.7, "fwfsc": 0.8,
                                              "pixel_acc": 0.9, "per_class_iou": {"Road": 0.9, "Car": 0.4}}))
(out / "dvclive/plots/metrics/val").mkdir(parents=True, exist_ok=True)
(out / "dvclive/plots/metrics/val/miou.tsv").write_text("step\tmiou\n1\t0.3\n2\t" + str(miou) + "\n")
(out / "dvclive/plots/metrics/val/seconds.tsv").write_text("step\tseconds\n1\t1.0\n2\t1.5\n")
(out / "dvclive/plots/metrics/train").mkdir(parents=True, exist_ok=True)
(out / "dvclive/plots/metrics/train/seconds.tsv").write_text("step\tseconds\n2\t3.0\n1\t2.0\n")
if stage.startswith("teacher"):
    (out / "model.safetensors").write_bytes(stage.encode())
'''

PROFILE = {"datasets": ["vkitti2"], "models": ["mfnet"], "methods": ["student", "kd"], "seeds": [0, 1],
           "set": {"train.vkitti2.patience": 3}, "folder": "data/tiny"}


def _repo(path: Path) -> Path:
    path.mkdir()
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "tiny.yaml").write_text(yaml.safe_dump(PROFILE))
    (path / "fake_run.py").write_text(FAKE_RUN)
    (path / "fake_dvc.py").write_text("import sys\n")  # `dvc repro shards@<ds>`: nothing to do here
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=path, check=True)
    return path


def fake_command(run: Run) -> list[str]:
    """A run's stand-in: writes what a finished run leaves (cwd: the repository)."""
    prof = load_profile("tiny.yaml")
    return [sys.executable, "fake_run.py", run.stage, "--out", str(prof.run_dir(run.dataset, run.model, run.method,
                                                                                 run.seed))]


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_sweep_profile import fake_command
from lix.sweep.profile import load_profile
from lix.sweep.profile_run import run_profile
r = run_profile(load_profile("tiny.yaml"), ".", 1, dvc=[sys.executable, "fake_dvc.py"], command_of=fake_command,
                poll_s=0.05)
print("RECORDED", r.recorded)
"""


def _events(repo: Path) -> list[str]:
    f = repo / "events.jsonl"
    return [json.loads(ln)["stage"] for ln in f.read_text().splitlines()] if f.exists() else []


def test_an_interrupted_profile_sweep_resumes_on_a_fresh_clone_and_redoes_nothing(tmp_path):
    repo = _repo(tmp_path / "a")
    env = {**os.environ, "FAKE_ROOT": str(repo), "PYTHONPATH": str(ROOT),
           "FAKE_HANG": json.dumps(["student@vkitti2-mfnet-kd-1"])}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=str(Path(__file__).parent))], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "student@vkitti2-mfnet-kd-1" not in _events(repo):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # the end of a day's work
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    first = _events(repo)
    assert first == ["teacher@vkitti2-mfnet-0", "student@vkitti2-mfnet-student-0", "student@vkitti2-mfnet-kd-0",
                     "teacher@vkitti2-mfnet-1", "student@vkitti2-mfnet-student-1", "student@vkitti2-mfnet-kd-1"], log
    ledger = Ledger(repo / "data/tiny/ledger.jsonl")
    assert len(ledger.lines) == 5 and len(ledger.digests()) == 5
    line = next(ln for ln in ledger.lines if ln["method"] == "kd")
    assert line["stopped"] == "early_stopping" and line["best_epoch"] == 7 and line["curve"] == [0.3, 0.5]
    assert line["curve_epochs"] == [1, 2]  # dvclive's steps: the epochs of the evaluations
    assert line["metrics"]["per_class_iou"] == {"Road": 0.9, "Car": 0.4} and line["teacher_digest"]
    assert {"machine", "commit", "code_digest", "wall", "date"} <= set(line)
    assert line["seconds"] == 7.5  # the run's own epochs, training and validation
    # the tracked part of the profile's folder travels by git: ledger, teachers, params
    subprocess.run(["git", "add", "data/tiny"], cwd=repo, check=True)
    tracked = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.split()
    assert set(tracked) == {"data/tiny/.gitignore", "data/tiny/ledger.jsonl", "data/tiny/params.yaml",
                            "data/tiny/teachers/vkitti2-mfnet-seed0.safetensors",
                            "data/tiny/teachers/vkitti2-mfnet-seed1.safetensors"}, tracked
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "runs"], cwd=repo,
                   check=True)
    clone = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    env2 = {**env, "FAKE_ROOT": str(clone), "FAKE_HANG": "[]"}
    out = subprocess.run([sys.executable, "-c", DRIVER.format(tests=str(Path(__file__).parent))], cwd=clone, env=env2,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _events(clone) == ["student@vkitti2-mfnet-kd-1"]  # only the missing run
    resumed = Ledger(clone / "data/tiny/ledger.jsonl")
    assert len(resumed.lines) == 6 and resumed.lines[:5] == ledger.lines
    again = subprocess.run([sys.executable, "-c", DRIVER.format(tests=str(Path(__file__).parent))], cwd=clone,
                           env=env2, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and _events(clone) == ["student@vkitti2-mfnet-kd-1"]  # nothing more
    from lix.sweep import status  # `lix sweep --profile tiny --status`: the profile's own record

    rows = {r["stage"]: r["state"] for r in status(clone, log_dir=clone / "data/tiny/logs")[1]}
    assert rows == {"shards@vkitti2": "done", "student@vkitti2-mfnet-kd-1": "done"}, rows


def test_digests_change_with_what_determines_a_run_and_only_for_the_runs_it_determines(tmp_path):
    repo = _repo(tmp_path / "a")
    prof = dataclasses.replace(load_profile(repo / "tiny.yaml"), folder=repo / "data/tiny")
    params = write_params(prof, repo / "params.yaml", write=False)
    base = digests(prof, params, "code-1")
    assert len(set(base.values())) == len(runs(prof)) == 6
    # a hyper-parameter of kd: the kd students only
    text = (repo / "params.yaml").read_text().replace("kd: {temperature: 1.0", "kd: {temperature: 2.0")
    assert text != (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text)
    kd = digests(prof, write_params(prof, repo / "params.yaml", write=False), "code-1")
    assert {r.stage for r in base if base[r] != kd[r]} == {"student@vkitti2-mfnet-kd-0", "student@vkitti2-mfnet-kd-1"}
    # the training code: every run; a profile key of the recipe (patience): every run
    assert all(base[r] != d for r, d in digests(prof, params, "code-2").items())
    stricter = dataclasses.replace(prof, set={"train.vkitti2.patience": 4})
    assert all(base[r] != d for r, d in digests(stricter, write_params(stricter, ROOT / "params.yaml", write=False),
                                                "code-1").items())


def test_run_commands_are_the_clis(tmp_path):
    prof = dataclasses.replace(load_profile("testbed"), folder=Path("data/testbed"))
    t = command(prof, Run("vkitti2", "mfnet", TEACHER, 3), python="py")
    s = command(prof, Run("vkitti2", "mfnet", "lix", 3), python="py")
    assert t[:5] == ["py", "-m", "lix.cli", "train", "--role"] and "--fresh-if-changed" in t
    assert s[s.index("--teacher") + 1] == "data/testbed/teachers/vkitti2-mfnet-seed3.safetensors"
    assert s[s.index("--out") + 1] == "data/testbed/runs/vkitti2/mfnet/lix/seed3"
    assert s[s.index("--params") + 1] == "data/testbed/params.yaml"
    import typer

    from lix.cli import app

    commands = typer.main.get_command(app).commands
    for argv in (t, s):  # every option the command passes is one the CLI knows
        known = {o for p in commands[argv[3]].params for o in (*p.opts, *p.secondary_opts)}
        assert {a for a in argv[4:] if a.startswith("--")} <= known


def test_a_profile_refuses_bad_keys_and_a_ledger_its_broken_lines(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**PROFILE, "sets": {}}))
    with pytest.raises(ConfigError, match="sets"):
        load_profile(bad)
    bad.write_text(yaml.safe_dump({**PROFILE, "set": {"synthetic.vkitti2.width": 160}}))
    with pytest.raises(ConfigError, match="preparation"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="testbed"):
        load_profile("no-such-profile")
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text('{"digest": "a"}\n{"digest": \n')
    with pytest.raises(DataError, match="line 2"):
        Ledger(ledger)
    ledger.write_text('{"digest": "a"}\n')
    led = Ledger(ledger)
    led.append({"digest": "a", "x": 1})  # a digest already there is kept once
    led.append({"digest": "b"})
    assert [ln["digest"] for ln in Ledger(ledger).lines] == ["a", "b"]


def test_a_dry_plan_counts_the_runs_the_ledger_holds_under_another_digest_and_points_to_rekey(tmp_path,
                                                                                              monkeypatch):
    from typer.testing import CliRunner

    from lix.cli import app
    from lix.provenance import code_digest
    from lix.sweep.profile_run import run_profile

    repo = _repo(tmp_path / "a")
    monkeypatch.chdir(repo)
    prof = load_profile("tiny.yaml")
    dig = digests(prof, write_params(prof, repo / "params.yaml", write=False), code_digest())
    teacher, student = runs(prof)[:2]
    lines = [{"digest": dig[teacher], **dataclasses.asdict(teacher)},  # current
             {"digest": "old", **dataclasses.asdict(student)}]  # under another code: to do, but recorded
    Ledger(repo / prof.ledger).replace(lines)
    weights = prof.teacher_file(teacher.dataset, teacher.model, teacher.seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"w")  # the planner only checks that the teacher's file is there
    r = run_profile(prof, repo, dry=True)
    assert r.in_ledger == 1 and r.stale == 1 and student.stage in r.todo
    res = CliRunner().invoke(app, ["sweep", "--profile", "tiny.yaml", "--repo", str(repo), "--dry"])
    assert "1 of these runs are in the ledger under another digest" in " ".join(res.output.split()), res.output


def test_a_run_that_executed_other_training_code_than_the_sweep_planned_is_not_recorded(tmp_path):
    from lix.sweep.ledger import run_record

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"miou": 0.5, "per_class_iou": {}}))
    kw = dict(digest="d", profile="p", run={"dataset": "vkitti2", "model": "mfnet", "method": "kd", "seed": 0},
              teacher_digest="t", seconds=1.0, code="a" * 64)
    (run_dir / "summary.json").write_text(json.dumps({"best_epoch": 3, "provenance": {"code_digest": "b" * 64}}))
    with pytest.raises(DataError, match="changed while the sweep ran") as e:
        run_record(run_dir, **kw)
    assert "summary.json" in str(e.value)
    (run_dir / "summary.json").write_text(json.dumps({"best_epoch": 3, "provenance": {"code_digest": "a" * 64}}))
    assert run_record(run_dir, **kw)["code_digest"] == "a" * 64
