"""Atomic outputs: write to a temporary sibling, then rename into place.

An interrupted run leaves at most a ``*.tmp-*`` sibling, never a file or directory
under the final name that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` on success.

    Works for files and directories. On an exception the temporary is removed and
    ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        replace(tmp, final)
    finally:
        remove(tmp)


def replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, replacing an existing file or directory."""
    if dst.is_dir() and not dst.is_symlink():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | Path, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by ``None`` (strict JSON has no NaN); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(final: str | Path, obj: Any, *, sort_keys: bool = True, nan_as_null: bool = False) -> Any:
    """JSON with a fixed indent (2) and a trailing newline, written atomically; returns what was
    written. ``sort_keys``: keys sorted (deterministic files), else in the dict's order (files a
    person reads top-down: run configs, metrics). ``nan_as_null``: NaN/inf as ``null``
    (:func:`json_safe`) instead of the non-standard ``NaN`` token."""
    if nan_as_null:
        obj = json_safe(obj)
    write_text(final, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
    return obj
