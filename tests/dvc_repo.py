"""The scratch git + DVC repository of the end-to-end pipeline tests (test_dvc_pipeline.py,
test_runs_under_dvc.py): this checkout's stage code and dvc.yaml on tiny parameters, and its
first pass (`lix sweep -j 2`) run once per test session, then copied into each test module.

The first pass is the expensive part (every preparation, training and report stage); under
pytest-xdist the workers share it (a file lock: the first worker to need it builds it, the
others wait and copy), so the two modules can run on two workers side by side."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "synthetic": {"vkitti2": {"n_images": 6, "width": 96, "height": 48, "variations": ["clone"]},
                  "kitti": {"n_images": 6, "width": 96, "height": 48},
                  "nuimages": {"n_images": 6, "width": 96, "height": 54}},
    "splits": {d: {"n_images": 6, "ratio": r} for d, r in
               (("vkitti2", [5, 2]), ("kitti", [3, 1]), ("nuimages", [7, 3]))},
    "depth": {"vkitti2": {"backend": "ground_truth"}, "kitti": {"backend": "sgbm", "max_disparity": 32},
              "nuimages": {"backend": "ground_truth"}},
    "shards": {d: {"samples_per_shard": 2} for d in ("vkitti2", "kitti", "nuimages")},
    "train": {d: {"epochs": 1, "batch_size": 2, "crop": None} for d in ("vkitti2", "kitti", "nuimages")},
}
PREP = ("download", "splits", "depth", "normals", "shards")
# Two of the three datasets keep the DVC mechanics (foreach/matrix over params.yaml's datasets,
# no-op, targeted reruns) inside the suite's time budget; every reader, nuImages' included, is
# tested end to end on its own in test_readers.py / test_shards.py.
PIPELINE_DATASETS = ("vkitti2", "kitti")
FIRST_PASS_LOG = "first_pass.log"  # in the base repository: what its first `lix sweep -j 2` printed


def run(cmd, cwd, ok=True):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def ran(log):
    """Stages a `dvc repro` ran, or a `lix sweep` started."""
    return sorted(set(re.findall(r"Running stage '([^']+)'", log)) | set(re.findall(r"^start\s+(\S+)$", log, re.M)))


def runs(datasets, methods=("student", "lix"), seed=0):
    return [f"teacher@{d}-mfnet-{seed}" for d in datasets] + [f"student@{d}-mfnet-{m}-{seed}" for d in datasets
                                                               for m in methods]


def write_params(repo, params):
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _build(d: Path) -> None:
    """The scratch repository at ``d`` (absent), committed, after its first `lix sweep -j 2`."""
    for package in ("pipeline", "lix"):  # the stages' code deps
        shutil.copytree(REPO / package, d / package, ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, d / name)
    (d / "data/cross").mkdir(parents=True)  # tracked, so the report can depend on it when empty
    shutil.copy(REPO / "data/cross/README.md", d / "data/cross/README.md")
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # DVC wants every key a stage names
    for section, per_dataset in TINY.items():
        for dataset, values in per_dataset.items():
            params[section][dataset] = {**params[section][dataset], **values}
    params["datasets"] = list(PIPELINE_DATASETS)
    write_params(d, params)
    run(["git", "init", "-q"], d)
    run(["dvc", "init", "-q"], d)
    run(["dvc", "config", "core.analytics", "false"], d)
    # A repository with history, as a clone is (dvclive asks git for the current revision).
    run(["git", "add", "-A"], d)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "scratch"], d)
    # the documented parallel runner does the first pass (test_dvc_pipeline.py checks what it did)
    log = run(["lix", "sweep", "-j", "2"], d)
    (d / FIRST_PASS_LOG).write_text(log)


def base_repository(tmp_path_factory) -> Path:
    """The session's built scratch repository (read-only by convention: copy it), shared by the
    xdist workers of one run through their common temporary folder."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' folders share this parent
    base, failed = root / "dvc_base", root / "dvc_base.failed"
    with FileLock(str(root / "dvc_base.lock")):
        if failed.is_file():  # another module's worker met it already: no second build of minutes
            raise AssertionError(f"the scratch repository's first pass failed (in another module):\n"
                                 f"{failed.read_text()}")
        if not (base / FIRST_PASS_LOG).is_file():  # written last: a half-built one is not taken
            partial = root / "dvc_base.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            try:
                _build(partial)
            except BaseException as e:
                failed.write_text(str(e)[-4000:])
                raise
            partial.rename(base)
    return base


def repository_copy(tmp_path_factory, name: str) -> Path:
    """A private copy of the built scratch repository, for one test module."""
    if shutil.which("dvc") is None or shutil.which("lix") is None:
        import pytest

        pytest.skip("dvc and the lix console script must be installed")
    base = base_repository(tmp_path_factory)
    d = tmp_path_factory.mktemp(name)
    shutil.rmtree(d)
    # DVC's own state (.dvc/tmp: hashes by inode and mtime) is rebuilt in the copy
    shutil.copytree(base, d, symlinks=True, ignore=lambda src, names: ["tmp"] if src.endswith("/.dvc") else [])
    return d
