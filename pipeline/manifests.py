"""Reading the project's versioned JSON manifests (splits, shards): one check of presence,
syntax and schema version, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import DataError


def read_versioned_json(path: str | Path, what: str, version: int, hint: str) -> dict:
    """Read a JSON manifest whose ``schema_version`` must equal ``version``.

    Errors name the file: missing (with ``hint`` on how to make it), not JSON, other schema.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found ({hint})")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(path, f"not valid JSON: {e}") from None
    if data.get("schema_version") != version:
        raise DataError(path, f"{what} schema version {data.get('schema_version')!r}, this code reads {version}")
    return data
