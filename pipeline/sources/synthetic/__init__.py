"""A seeded procedural driving-scene renderer that writes miniature copies of vKITTI2,
KITTI (Semantics + 2015 stereo) and nuImages in their real on-disk layouts and encodings.

``generate`` writes into a temporary sibling and renames it into place, so an interrupted
run never leaves a dataset root that looks complete.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable

from pipeline.atomic import atomic_path

# "<module>:<function>" of each dataset's writer (as pipeline.datasets.READER_CLASSES for the
# readers): a writer's module, and the reader it imports, load when its dataset is generated,
# so `lix prepare download --dataset kitti` imports only KITTI's.
WRITER_FUNCTIONS: dict[str, str] = {
    "vkitti2": "pipeline.sources.synthetic.vkitti2:write_vkitti2",
    "kitti": "pipeline.sources.synthetic.kitti:write_kitti",
    "nuimages": "pipeline.sources.synthetic.nuimages:write_nuimages",
}


def writer(dataset: str) -> Callable[..., None]:
    """The synthetic writer of ``dataset`` (its module imported now); KeyError for an unknown one."""
    if dataset not in WRITER_FUNCTIONS:
        raise KeyError(f"no synthetic writer for {dataset!r}; expected one of {sorted(WRITER_FUNCTIONS)}")
    module, _, function = WRITER_FUNCTIONS[dataset].partition(":")
    return getattr(importlib.import_module(module), function)


def generate(dataset: str, root: str | Path, *, n_images: int, width: int, height: int, seed: int,
             workers: int = 1, progress: bool = True, **extra) -> Path:
    """Write the synthetic ``dataset`` under ``root`` (replacing it). Returns ``root``.

    ``extra`` options a writer does not take (e.g. ``variations`` for KITTI) are ignored.
    """
    write = writer(dataset)
    accepted = inspect.signature(write).parameters
    extra = {k: v for k, v in extra.items() if k in accepted}
    root = Path(root)
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        write(tmp, n_images=n_images, width=width, height=height, seed=seed, workers=workers,
              progress=progress, **extra)
    return root
