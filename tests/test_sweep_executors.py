"""lix sweep on the submitit executors: ``submitit-local`` (submitit's own local executor: real
subprocesses through the same API as Slurm) and ``slurm`` against a one-node stand-in for
Slurm's commands (tests/fake_slurm.py), so that submitit's Slurm executor, the batch script it
writes, sacct and scancel all run here. Each runs a small matrix (teacher -> students ->
report) with an injected failure; a cancelled sweep leaves no job running; a restarted sweep
adopts the jobs still running; ``lix sweep --status`` lists them. The real DVC through the
submitit path is in the last test (a tiny DVC repository)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_slurm
import pytest
from test_sweep import ORDER, UP, _events, _fake

from lix.sweep import plan, run_plan, status

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _check_order(tmp_path: Path) -> dict[str, list[str]]:
    """Nothing started before what it needs had ended; the report after everything. Returns
    the fake dvc's starts per stage."""
    ev = _events(tmp_path)
    start = {e["stage"]: e["t"] for e in ev if e["kind"] == "start"}
    end = {e["stage"]: e["t"] for e in ev if e["kind"] in ("end", "fail")}
    for stage, ups in UP.items():
        for u in ups:
            if stage in start and stage != "report":  # the report runs whatever failed
                assert u in end and start[stage] >= end[u], (stage, u)
    assert start["report"] >= max(t for s, t in end.items() if s != "report")
    starts: dict[str, list[str]] = {}
    for e in ev:
        if e["kind"] == "start":
            starts.setdefault(e["stage"], []).append(e["t"])
    return starts


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    """Slurm's commands (the stand-in) first on PATH, for this process and its children."""
    for k, v in fake_slurm.install(tmp_path / "bin", tmp_path / "slurm").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FAKE_SLURM_PENDING_S", "0.2")
    return tmp_path / "slurm"


@pytest.mark.parametrize("executor", ["submitit-local", "slurm"])
def test_the_matrix_runs_in_dependency_order_and_a_failure_skips_only_its_dependants(
        tmp_path, monkeypatch, request, executor):
    if executor == "slurm":
        request.getfixturevalue("slurm_env")
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    dvc = _fake(tmp_path, fail=["teacher@a"], sleep=0.3)
    seen = []
    out = run_plan(plan(ORDER, UP, changed=set(ORDER)), tmp_path, jobs=0, dvc=dvc, executor=executor,
                   on_event=lambda kind, stage, _d: seen.append((kind, stage)), poll_s=0.05)
    assert out.failed.keys() == {"teacher@a"}
    assert out.skipped == {"student@a-x": "teacher@a", "student@a-y": "teacher@a"}
    assert set(out.ran) == {"prep", "teacher@b", "student@b-x", "report"}
    starts = _check_order(tmp_path)
    assert all(len(v) == 1 for v in starts.values()), starts  # each stage ran once
    # the stage's own log, and a job per stage in the record, each with its final state
    log_dir = tmp_path / "data" / "logs" / "sweep"
    assert "failed to reproduce 'teacher@a'" in (log_dir / "teacher_a.log").read_text()
    header, rows = status(tmp_path)
    assert header["executor"] == executor
    states = {r["stage"]: r["state"] for r in rows}
    assert states == {"prep": "done", "teacher@a": "failed", "teacher@b": "done", "student@a-x": "skipped",
                      "student@a-y": "skipped", "student@b-x": "done", "report": "done"}
    jobs = {r["stage"]: r["job"] for r in rows if r["job"]}
    assert len(set(jobs.values())) == 5  # one job per stage that ran
    if executor == "slurm":  # what each job asked Slurm for: GPUs except for the CPU-only stages
        scripts = {s: next((log_dir / "submitit" / j).glob("*_submission.sh")).read_text() for s, j in jobs.items()}
        assert "--gpus-per-node=1" in scripts["teacher@b"] and "gpus-per-node" not in scripts["report"]
        assert all("--signal=USR2@90" in t and "--time=1440" in t for t in scripts.values())


