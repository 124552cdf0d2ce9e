"""Dataset readers over each dataset's native on-disk layout.

Importing this package imports no reader: ``READERS`` imports a dataset's reader module when
that dataset is first asked for (``create_reader``), so a stage loads only the reader it uses.
``DATASETS`` (pipeline.datasets) lists the datasets in the paper's order; ``params.yaml``'s
``datasets`` picks the ones the DVC pipeline runs over.
"""

from pipeline.datasets import DATASETS
from pipeline.sources.base import IGNORE_INDEX, READERS, DatasetReader, Frame, create_reader, register_reader

__all__ = ["DATASETS", "IGNORE_INDEX", "READERS", "DatasetReader", "Frame", "create_reader", "register_reader"]
