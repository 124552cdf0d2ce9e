"""One exception family for everything a user can get wrong.

Every message names the file or key at fault and what was expected, so the CLI can
print it as a single line without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class LixError(Exception):
    """Base class for user-facing errors (bad input, bad parameters, missing weights)."""


class DataError(LixError):
    """A file or directory is missing, corrupt, or not in the expected layout."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(LixError):
    """A parameter is unknown, of the wrong type, or out of range."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")
