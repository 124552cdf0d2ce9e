"""Shared fixtures: small synthetic datasets, generated once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Under pytest-xdist (the README's test command: -n 2) the workers share the cores: each gets its share
# of intra-op threads, and so do the subprocesses it starts (OpenMP threads of two workers
# spinning on two cores cost more than they bring). A value set by the user wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402  (after the thread settings: torch reads them when first imported)

from pipeline.sources.synthetic import generate  # noqa: E402

SMALL = {
    "kitti": dict(n_images=8, width=160, height=48, seed=3),
    "vkitti2": dict(n_images=10, width=160, height=48, seed=4, variations=("clone", "fog")),
    "nuimages": dict(n_images=8, width=160, height=90, seed=5),
}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for name, kw in SMALL.items():
        generate(name, root / name, workers=1, progress=False, **kw)
    return root


@pytest.fixture
def dataset_copy(synth_root, tmp_path):
    """A private copy of one synthetic dataset that a test may damage."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(synth_root / name, dst)
        return dst

    return make


@pytest.fixture(scope="session")
def train_shards(synth_root, tmp_path_factory) -> Path:
    """kitti shards, 8 images at 160x48: 6 train (3 steps of batch 2) / 2 val; ground-truth depth."""
    from prep_utils import prepare_kitti

    d = tmp_path_factory.mktemp("train_data")
    prepare_kitti(synth_root / "kitti", d)
    return d / "shards"


@pytest.fixture(scope="session")
def teacher(train_shards, tmp_path_factory) -> Path:
    """best.pt of a 1-epoch MFNet teacher on ``train_shards`` (distill_utils.cfg)."""
    from distill_utils import cfg

    from lix.train import fit

    out = tmp_path_factory.mktemp("teacher")
    fit(train_shards, out, cfg(), dataset="kitti", role="teacher", progress=False)
    return out / "best.pt"
