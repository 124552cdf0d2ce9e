"""Dataset readers over each dataset's native on-disk layout.

``DATASETS`` is the registry's list of dataset names (in the paper's order): the one place
the code learns which datasets exist. ``params.yaml``'s ``datasets`` picks the ones the DVC
pipeline runs over.
"""

from pipeline.sources import vkitti2  # noqa: F401, I001  (registered first: the paper's order)
from pipeline.sources import kitti  # noqa: F401
from pipeline.sources import nuimages  # noqa: F401
from pipeline.sources.base import IGNORE_INDEX, READERS, DatasetReader, Frame, create_reader, register_reader

DATASETS: tuple[str, ...] = tuple(READERS)

__all__ = ["DATASETS", "IGNORE_INDEX", "READERS", "DatasetReader", "Frame", "create_reader", "register_reader"]