def _sweep_in_subprocess(tmp_path: Path, executor: str, dvc: list[str], env: dict) -> subprocess.Popen:
    script = (f"from lix.sweep import plan, run_plan\n"
              f"ORDER, UP = {ORDER!r}, {UP!r}\n"
              f"run_plan(plan(ORDER, UP, changed=set(ORDER)), {str(tmp_path)!r}, jobs=0, dvc={dvc!r}, "
              f"executor={executor!r}, poll_s=0.05)\n")
    return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_children(tmp_path: Path, stages: list[str], timeout: float = 60) -> list[int]:
    files = [tmp_path / f"child_{s}" for s in stages]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(f.exists() and f.read_text() for f in files):
        time.sleep(0.05)
    assert all(f.exists() and f.read_text() for f in files), "the stage commands never started"
    return [int(f.read_text()) for f in files]


@pytest.mark.parametrize("executor", ["submitit-local", "slurm"])
def test_a_cancelled_sweep_leaves_no_job_running(tmp_path, request, executor):
    """Ctrl-C on the sweep cancels every submitted job (SIGINT to submitit's local job; scancel
    on Slurm): the stage commands (grandchildren of the jobs, in sessions of their own) stop."""
    env = {"FAKE_ROOT": str(tmp_path)}
    if executor == "slurm":
        env.update(fake_slurm.install(tmp_path / "bin", tmp_path / "slurm"))
    dvc = _fake(tmp_path, hang=["teacher@a", "teacher@b"])
    proc = _sweep_in_subprocess(tmp_path, executor, dvc, env)
    children: list[int] = []
    try:
        children = _wait_for_children(tmp_path, ["teacher@a", "teacher@b"])
        proc.send_signal(signal.SIGINT)
        log = proc.communicate(timeout=60)[0]
        assert proc.returncode != 0, log
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)
        assert not any(_alive(c) for c in children), log
        _, rows = status(tmp_path)
        states = {r["stage"]: r["state"] for r in rows}
        assert states["teacher@a"] == states["teacher@b"] == "cancelled", states
        assert states["report"] == "waiting"
        if executor == "slurm":
            for job in (r["job"] for r in rows if r["stage"].startswith("teacher")):
                assert (tmp_path / "slurm" / f"{job}.state").read_text().startswith("CANCELLED")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)


def test_a_restarted_slurm_sweep_adopts_the_jobs_still_running(tmp_path, slurm_env, monkeypatch):
    """The sweep's own process dies (a lost login-node session: SIGKILL, nothing cancelled); its
    Slurm jobs go on. A new sweep finds them in the record, still running according to sacct,
    and waits for them instead of submitting the stages again; `--status` shows them."""
    env = {"FAKE_ROOT": str(tmp_path), "PATH": os.environ["PATH"], "FAKE_SLURM_DIR": str(slurm_env)}
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    dvc = _fake(tmp_path, sleep=0.3, slow={"teacher@a": 6.0})
    first = _sweep_in_subprocess(tmp_path, "slurm", dvc, env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "events.jsonl").exists() or not any(
                e["stage"] == "teacher@a" and e["kind"] == "start" for e in _events(tmp_path)):
            time.sleep(0.05)
        first.kill()
        first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    _, rows = status(tmp_path)
    assert {r["stage"]: r["state"] for r in rows}["teacher@a"] == "running"
    seen = []
    out = run_plan(plan(ORDER, UP, changed=set(ORDER) - {"prep"}), tmp_path, jobs=0, dvc=dvc, executor="slurm",
                   on_event=lambda kind, stage, _d: seen.append((kind, stage)), poll_s=0.05)
    assert "teacher@a" in out.adopted and ("adopt", "teacher@a") in seen
    assert out.ok and set(out.ran) >= {"teacher@a", "student@a-x", "student@a-y", "report"}
    starts = _check_order(tmp_path)
    assert len(starts["teacher@a"]) == 1, starts  # never submitted twice


