"""Deterministic train/val splits written as JSON manifests of sample ids."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.atomic import write_json
from pipeline.errors import ConfigError
from pipeline.manifests import read_versioned_json

SCHEMA_VERSION = 2  # 2: group_by, groups and n_images_requested recorded


def split_counts(n_images: int, ratio: Sequence[int]) -> tuple[int, int]:
    """(train, val) counts for ``n_images`` at ``ratio``; 700 at 5:2 -> (500, 200)."""
    n_train = int(round(n_images * ratio[0] / (ratio[0] + ratio[1])))
    return n_train, n_images - n_train


def make_split(ids: Sequence[str], n_images: int, ratio: Sequence[int], seed: int,
               key: str = "splits", groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Draw ``n_images`` ids with a seeded permutation, then cut them at ``ratio``.

    With ``groups`` (sample id -> group key) whole groups are drawn and cut, so no group has
    samples on both sides: groups are taken in seeded order until ``n_images`` samples are
    reached (the last group taken whole only if that lands closer to ``n_images``), and the
    cut falls on the group boundary closest to the ratio's train count. With equal group sizes
    that divide the counts (vKITTI2's variations of a frame) the counts are exact; otherwise
    each differs by less than one group. The result depends only on (sorted ids, groups,
    n_images, ratio, seed). Each list is sorted.
    """
    ids = sorted(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate sample ids")
    if n_images > len(ids):
        raise ConfigError(f"{key}.n_images", f"asks for {n_images} images but the dataset has {len(ids)}")
    if groups is None:
        order = np.random.default_rng(seed).permutation(len(ids))[:n_images]
        n_train, _ = split_counts(n_images, ratio)
        return {"train": sorted(ids[i] for i in order[:n_train]), "val": sorted(ids[i] for i in order[n_train:])}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(groups[i], []).append(i)
    keys = sorted(members)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    chosen: list[str] = []
    total = 0
    for g in order:
        size = len(members[g])
        if total + size > n_images and (total + size - n_images) >= (n_images - total):
            break
        chosen.append(g)
        total += size
        if total >= n_images:
            break
    n_train, _ = split_counts(total, ratio)
    ends = np.cumsum([len(members[g]) for g in chosen])
    cut = int(np.argmin(np.abs(ends - n_train))) + 1  # groups [0, cut) go to train
    cut = min(max(cut, 1), len(chosen) - 1) if len(chosen) >= 2 else cut
    train = [i for g in chosen[:cut] for i in members[g]]
    val = [i for g in chosen[cut:] for i in members[g]]
    if not train or not val:
        raise ConfigError(f"{key}.group_by", f"{len(chosen)} group(s) cannot make both a train and a val split")
    return {"train": sorted(train), "val": sorted(val)}


def write_manifest(path: str | Path, dataset: str, split: dict[str, list[str]], *, ratio, seed: int,
                   class_names: Sequence[str], n_images: int | None = None, group_by: str = "none",
                   groups: Mapping[str, str] | None = None) -> None:
    """Write the split manifest atomically; identical inputs give identical bytes. Records the
    asked-for count, the grouping and, per split, the number of groups."""
    per_split_groups = {k: len({(groups or {}).get(i, i) for i in v}) for k, v in split.items()}
    write_json(path, {
        "schema_version": SCHEMA_VERSION, "dataset": dataset, "seed": seed, "ratio": list(ratio),
        "n_images_requested": n_images if n_images is not None else sum(len(v) for v in split.values()),
        "group_by": group_by, "groups": per_split_groups,
        "counts": {k: len(v) for k, v in split.items()}, "class_names": list(class_names), **split,
    })


def read_manifest(path: str | Path) -> dict:
    return read_versioned_json(path, "split manifest", SCHEMA_VERSION, "run `lix prepare splits` first")


def sample_ids(reader, split_path: str | Path | None) -> list[str]:
    """The ids of a split manifest (train and val, sorted), or every sample of ``reader``."""
    if split_path is None:
        return reader.ids()
    m = read_manifest(split_path)
    return sorted(m["train"] + m["val"])
