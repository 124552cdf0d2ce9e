"""Splits are seeded, disjoint, at the paper's ratios, and byte-identical on rerun."""

from __future__ import annotations

import pytest

from lix.config import SplitConfig
from pipeline.errors import ConfigError
from pipeline.prepare import build_split
from pipeline.splits import make_split, read_manifest, split_counts


@pytest.mark.parametrize("n,ratio,expected", [(700, (5, 2), (500, 200)), (200, (3, 1), (150, 50)),
                                              (800, (7, 3), (560, 240))])
def test_paper_ratios(n, ratio, expected):
    assert split_counts(n, ratio) == expected
    ids = [f"id{i:05d}" for i in range(n + 37)]
    s = make_split(ids, n, ratio, seed=0)
    assert (len(s["train"]), len(s["val"])) == expected
    assert not set(s["train"]) & set(s["val"])


def test_deterministic_and_seeded():
    ids = [f"{i:06d}" for i in range(100)]
    a, b = make_split(ids, 40, (3, 1), 7), make_split(list(reversed(ids)), 40, (3, 1), 7)
    assert a == b
    assert make_split(ids, 40, (3, 1), 8) != a


def test_too_few_images():
    with pytest.raises(ConfigError, match="asks for 10 images but the dataset has 5"):
        make_split(["a", "b", "c", "d", "e"], 10, (1, 1), 0, key="splits.kitti")


def test_manifest_rerun_is_byte_identical(synth_root, tmp_path):
    cfg = SplitConfig(n_images=8, ratio=(3, 1), seed=0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    build_split("kitti", synth_root / "kitti", a, cfg, None, progress=False)
    build_split("kitti", synth_root / "kitti", b, cfg, None, progress=False)
    assert a.read_bytes() == b.read_bytes()
    m = read_manifest(a)
    assert m["counts"] == {"train": 6, "val": 2} and m["dataset"] == "kitti"
    assert len(m["class_names"]) == 19
