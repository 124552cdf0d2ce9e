"""Facts every part of the project shares, in one place: the data pipeline writes them, the trainer,
the losses and the report read them."""

IGNORE_INDEX = 255
"""The label of a pixel without a class: in every label PNG, HDF5 shard, loss and confusion matrix."""
