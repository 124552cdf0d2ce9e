"""Where things live under ``data/``: the one place (besides ``dvc.yaml``, which spells the same
paths for DVC) that knows the directory layout. The CLI's defaults, the report's scan and the
sweep's stage names all come from here.

    data/raw/<ds>/            a dataset in its real on-disk layout (or the synthetic miniature)
    data/splits/<ds>.json     the train/val split
    data/depth|normals/<ds>/  dense depth, surface normals
    data/shards/<ds>/         the HDF5 shards the trainer reads
    data/previews/<ds>.png    a picture of the shards
    data/metrics/             preparation metrics; runs/<ds>/<model>/<method>/seed<k>.json per run
    data/runs/<ds>/<model>/<method>/seed<k>/   a training run: last.pt, best.pt, summary.json, ...
"""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path("data")
DOWNLOADS = DATA / "downloads"
RUNS = DATA / "runs"
METRICS = DATA / "metrics"
TEACHER = "teacher"  # the method directory of a dataset's teachers
SEED_DIR = re.compile(r"^seed(\d+)$")  # a run directory's name


def raw(dataset: str) -> Path:
    return DATA / "raw" / dataset


def split(dataset: str) -> Path:
    return DATA / "splits" / f"{dataset}.json"


def depth(dataset: str) -> Path:
    return DATA / "depth" / dataset


def normals(dataset: str) -> Path:
    return DATA / "normals" / dataset


def shards(dataset: str) -> Path:
    return DATA / "shards" / dataset


def preview(dataset: str) -> Path:
    return DATA / "previews" / f"{dataset}.png"


def prep_metrics(step: str, dataset: str) -> Path:
    """A preparation step's metrics: data/metrics/<step>_<ds>.json (depth, geometry, shards)."""
    return METRICS / f"{step}_{dataset}.json"


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def run_dir(dataset: str, model: str, method: str, seed: int, root: str | Path = RUNS) -> Path:
    """A run's directory: <root>/<ds>/<model>/<method>/seed<k> (method ``teacher`` for a teacher)."""
    return Path(root) / dataset / model / method / seed_dir(seed)


def run_name(dataset: str, model: str, method: str, seed: int) -> str:
    """The run's path below the runs root, as the report and the sweep name it."""
    return f"{dataset}/{model}/{method}/{seed_dir(seed)}"


def teacher_checkpoint(dataset: str, model: str, seed: int, which: str = "best", root: str | Path = RUNS) -> Path:
    """The teacher a student of this dataset, model and seed distils from (``distill.teacher``: best or last)."""
    return run_dir(dataset, model, TEACHER, seed, root) / f"{which}.pt"
