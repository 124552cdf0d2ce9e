"""Runs under DVC in the scratch git+DVC repository (dvc_repo.py), after its first pass: an
interrupted `dvc repro` resumes where it stopped (a training run, the depth stage), a refused
parameter keeps the previous run, DVC lists every run's metrics and plots and runs an experiment,
a comment in a reader reruns only the preparation that imports it, and each stage's code deps in
dvc.yaml are exactly the files its command imports. (The first pass, no-ops, targeted reruns and
failures: test_dvc_pipeline.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc_repo import PIPELINE_DATASETS, PREP, REPO, repository_copy
from dvc_repo import ran as _ran
from dvc_repo import run as _run
from dvc_repo import write_params as _write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository_copy(tmp_path_factory, "runs_under_dvc")


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_interrupted_run_resumes_under_dvc_and_a_bad_parameter_keeps_the_previous_run(repo, tmp_path):
    """Run directories persist: an interrupted `dvc repro` goes on from last.pt at the epoch it
    reached, to the weights of an uninterrupted run; a parameter the run refuses leaves the
    previous run's files as they were. (On vKITTI2's LIX student: only the report is downstream.)"""
    import os
    import signal
    import time

    import torch

    _run(["dvc", "repro"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    saved = yaml.safe_dump(params)
    stage, run = "student@vkitti2-mfnet-lix-0", repo / "data/runs/vkitti2/mfnet/lix/seed0"
    before = _snapshot(run)
    # a parameter only the method can judge (refused when LIX is built): the previous run stays
    params["distill"]["hyper"]["lix"] = {**params["distill"]["hyper"]["lix"], "dwc_training": "bogus"}
    _write_params(repo, params)
    res = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=repo, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode != 0 and "dwc_training" in res.stdout + res.stderr
    after = _snapshot(run)
    assert "failed.json" in after
    after.pop("failed.json")
    assert after == before

    # a changed run (another w_arfd; 3 epochs): started afresh, cut after its first epoch, resumed
    params = yaml.safe_load(saved)
    params["distill"]["hyper"]["lix"] = {**params["distill"]["hyper"]["lix"], "w_arfd": 0.3}
    params["distill"]["epochs"] = 3
    _write_params(repo, params)
    log = tmp_path / "repro.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=repo, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and "epoch 1/3" not in log.read_text() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    proc.wait(timeout=120)
    first = log.read_text()
    assert "starting afresh" in first and "interrupted" in first, first
    cut = torch.load(run / "last.pt", weights_only=True)
    reached = cut["epoch"]
    assert 1 <= reached < 3, first
    assert not (run / "failed.json").exists()  # the fresh start removed the old attempt's record
    again = _run(["dvc", "repro", "--single-item", stage], repo)
    assert f"at epoch {reached} of 3" in again and "epoch 3/3" in again, again
    resumed = torch.load(run / "last.pt", weights_only=True)
    # The reference: the same stage, uninterrupted (its run directory cleared, so it starts afresh).
    # The same command line keeps the two processes alike: LIX's losses move with the process's
    # memory layout (another --out path gave another epoch-1 loss in the 5th digit, MKL_CBWR
    # notwithstanding).
    for name in ("last.pt", "best.pt", "model.safetensors", "summary.json", "metrics.json"):
        (run / name).unlink(missing_ok=True)
    fresh = _run(["dvc", "repro", "--single-item", "--force", stage], repo)
    assert "resuming" not in fresh and "epoch 3/3" in fresh, fresh
    ours, ref = resumed["model"], torch.load(run / "last.pt", weights_only=True)["model"]
    assert ours.keys() == ref.keys()
    # The resumed run lands on the uninterrupted run's weights: far closer to them than the epochs
    # after the cut moved them (a lost optimizer state, schedule or RNG stream is a distance of the
    # order of that move); non-float tensors (BatchNorm's counters) exactly. Two processes of the
    # same command already differ in the 7th digit of epoch 1's loss (4.6523733 vs 4.6523714 seen),
    # which two more epochs amplify to 0.4-0.5 % of the move (seen on 2 cores), hence 2 %: exactness
    # itself is tested in one process, bit for bit (test_train.py, test_distill_train.py).
    floats = [k for k in ref if ref[k].is_floating_point()]
    gap = sum(float((ours[k] - ref[k]).double().square().sum()) for k in floats) ** 0.5
    moved = sum(float((ref[k] - cut["model"][k]).double().square().sum()) for k in floats) ** 0.5
    uninterrupted = torch.load(run / "last.pt", weights_only=True)
    losses = [[h.get("train/loss") for h in c["history"]] for c in (resumed, uninterrupted)]
    assert moved > 0 and gap <= 2e-2 * moved, (gap, moved, reached, losses)
    assert all(torch.equal(ours[k], ref[k]) for k in ref if k not in floats)
    # distill.epochs back to null: the students not rerun above still match their records; the LIX
    # runs (w_arfd) and the report follow
    params["distill"]["epochs"] = None
    _write_params(repo, params)
    assert _ran(_run(["dvc", "repro"], repo)) == sorted([stage, "student@kitti-mfnet-lix-0", "report"])


def test_dvc_lists_every_run_metric_and_plot_and_a_dry_sweep_writes_nothing(repo):
    import json

    _run(["dvc", "repro"], repo)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo))
    files = next(iter(shown.values()))["data"]
    for d in PIPELINE_DATASETS:
        for r in ("teacher", "student", "lix"):
            m = files[f"data/metrics/runs/{d}/mfnet/{r}/seed0.json"]["data"]
            assert {"miou", "mfsc", "fwiou", "fwfsc", "best_epoch"} <= set(m), (d, r)
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], repo))["data"]
    for d in PIPELINE_DATASETS:
        rows = plots[f"data/plots/val_miou/{d}.csv"][0]["content"]["data"]["values"]
        # every run in data/runs (the matrix's, and those of earlier tests' matrices), a line each
        assert {r["run"] for r in rows} >= {"mfnet/teacher/seed0", "mfnet/student/seed0", "mfnet/lix/seed0"}
        assert {"epoch", "run", "miou"} <= set(rows[0])

    # (w_arfd is 0.3 here after the interrupted-run test, 1.0 when this test runs alone: 0.25 is a
    # change either way)
    text = (repo / "params.yaml").read_bytes()
    dry = _run(["lix", "sweep", "--dry", "-S", "distill.hyper.lix.w_arfd=0.25"], repo)
    assert (repo / "params.yaml").read_bytes() == text  # --dry writes nothing
    assert "would set distill.hyper.lix.w_arfd = 0.25" in dry
    planned = {ln.split()[-1] for ln in dry.splitlines() if ln.strip().startswith("run ")}
    assert planned == {f"student@{d}-mfnet-lix-0" for d in PIPELINE_DATASETS} | {"report"}

    # the documented way to try a hyper-parameter, and DVC's experiment table lists the run's metrics
    exp = _run(["dvc", "exp", "run", "-S", "distill.hyper.lix.w_arfd=0.25", "student@kitti-mfnet-lix-0"], repo)
    assert "Ran experiment" in exp
    table = _run(["dvc", "exp", "show", "--csv"], repo)
    assert "data/metrics/runs/kitti/mfnet/lix/seed0.json:miou" in table.splitlines()[0]
    # the experiment's run is the workspace's now; what it did not reach follows
    assert _ran(_run(["dvc", "repro"], repo)) == ["report", "student@vkitti2-mfnet-lix-0"]


def test_a_comment_in_a_reader_reruns_only_the_preparation_that_imports_it(repo):
    """A comment-only edit of the vKITTI2 reader: `dvc repro` reruns the preparation stages whose
    code changed (those that import that reader); their outputs come out byte-identical (shards
    included: HDF5 without timestamps), so nothing downstream of them and no training stage reruns."""
    reader = repo / "pipeline/sources/vkitti2.py"
    text = reader.read_text()
    # everything is up to date here: the copy's first pass, and the test above ends with `dvc repro`
    try:
        reader.write_text(text + "# a comment\n")
        log = _run(["dvc", "repro"], repo)
    finally:
        reader.write_text(text)
        _run(["dvc", "commit", "-f", "-q"], repo)  # the original text's hashes back in dvc.lock
    ran = _ran(log)
    assert "splits@vkitti2" in ran and all(s.split("@")[0] in PREP for s in ran), log
    assert not any(s.endswith("@kitti") and s.split("@")[0] in ("splits", "depth", "normals") for s in ran), ran


# Package markers and the root command table hold no stage logic, and lix/config.py (with its
# schema reader lix/config_schema.py and the sweep's sweep.slurm section, lix/config_slurm.py)
# only validates: every value a stage reads is written out in params.yaml (tests/test_config.py),
# whose keys each stage lists. Every other project module a stage imports must be under one of its deps.
# The root table imports every command group, so a stage also imports the other groups' modules
# (lix/cli/*.py), whose commands import their code lazily: only its own group counts.


NOT_CODE_DEPS = {"pipeline/__init__.py", "lix/__init__.py", "lix/cli/__init__.py", "lix/config.py",
                 "lix/config_schema.py", "lix/config_slurm.py"}
COMMAND_GROUP = {"teacher": "lix/cli/train.py", "student": "lix/cli/distill.py", "ablation": "lix/cli/distill.py",
                 "report": "lix/cli/report.py"}  # else lix/cli/prepare.py


def _stages(repo):
    """{stage@item: (cmd, deps)} from dvc.yaml: foreach over params.yaml datasets, and matrix
    stages over datasets x their other axes (named stage@dataset-role, as DVC names them)."""
    import itertools

    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    datasets = params["datasets"]

    def values(v):  # ${a.b} -> params.yaml's a.b
        if isinstance(v, str) and v.startswith("${"):
            node = params
            for key in v[2:-1].split("."):
                node = node[key]
            return node
        return v

    out = {}
    for name, st in spec["stages"].items():
        if "foreach" in st:
            for d in datasets:
                sub = lambda s: s.replace("${item}", d)  # noqa: E731
                out[f"{name}@{d}"] = (sub(st["do"]["cmd"]), [sub(p) for p in st["do"].get("deps", [])])
            continue
        if "matrix" not in st:
            out[name] = (st["cmd"], list(st.get("deps", [])))
            continue
        axes = {k: values(v) for k, v in st["matrix"].items()}
        for values_ in itertools.product(*axes.values()):
            item = dict(zip(axes, values_))

            def sub(s, item=item):
                for k, v in item.items():
                    s = s.replace("${item.%s}" % k, str(v))
                return s

            cmd = re.sub(r"\$\{([\w.]+)\}", lambda m: str(values(m.group(0))), sub(st["cmd"]))
            out[f"{name}@{'-'.join(map(str, values_))}"] = (cmd, [sub(p) for p in st.get("deps", [])])
    return out


def _imported_files(cmd, cwd):
    """Project source files a stage command imports: the modules loaded when it exits (sys.modules,
    written by an atexit hook; imports made on demand, such as a reader the registry loads, count)."""
    import json
    import tempfile

    argv = cmd.split()
    assert argv[0] == "lix"
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "modules.json"
        code = (f"import atexit, json, sys; atexit.register(lambda: open({str(listing)!r}, 'w')"
                f".write(json.dumps(sorted(sys.modules)))); from lix.cli import app; app()")
        res = subprocess.run(["python", "-c", code, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        modules = json.loads(listing.read_text())
    files = set()
    for mod in modules:
        if mod.split(".")[0] not in ("pipeline", "lix"):
            continue
        rel = Path(*mod.split("."))
        for cand in (rel.with_suffix(".py"), rel / "__init__.py"):
            if (REPO / cand).is_file():
                files.add(cand.as_posix())
    return files


def _code_files(dep: str) -> set[str]:
    """The project .py files a code dep names (a file, or every .py file under a folder)."""
    path = REPO / dep
    if path.is_dir():
        return {p.relative_to(REPO).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
    return {dep} if dep.endswith(".py") else set()


def deps_gaps(stage: str, deps: list[str], imported: set[str]) -> dict[str, list[str]]:
    """What a stage's code deps lack and hold beyond its imports: {"add": files it imports that no
    dep covers, "remove": code deps it does not import (a folder: its files the stage does not
    import, to be named one by one instead)}. Data deps and non-Python files are not code deps."""
    own = COMMAND_GROUP.get(stage.split("@")[0], "lix/cli/prepare.py")
    other_groups = {str(p.relative_to(REPO)) for p in (REPO / "lix/cli").glob("*.py")} - {own, "lix/cli/common.py"}
    counted = imported - NOT_CODE_DEPS - other_groups
    code = [d for d in deps if d.split("/")[0] in ("lix", "pipeline")]
    add = sorted(f for f in counted if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in code))
    remove = []
    for d in code:  # another group's module the stage does import (lix/cli/train.py for distill) may stay
        unused = sorted(_code_files(d) - imported - NOT_CODE_DEPS)
        if unused and (not (REPO / d).is_dir() or unused == sorted(_code_files(d) - NOT_CODE_DEPS)):
            remove.append(d)  # a file it does not import, or a folder none of whose files it imports
        elif unused:
            remove += [f"{d} (name its imported files instead; it does not import {unused})"]
    return {k: v for k, v in (("add", add), ("remove", remove)) if v}


def test_interrupted_depth_stage_resumes_under_dvc(repo):
    """DVC deletes a stage's outputs before running it unless they persist. The depth outputs
    persist, so a `dvc repro` after an interruption computes only the frames not yet done. The
    interruption is reproduced exactly: half the frames finished (maps + log lines), as the
    stage's own command leaves them when stopped, then `dvc repro`."""
    _run(["dvc", "repro"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["depth"]["kitti"]["block_size"] = 7  # the stage must run again
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = _stages(repo)["depth@kitti"][0].split()
    half = _run([*cmd, "--part", "0", "--num-parts", "2"], repo)
    assert "3 computed" in half
    resumed = _run(["dvc", "repro", "depth@kitti"], repo)
    assert _ran(resumed) == ["depth@kitti"]
    assert "3 computed, 3 already done" in resumed


def test_stage_deps_cover_the_code_they_run(repo):
    """Both directions: every project file a stage's command imports is under one of its deps (or
    an edit would not rerun it), and every code dep is imported (or an edit would rerun it for
    nothing: a reader's edit must not retrain). The failure lists, per stage, the deps to add and
    to remove in dvc.yaml."""
    # Last in the module: the stage commands run here in place (their inputs are the first pass's)
    # and leave outputs DVC no longer recognises, which a later test would pay to rebuild.
    gaps = {}
    for stage, (cmd, deps) in _stages(repo).items():
        if stage != "report" and ("@kitti" not in stage or stage.endswith("-student-0")):
            if not stage.startswith(("splits@vkitti2", "depth@vkitti2", "normals@vkitti2")):
                continue  # the same code per dataset and method; one is enough (two for per-reader stages)
        found = deps_gaps(stage, deps, _imported_files(cmd, repo))
        if found:
            gaps[stage] = found
    assert not gaps, "dvc.yaml deps differ from what the stage commands import:\n" + "\n".join(
        f"  {stage}: " + "; ".join(f"{k} {v}" for k, v in found.items()) for stage, found in gaps.items())
