"""Which datasets exist, and where each one's code lives: names only, no reader imported.

The trainer, the config and the CLI need the dataset names; only a preparation step needs a
reader. Keeping the names here (not in the reader registry, which would have to import every
reader to list them) means a stage's imports, and so its DVC deps, hold only the reader it uses:
an edit of one reader reruns that dataset's preparation, not every training run.
"""

from __future__ import annotations

# "<module>:<class>" of each dataset's reader, in the paper's order (the order of DATASETS, of
# the CLI's choices and of the report's tables). The module registers its class when imported
# (pipeline.sources.base.READERS loads it on first lookup).
READER_CLASSES: dict[str, str] = {
    "vkitti2": "pipeline.sources.vkitti2:VKitti2Reader",
    "kitti": "pipeline.sources.kitti:KittiReader",
    "nuimages": "pipeline.sources.nuimages:NuImagesReader",
}

DATASETS: tuple[str, ...] = tuple(READER_CLASSES)

# The variations vKITTI2 renders of every frame (its folder names): params.yaml's
# synthetic.vkitti2.variations and reader.vkitti2.variations name a subset.
VKITTI2_VARIATIONS: tuple[str, ...] = ("clone", "15-deg-left", "15-deg-right", "30-deg-left", "30-deg-right",
                                       "fog", "morning", "overcast", "rain", "sunset")

__all__ = ["DATASETS", "READER_CLASSES", "VKITTI2_VARIATIONS"]
