"""Deterministic train/val splits written as JSON manifests of sample ids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.atomic import write_json
from pipeline.manifests import read_versioned_json
from pipeline.errors import ConfigError

SCHEMA_VERSION = 1


def split_counts(n_images: int, ratio: Sequence[int]) -> tuple[int, int]:
    """(train, val) counts for ``n_images`` at ``ratio``; 700 at 5:2 -> (500, 200)."""
    n_train = int(round(n_images * ratio[0] / (ratio[0] + ratio[1])))
    return n_train, n_images - n_train


def make_split(ids: Sequence[str], n_images: int, ratio: Sequence[int], seed: int,
               key: str = "splits") -> dict[str, list[str]]:
    """Draw ``n_images`` ids with a seeded permutation, then cut them at ``ratio``.

    The result depends only on (sorted ids, n_images, ratio, seed). Each list is sorted.
    """
    ids = sorted(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate sample ids")
    if n_images > len(ids):
        raise ConfigError(f"{key}.n_images", f"asks for {n_images} images but the dataset has {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))[:n_images]
    n_train, _ = split_counts(n_images, ratio)
    return {"train": sorted(ids[i] for i in order[:n_train]), "val": sorted(ids[i] for i in order[n_train:])}


def write_manifest(path: str | Path, dataset: str, split: dict[str, list[str]], *, ratio, seed: int,
                   class_names: Sequence[str]) -> None:
    """Write the split manifest atomically; identical inputs give identical bytes."""
    write_json(path, {
        "schema_version": SCHEMA_VERSION, "dataset": dataset, "seed": seed, "ratio": list(ratio),
        "counts": {k: len(v) for k, v in split.items()}, "class_names": list(class_names), **split,
    })


def read_manifest(path: str | Path) -> dict:
    return read_versioned_json(path, "split manifest", SCHEMA_VERSION, "run `lix prepare splits` first")
