"""Dataset readers over each dataset's native on-disk layout."""

from pipeline.sources import kitti, nuimages, vkitti2  # noqa: F401  (register the readers)
from pipeline.sources.base import IGNORE, READERS, DatasetReader, Frame, create_reader, register_reader

DATASETS = ("vkitti2", "kitti", "nuimages")

__all__ = ["DATASETS", "IGNORE", "READERS", "DatasetReader", "Frame", "create_reader", "register_reader"]
