"""Data preparation for LIX: dataset sources, downloads, depth, normals, splits and shards."""

from pipeline.errors import DataError, LixError

__all__ = ["DataError", "LixError"]