def test_the_cli_on_a_real_dvc_pipeline_through_submitit(tmp_path):
    """`lix sweep --executor submitit-local` on a tiny DVC repository (teacher -> two students ->
    report, one student failing): dvc.lock records what succeeded, `--status` lists every stage,
    and after the fix a second sweep runs only the failed stage and what follows it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    w = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    (repo / "write.py").write_text(w + "\n")
    (repo / "fail.py").write_text("import sys; sys.exit(1)\n")
    stages = {
        "teacher": {"cmd": "python write.py out/teacher.txt t", "deps": ["write.py"], "outs": ["out/teacher.txt"]},
        "student_a": {"cmd": "python write.py out/a.txt a", "deps": ["out/teacher.txt"], "outs": ["out/a.txt"]},
        "student_b": {"cmd": "python fail.py && python write.py out/b.txt b", "deps": ["out/teacher.txt", "fail.py"],
                      "outs": ["out/b.txt"]},
        "report": {"cmd": "python write.py out/report.txt r", "deps": ["out/a.txt"], "outs": ["out/report.txt"]},
    }
    import yaml

    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (repo / "out").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True, env=env)

    def lix(*args):
        return subprocess.run([sys.executable, "-m", "lix.cli", "sweep", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)

    first = lix("--executor", "submitit-local")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "student_b" in first.stderr and "3 ran" in first.stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"teacher", "student_a", "report"}
    shown = lix("--status")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for stage, state in (("teacher", "done"), ("student_a", "done"), ("student_b", "failed"), ("report", "done")):
        assert f"{stage} │ {state}" in text, shown.stdout
    (repo / "fail.py").write_text("import sys; sys.exit(0)\n")
    second = lix("--executor", "submitit-local")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 ran" in second.stdout and "3 up to date" in second.stdout, second.stdout
    assert (repo / "out" / "b.txt").read_text() == "b"


def test_cli_refuses_an_unknown_executor_a_bad_slurm_key_and_a_cluster_without_srun(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    before = (tmp_path / "params.yaml").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                  if not (Path(p) / "srun").exists())

    def lix(*args):
        return subprocess.run([sys.executable, "-m", "lix.cli", "sweep", "--repo", str(tmp_path), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    for args, expected in [(["--executor", "pbs"], "--executor"),
                           (["--executor", "slurm", "--slurm", "gpus_per_job=-1"], "sweep.slurm.gpus_per_job"),
                           (["--executor", "slurm", "--slurm", "partitoin=gpu"], "sweep.slurm.partitoin"),
                           (["--executor", "slurm", "--slurm", "partition"], "--slurm"),
                           (["--executor", "slurm", "-S", "sweep.seeds=[0,1]", "--slurm", "mem_gb=0"],
                            "sweep.slurm.mem_gb")]:
        r = lix(*args)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "params.yaml").read_bytes() == before  # nothing written by a refused sweep
    r = lix("--status")
    assert r.returncode == 0 and "no sweep on record" in r.stdout
    monkeypatch.chdir(tmp_path)
    from lix.config_slurm import SlurmConfig
    from lix.sweep import make_executor
    from pipeline.errors import LixError

    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(LixError, match="srun"):
        make_executor("slurm", tmp_path, 0, slurm=SlurmConfig())


def test_the_slurm_job_script_carries_sweep_slurm(tmp_path, slurm_env):
    """sweep.slurm's keys become the batch script's #SBATCH lines and setup (what sbatch reads)."""
    from lix.config_slurm import SlurmConfig
    from lix.sweep import make_executor

    cfg = SlurmConfig(partition="gpu", account="proj", qos="high", gpus_per_job=2, cpus_per_job=16, mem_gb=64,
                      time_min=720, setup=("module load cuda/12.4", "source .venv/bin/activate"),
                      extra={"mail-type": "FAIL"})
    ex = make_executor("slurm", tmp_path, 0, slurm=cfg)
    ex.executors[2].update_parameters(name="lix-teacher")
    text = ex.executors[2]._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--gpus-per-node=2", "--cpus-per-task=16",
                 "--mem=64GB", "--time=720", "--nodes=1", "--ntasks-per-node=1", "--mail-type=FAIL",
                 "--job-name=lix-teacher"):
        assert f"#SBATCH {line}\n" in text, line
    assert text.index("module load cuda/12.4") < text.index("source .venv") < text.index("srun ")


PROBE = '''
import json, os, sys
import torch
import torch.distributed as dist
from lix.runtime import init_distributed
d = init_distributed("cpu")
t = torch.tensor([d.rank + 1.0])
dist.all_reduce(t)
out = os.environ["PROBE_OUT"]
with open(os.path.join(out, f"rank{d.rank}.json"), "w") as f:
    json.dump({"rank": d.rank, "world": d.world_size, "local": d.local_rank, "sum": t.item(), "argv": sys.argv[1:],
               "omp": os.environ.get("OMP_NUM_THREADS")}, f)
dist.destroy_process_group()
'''


