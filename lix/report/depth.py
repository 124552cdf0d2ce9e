"""The depth source of each dataset's X, read from its shards.

What the teacher's X was computed from decides what "distilling geometry" means: KITTI's X on the
default pipeline is classical SGBM stereo, where the paper used a CREStereo network. The shards
record the depth backend of every sample (pipeline/shards.py: ``depth_backend``, from `lix prepare
depth`'s manifest), so the report reads it there rather than trusting params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pipeline.errors import DataError

DEPTH_BACKEND_KIND = {"sgbm": "stereo", "crestereo": "stereo network", "depth_anything": "monocular network",
                      "ground_truth": "the dataset's own depth"}

PAPER_DEPTH = {"vkitti2": ("ground_truth", "rendered depth"), "kitti": ("crestereo", "CREStereo"),
               "nuimages": ("depth_anything", "Depth Anything")}  # the paper's Sec. IV-A


def read_depth_source(shard_dir: str | Path) -> dict[str, int]:
    """{depth backend: samples} over the train and val shards of ``shard_dir`` (the per-sample
    ``depth_backend`` field; "" where the preparation recorded none). DataError when the shards
    cannot be read."""
    from pipeline.shards import open_shard, read_manifest

    shard_dir = Path(shard_dir)
    counts: dict[str, int] = {}
    for split in read_manifest(shard_dir)["splits"].values():
        for entry in split["shards"]:
            with open_shard(shard_dir / entry["file"]) as f:
                names = f["depth_backend"][:] if "depth_backend" in f else [b""] * len(f["id"])
                for b in names:
                    name = b.decode() if isinstance(b, bytes) else str(b)
                    counts[name] = counts.get(name, 0) + 1
    return counts


def depth_sources(shards_root: str | Path | None, datasets: Iterable[str]) -> tuple[dict, list[str]]:
    """({dataset: {backend: samples}}, notes) for the datasets with shards under ``shards_root``;
    {} without a shards root. A dataset whose shards cannot be read is left out, with a note."""
    out, notes = {}, []
    if shards_root is None:
        return out, notes
    for ds in datasets:
        d = Path(shards_root) / ds
        if not d.is_dir():
            continue
        try:
            out[ds] = read_depth_source(d)
        except (DataError, OSError, KeyError) as e:
            notes.append(f"{d}: the depth source could not be read from the shards ({e})")
    return out, notes


def fmt_depth_source(counts: dict[str, int] | None) -> str:
    """"sgbm (stereo)", or a mix "crestereo (stereo network) 150, sgbm (stereo) 50"; "—" unknown."""
    if not counts:
        return "—"
    order = sorted(counts, key=lambda b: (-counts[b], b))

    def label(b: str) -> str:
        return (b or "not recorded") + (f" ({DEPTH_BACKEND_KIND[b]})" if b in DEPTH_BACKEND_KIND else "")

    if len(order) == 1:
        return label(order[0])
    return ", ".join(f"{label(b)} {counts[b]}" for b in order)
