"""The DVC pipeline end to end on tiny parameters, in a scratch git+DVC repository (dvc_repo.py):
one `lix sweep` runs every stage, a second is a no-op, a changed parameter reruns only what reads
it, one stage can be reproduced alone, a failing run is isolated and an interrupted sweep resumes,
and runs made on another machine are restored, not retrained. (Runs interrupted and resumed under
DVC, DVC's metrics, plots and experiments, and the stages' code deps: test_runs_under_dvc.py.)"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from dvc_repo import FIRST_PASS_LOG, PIPELINE_DATASETS, PREP, repository_copy
from dvc_repo import ran as _ran
from dvc_repo import run as _run
from dvc_repo import runs as _runs
from dvc_repo import write_params as _write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository_copy(tmp_path_factory, "dvc_pipeline")


def test_repro_noop_and_targeted_rerun(repo):
    # the documented parallel runner did the first pass (dvc_repo.py); DVC then agrees that all is done
    first = (repo / FIRST_PASS_LOG).read_text()
    datasets = PIPELINE_DATASETS
    assert _ran(first) == sorted([f"{s}@{d}" for s in PREP for d in datasets] + _runs(datasets) + ["report"])
    for d in datasets:
        for r in ("teacher", "student", "lix"):
            run = repo / "data/runs" / d / "mfnet" / r / "seed0"
            assert (run / "metrics.json").is_file() and (run / "best.pt").is_file()
        assert (repo / "data/shards" / d / "manifest.json").is_file()
        assert (repo / "data/previews" / f"{d}.png").is_file()
    report = (repo / "data/report/README.md").read_text()
    assert "vKITTI2" in report and "LIX" in report
    # the shipped paper tables beside ours, with the two scale-free comparisons
    assert "### vKITTI2: the paper's published figures beside ours" in report
    assert "### vKITTI2: share of the teacher–student gap closed, ours beside the paper's" in report
    assert "Kendall's τ (mIoU) between our ranking and the paper's" in report
    for d in datasets:  # the pictures from real runs: curves, Fig. 5's CKA, the same-image grid, the DWC
        for fig in ("curves", "cka", "grid", "dwc"):
            assert (repo / "data/report" / f"{fig}_{d}_mfnet.png").is_file(), (fig, d)
            assert f"({fig}_{d}_mfnet.png)" in report
    second = _run(["dvc", "repro"], repo)
    assert _ran(second) == [] and "up to date" in second

    # targeted reruns (through lix sweep, which asks DVC what is out of date: the same answer)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["normals"]["kitti"]["max_depth"] = 50.0
    _write_params(repo, params)
    third = _run(["lix", "sweep", "-j", "2"], repo)
    assert _ran(third) == sorted(["normals@kitti", "shards@kitti", *_runs(["kitti"]), "report"])

    params["train"]["kitti"]["lr"] = 0.02  # a train.* key reruns only training and what follows
    params["distill"]["hyper"]["lix"] = {"w_arfd": 0.5}  # a method's hyper-parameters rerun its runs only
    params["distill"]["hyper"]["kd"] = {"temperature": 2.0}  # kd is not in sweep.methods: nothing
    params["sweep"]["ablations"] = ["dkd~beta=4"]  # a variant: its own runs, named after it
    _write_params(repo, params)
    fourth = _run(["lix", "sweep", "-j", "2"], repo)
    assert _ran(fourth) == sorted([*_runs(["kitti"]), "student@vkitti2-mfnet-lix-0", "report"]
                                  + [f"ablation@{d}-mfnet-dkd~beta=4-0" for d in datasets])
    assert (repo / "data/runs/kitti/mfnet/dkd~beta=4/seed0/metrics.json").is_file()
    import json

    abl = json.loads((repo / "data/report/summary.json").read_text())["datasets"]["kitti"]["ablations"]
    assert any(r["method"] == "dkd~beta=4" and r["cells"]["mfnet"]["n_ok"] == 1 for rows in abl.values() for r in rows)

    params["shards"]["kitti"]["samples_per_shard"] = 3
    _write_params(repo, params)
    alone = _run(["dvc", "repro", "--single-item", "shards@kitti"], repo)
    assert _ran(alone) == ["shards@kitti"]
    assert len(list((repo / "data/shards/kitti").glob("train-*.h5"))) == 2  # 4 train samples, 3 per shard
    # back to 2 per shard: DVC's run cache restores the shards, so nothing downstream reruns
    params["shards"]["kitti"]["samples_per_shard"] = 2
    params["sweep"]["ablations"] = []
    _write_params(repo, params)
    back = _run(["dvc", "repro"], repo)
    assert _ran(back) == [] and "shards@kitti" in back


def test_sweep_isolates_failures_and_resumes_after_an_interruption(repo):
    """A failing run is reported, its dependants skipped, everything else runs and the report
    shows it as failed; after Ctrl-C a rerun runs only what had not finished."""
    import json
    import signal
    import time

    assert _ran(_run(["dvc", "repro"], repo)) == []  # everything up to date first
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sweep"]["methods"] = ["student", "lix", "kd", "at"]
    # kd fails at its first step (a weight that makes its loss infinite): a failure only the run
    # meets, since every name, key and type is checked before anything runs
    params["distill"]["hyper"]["kd"] = {"w_kd": 1.0e39}
    _write_params(repo, params)
    res = subprocess.run(["lix", "sweep", "-j", "2"], cwd=repo, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 1, log
    kd = [f"student@{d}-mfnet-kd-0" for d in PIPELINE_DATASETS]
    at = [f"student@{d}-mfnet-at-0" for d in PIPELINE_DATASETS]
    assert _ran(log) == sorted(kd + at + ["report"])  # nothing finished reran
    for stage in kd:
        assert re.search(rf"failed\s+{re.escape(stage)}", log)
    failed = json.loads((repo / "data/runs/kitti/mfnet/kd/seed0/failed.json").read_text())
    assert "non-finite loss" in failed["error"]
    summary = json.loads((repo / "data/report/summary.json").read_text())
    assert summary["counts"]["failed"] == 2
    assert (repo / "data/runs/kitti/mfnet/at/seed0/metrics.json").is_file()
    assert "failed (1 of 1)" in (repo / "data/report/README.md").read_text()

    # fix kd, start the sweep, interrupt it (Ctrl-C) once the first kd run is recorded, resume
    params["distill"]["hyper"]["kd"] = {}
    _write_params(repo, params)
    planned = sorted(kd + ["report"])
    dry = _run(["lix", "sweep", "--dry"], repo)
    assert sorted(ln.split()[-1] for ln in dry.splitlines() if ln.strip().startswith("run ")) == planned
    # SIGINT restored in the child: a test run started in the background has it ignored
    proc = subprocess.Popen(["lix", "sweep", "-j", "1"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(s in (repo / "dvc.lock").read_text() for s in kd):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    interrupted = proc.communicate(timeout=120)[0]
    # what DVC recorded as finished (the sweep may be stopped between DVC's commit and its own
    # "done" line; DVC's record is what counts)
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=300)
    remaining = set(json.loads(status.stdout or "{}"))
    finished = set(planned) - remaining
    assert remaining <= set(planned) and finished & set(kd) and remaining, interrupted  # a real interruption
    resumed = _run(["lix", "sweep"], repo)
    assert _ran(resumed) == sorted(remaining)  # nothing that finished runs again
    assert _ran(_run(["lix", "sweep"], repo)) == []


def test_runs_made_on_another_machine_are_restored_not_retrained(repo, tmp_path):
    """The README's recipe for a matrix spread over machines, with a clone standing in for the
    collecting machine: the worker commits its dvc.lock and pushes its outputs (run directories
    persist, so DVC's run cache does not hold them), the collector pulls and finds every run up
    to date, byte for byte the worker's; `dvc plots diff` works on the fresh clone."""
    import hashlib

    _run(["dvc", "repro"], repo)  # the worker's runs (a no-op after the tests above)
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(remote)], repo)
    _run(["git", "add", "dvc.lock", "params.yaml"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "worker's runs"], repo)
    _run(["dvc", "push"], repo)

    collector = tmp_path / "collector"
    _run(["git", "clone", "-q", str(repo), str(collector)], tmp_path)
    _run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], collector)
    _run(["dvc", "plots", "diff", "HEAD"], collector)  # nothing pulled yet: no error
    _run(["dvc", "pull"], collector)
    target = "student@kitti-mfnet-lix-0"
    before = _run(["dvc", "status", target], collector)
    log = _run(["lix", "sweep", "--filter", target, "--no-report"], collector)
    assert _ran(log) == [], before  # nothing trained again

    def digest(root, run):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / run).iterdir())
                if p.is_file()}

    for run in ("data/runs/kitti/mfnet/teacher/seed0", "data/runs/kitti/mfnet/lix/seed0"):
        assert digest(collector, run) == digest(repo, run)
    assert "up to date" in _run(["dvc", "status", target], collector)
