"""Resumable, verified downloads and safe extraction of the public dataset archives.

* ``fetch`` streams to ``<dest>.part`` and resumes with an HTTP Range request, both after
  a dropped connection (retried in-process) and across runs; the finished file is
  checked against a SHA-256 when one is configured, then renamed onto ``dest``.
* ``extract_all`` unpacks every archive into one temporary directory, refusing members
  that would land outside it (absolute paths, ``..``, links out), checks the layout with
  the dataset's reader, then renames the directory into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import DataError, LixError
from pipeline.progress import progress_bar


@dataclass(frozen=True)
class Archive:
    name: str
    url: str


VKITTI2_BASE = "https://download.europe.naverlabs.com/virtual_kitti_2.0.3"
KITTI_BASE = "https://s3.eu-central-1.amazonaws.com/avg-kitti"
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "vkitti2": tuple(Archive(n, f"{VKITTI2_BASE}/{n}") for n in (
        "vkitti_2.0.3_rgb.tar", "vkitti_2.0.3_depth.tar", "vkitti_2.0.3_classSegmentation.tar",
        "vkitti_2.0.3_textgt.tar.gz")),
    "kitti": tuple(Archive(n, f"{KITTI_BASE}/{n}") for n in (
        "data_semantics.zip", "data_scene_flow.zip", "data_scene_flow_calib.zip")),
    # nuImages sits behind a login: use source 'local' with the downloaded archives or directory.
    "nuimages": (),
}
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | Path, sha256: str | None = None, *, retries: int = 5, timeout: float = 60.0,
          progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); verify ``sha256`` if given.

    A file already at ``dest`` is kept when it matches ``sha256`` (or when none is given).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    with progress_bar(f"downloading {dest.name}", total=0, enabled=progress) as advance:
        while True:
            try:
                _transfer(url, part, timeout, advance)
                break
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
                if isinstance(e, urllib.error.HTTPError) and e.code < 500:
                    raise DataError(dest, f"server refused {url}: HTTP {e.code} {e.reason}") from None
                attempt += 1
                if attempt > retries:
                    raise DataError(dest, f"download of {url} failed after {retries} retries: {e}") from None
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink()
            raise DataError(dest, f"checksum mismatch: expected sha256 {sha256.lower()}, got {got}; "
                            "the corrupt download was deleted")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, timeout: float, advance: Callable[[int], None]) -> None:
    """One HTTP request appending to ``part`` from its current size."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file is complete
            return
        raise
    with resp:
        if have and getattr(resp, "status", None) != 206:  # server ignored the range: start over
            have = 0
        expected = resp.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        got = 0
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                got += len(block)
                advance(len(block))
        if expected is not None and got < expected:
            raise http.client.IncompleteRead(b"", expected - got)


# ----------------------------------------------------------------------------- extraction
def _inside(root: Path, member: str) -> bool:
    p = PurePosixPath(member)
    if p.is_absolute() or ".." in p.parts:
        return False
    return (root / p).resolve().is_relative_to(root.resolve())


def extract(archive: str | Path, target: str | Path) -> None:
    """Unpack a .zip / .tar / .tar.gz / .tgz into ``target``; refuse path traversal."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not _inside(target, info.filename):
                        raise DataError(archive, f"member {info.filename!r} would be written outside the "
                                        "target directory; refusing to extract")
                bad = zf.testzip()
                if bad is not None:
                    raise DataError(archive, f"corrupt archive: CRC check failed for member {bad!r}")
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    if not _inside(target, m.name) or (m.issym() or m.islnk()) and not _inside(
                            target, str(PurePosixPath(m.name).parent / m.linkname)):
                        raise DataError(archive, f"member {m.name!r} would be written outside the target "
                                        "directory; refusing to extract")
                tf.extractall(target, filter="data")
        else:
            raise DataError(archive, "not a zip or tar archive (corrupt or truncated download?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, tarfile.FilterError):
            raise DataError(archive, f"unsafe archive member refused: {e}") from None
        raise DataError(archive, f"corrupt or truncated archive: {e}") from None


def extract_all(archives: list[Path], root: str | Path, validate: Callable[[Path], object]) -> Path:
    """Extract ``archives`` together, validate the merged tree, then rename it onto ``root``.

    On any error nothing is left at ``root`` (an existing ``root`` is kept as it was).
    """
    root = Path(root)
    with atomic_path(root) as tmp:
        for a in archives:
            extract(a, tmp)
        validate(tmp)
        write_json(tmp / ".lix_source.json", {"archives": {a.name: sha256_of(a) for a in archives}})
    return root


def copy_tree(src: Path, root: Path, validate: Callable[[Path], object]) -> Path:
    """Copy an already-extracted dataset directory onto ``root`` (hard links where possible)."""

    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    validate(src)
    with atomic_path(root) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)
    return root


def archive_sources(dataset: str, mirror: str | None) -> list[Archive]:
    """The archives of ``dataset``; with a mirror (base URL or directory) their names are
    looked up there instead of the public hosts."""
    archives = list(ARCHIVES[dataset])
    if not archives:
        raise LixError(f"{dataset} cannot be downloaded anonymously: set download.{dataset}.source to 'local' "
                       f"and download.{dataset}.local_path to the archive or extracted directory")
    if mirror:
        base = mirror if "://" in mirror else Path(mirror).resolve().as_uri()
        archives = [Archive(a.name, f"{base.rstrip('/')}/{a.name}") for a in archives]
    return archives