def test_lix_sbatch_writes_a_script_whose_srun_torchrun_line_starts_one_ddp_process_per_gpu(tmp_path):
    """`lix sbatch --gpus 2 -- <args>`: the #SBATCH lines ask for one task per node with its GPUs,
    and the script, run as Slurm runs it (the stand-in's srun and scontrol, Slurm's variables),
    starts torchrun, whose two processes join one process group through lix.runtime, with the
    arguments passed through unchanged."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
           **fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")}
    script = tmp_path / "run.sbatch"
    args = ["train", "--dataset", "kitti", "--out", "data/runs/a b", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "lix.cli", "sbatch", "--params", str(ROOT / "params.yaml"), "--gpus",
                        "2", "--name", "sne152", "--port", str(port), "--slurm", "cpus_per_job=4", "--slurm",
                        "partition=gpu", "--out", str(script), "--", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    for line in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=2", "--cpus-per-task=4", "--partition=gpu",
                 "--job-name=sne152", "--output=data/logs/slurm/%x-%j.out"):
        assert f"#SBATCH {line}\n" in text, line
    assert (tmp_path / "data" / "logs" / "slurm").is_dir()  # sbatch would not make it
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert "torchrun" in srun and "--nproc-per-node=2" in srun and "--rdzv-backend=c10d" in srun
    assert "-m lix.cli train --dataset kitti --out 'data/runs/a b' --no-progress" in srun
    # run it as a one-node job would, with a probe module in place of lix.cli
    (tmp_path / "probe_rank.py").write_text(PROBE)
    (tmp_path / "probe").mkdir()
    job_env = {**env, "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_CPUS_PER_TASK": "4", "PROBE_OUT": str(tmp_path / "probe")}
    run = subprocess.run(["bash", "-c", text.replace("-m lix.cli", "-m probe_rank")], cwd=tmp_path, env=job_env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    got = [json.loads((tmp_path / "probe" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [(g["rank"], g["world"], g["local"]) for g in got] == [(0, 2, 0), (1, 2, 1)]
    assert all(g["sum"] == 3.0 and g["argv"] == args and g["omp"] == "2" for g in got)


def test_a_preempted_slurm_job_is_requeued_and_its_stage_runs_again(tmp_path, slurm_env, monkeypatch):
    """Slurm's preemption (or time-limit) signal reaches the job: submitit checkpoints the stage's
    job (a Checkpointable), requeues it and exits; the stage's dvc process group is stopped
    with it; the requeued job runs the stage again (the trainer then resumes from last.pt)
    and the sweep goes on as if nothing had happened."""
    import threading

    from submitit.slurm.slurm import SlurmJob

    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    dvc = _fake(tmp_path, sleep=0.2, slow_once={"teacher@a": 60.0})
    preempted = []

    def preempt_when_started(kind, stage, _d):
        if kind == "start" and stage == "teacher@a":
            def later():
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (tmp_path / "once_teacher@a").exists():
                    time.sleep(0.05)
                time.sleep(1.0)  # the job's signal handlers are in place
                entry = status(tmp_path)[1]
                job = next(r["job"] for r in entry if r["stage"] == "teacher@a")
                SlurmJob(folder=tmp_path, job_id=job)._interrupt()  # scancel --signal SIGTERM, then USR2
                preempted.append(job)
            threading.Thread(target=later, daemon=True).start()

    t0 = time.monotonic()
    out = run_plan(plan(ORDER, UP, changed=set(ORDER)), tmp_path, jobs=0, dvc=dvc, executor="slurm",
                   on_event=preempt_when_started, poll_s=0.05)
    assert preempted and out.ok, out
    assert time.monotonic() - t0 < 50  # not the 60 s of the first, preempted run
    starts = _check_order(tmp_path)
    assert len(starts["teacher@a"]) == 2 and all(len(v) == 1 for s, v in starts.items() if s != "teacher@a")
    assert (slurm_env / f"{preempted[0]}.state").read_text() == "COMPLETED"
    assert not _alive(int((tmp_path / "once_teacher@a").read_text()))  # the preempted run's process stopped
