"""A seeded procedural driving-scene renderer that writes miniature copies of vKITTI2,
KITTI (Semantics + 2015 stereo) and nuImages in their real on-disk layouts and encodings.

``generate`` writes into a temporary sibling and renames it into place, so an interrupted
run never leaves a dataset root that looks complete.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.sources.synthetic.kitti import write_kitti
from pipeline.sources.synthetic.nuimages import write_nuimages
from pipeline.sources.synthetic.vkitti2 import write_vkitti2

WRITERS = {"vkitti2": write_vkitti2, "kitti": write_kitti, "nuimages": write_nuimages}


def generate(dataset: str, root: str | Path, *, n_images: int, width: int, height: int, seed: int,
             workers: int = 1, progress: bool = True, **extra) -> Path:
    """Write the synthetic ``dataset`` under ``root`` (replacing it). Returns ``root``.

    ``extra`` options a writer does not take (e.g. ``variations`` for KITTI) are ignored.
    """
    if dataset not in WRITERS:
        raise KeyError(f"no synthetic writer for {dataset!r}; expected one of {sorted(WRITERS)}")
    accepted = inspect.signature(WRITERS[dataset]).parameters
    extra = {k: v for k, v in extra.items() if k in accepted}
    root = Path(root)
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        WRITERS[dataset](tmp, n_images=n_images, width=width, height=height, seed=seed, workers=workers,
                         progress=progress, **extra)
    return root
