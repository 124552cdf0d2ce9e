"""What identifies a run and where it comes from: the resolved run config a checkpoint records
(``run_config``), its digest (``run_digest``), the digest of the code a training run executes
(``code_digest``), the commit and host (``provenance``), and the resume modes that compare them
(``resume_mode``, ``same_run``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
from pathlib import Path

import torch

import pipeline
from lix.checkpoint import RESUMABLE_KEYS, config_diff, flatten
from lix.config import TrainConfig
from lix.inputs import x_channels
from pipeline.errors import ConfigError


def run_config(cfg: TrainConfig, dataset: str, role: str, class_names: list[str], world_size: int) -> dict:
    """The resolved config a checkpoint records (plain types; resume compares it key by key)."""
    x = cfg.x if role == "teacher" else None
    return {"dataset": dataset, "role": role, "x": x, "x_channels": x_channels(x), "n_classes": len(class_names),
            "class_names": list(class_names), "world_size": world_size,
            "train": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def run_digest(config: dict) -> str:
    """sha256 (hex) of the run config without the keys a resume may change (``RESUMABLE_KEYS``):
    two runs with the same digest follow the same trajectory of weights (on the same code)."""
    kept = {k: v for k, v in flatten(config).items() if k not in RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


# Project files a training run never executes (the commands' front ends, the report, the sweep,
# prediction, the data layout, the preparation stages): edits there do not make a checkpoint
# another run's. Any other file counts, a new module included, so the list errs on the side of
# starting afresh. Path prefixes from the repository root, so that they survive a module growing
# into a package. lix/layout.py is here because no training module imports it: the front ends
# pick the paths and hand them to fit. Likewise the dataset readers: training reads shards, and
# the class names and colours it needs live in pipeline/labels.py.
NOT_TRAINING_CODE = ("lix/cli", "lix/report", "lix/sweep", "lix/verdict", "lix/config_slurm.py", "lix/predict.py",
                     "lix/cross_dataset.py", "lix/layout.py",
                     "pipeline/depth/", "pipeline/download.py", "pipeline/normals.py", "pipeline/geometry_quality.py",
                     "pipeline/splits.py", "pipeline/prepare.py", "pipeline/sources/synthetic/",
                     "pipeline/sources/kitti.py", "pipeline/sources/vkitti2.py", "pipeline/sources/nuimages.py")


def code_digest() -> str:
    """sha256 (hex) of the source of the code a training run executes: every ``.py`` file of
    the ``lix`` and ``pipeline`` packages but those of :data:`NOT_TRAINING_CODE`, by relative
    path. It depends on the checkout only (not on what happened to be imported), so a resume by
    any command or process compares like with like."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in (Path(__file__).resolve().parent, Path(pipeline.__file__).resolve().parent):
        for path in sorted(package.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in rel or rel.startswith(NOT_TRAINING_CODE):
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def provenance(config: dict, code: str) -> dict:
    """Where a run comes from: the git commit of the working directory (None outside a
    repository) and whether tracked files differ from it, the run and code digests, the host and
    the versions. Recorded in ``summary.json`` (the report's setup table)."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # dirty: tracked files differ from the commit, DVC's own record (dvc.lock, rewritten by every
    # stage of a `dvc repro`) aside
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status), "run_digest": run_digest(config),
            "code_digest": code, "host": platform.node(), "torch": torch.__version__,
            "python": platform.python_version()}


RESUME_MODES = ("always", "never", "if_same")  # fit's resume: True = "always", False = "never"


def resume_mode(resume: bool | str) -> str:
    mode = {True: "always", False: "never"}.get(resume, resume)
    if mode not in RESUME_MODES:
        raise ConfigError("resume", f"expected one of {RESUME_MODES} (or a bool), got {resume!r}")
    return mode


def same_run(saved: dict, config: dict, code: str) -> list[str]:
    """Why the checkpoint's run is not this one: the config keys that differ (resumable keys
    aside), and "code" when the code that trained it (its ``code_digest``) is not ``code``."""
    why = [k for k, _, _ in config_diff(saved["config"], config)]
    saved_code = saved.get("code_digest")
    if saved_code is not None and saved_code != code:
        why.append("code")
    return why
