"""Downloads against a local HTTP server on 127.0.0.1: resume, checksums, safe extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lix.config import DownloadConfig, ReaderConfig, SyntheticConfig
from pipeline.download import extract, fetch
from pipeline.errors import DataError, LixError
from pipeline.prepare import acquire
from pipeline.sources import create_reader


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_once: set[str] = set()
    log: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        self.log.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.cut_once:  # drop the connection halfway through
            self.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_once, _Handler.log = {}, set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_broken_transfer_resumes(server, tmp_path):
    base, h = server
    h.files["/a.bin"] = PAYLOAD
    h.cut_once.add("/a.bin")
    dest = fetch(f"{base}/a.bin", tmp_path / "a.bin", hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in h.log] == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert not (tmp_path / "a.bin.part").exists()


def test_resume_across_runs(server, tmp_path):
    base, h = server
    h.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{base}/a.bin", tmp_path / "a.bin", progress=False)
    assert h.log == [("/a.bin", "bytes=1000-")]
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    base, h = server
    h.files["/a.bin"] = PAYLOAD
    with pytest.raises(DataError, match="a.bin: checksum mismatch: expected sha256 0{64}"):
        fetch(f"{base}/a.bin", tmp_path / "a.bin", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_named(server, tmp_path):
    base, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(f"{base}/missing.zip", tmp_path / "missing.zip", progress=False)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("make,suffix", [(_zip, ".zip"), (_tar, ".tar.gz")])
def test_path_traversal_refused(tmp_path, make, suffix):
    archive = tmp_path / f"evil{suffix}"
    archive.write_bytes(make({"training/ok.txt": b"ok", "../../escaped.txt": b"gotcha"}))
    target = tmp_path / "out" / "x"
    with pytest.raises(DataError, match="escaped.txt.*outside the target directory"):
        extract(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()


def test_tar_symlink_out_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="outside the target"):
        extract(tmp_path / "l.tar", tmp_path / "t")


def _kitti_archives(src: Path) -> dict[str, bytes]:
    """Split a KITTI tree into the three public archives, as they are really packed."""
    groups = {"data_semantics.zip": ("image_2", "semantic", "semantic_rgb"),
              "data_scene_flow.zip": ("image_2", "image_3", "disp_occ_0"),
              "data_scene_flow_calib.zip": ("calib_cam_to_cam",)}
    return {name: _zip({p.relative_to(src).as_posix(): p.read_bytes()
                        for sub in subs for p in sorted((src / "training" / sub).glob("*"))})
            for name, subs in groups.items()}


def test_acquire_from_url_mirror(server, synth_root, tmp_path):
    base, h = server
    for name, data in _kitti_archives(synth_root / "kitti").items():
        h.files[f"/kitti/{name}"] = data
    h.cut_once.add("/kitti/data_scene_flow.zip")
    digest = hashlib.sha256(h.files["/kitti/data_semantics.zip"]).hexdigest()
    cfg = DownloadConfig(source="url", mirror=f"{base}/kitti", sha256={"data_semantics.zip": digest})
    root = tmp_path / "raw" / "kitti"
    acquire("kitti", root, cfg, SyntheticConfig(), ReaderConfig(), cache_dir=tmp_path / "dl", progress=False)
    r = create_reader("kitti", root)
    assert r.ids() == [f"{i:06d}" for i in range(8)]
    assert r.frame("000003").baseline == pytest.approx(0.5327, abs=1e-4)
    assert (root / ".lix_source.json").is_file()


def test_corrupt_archive_leaves_nothing(server, synth_root, tmp_path):
    base, h = server
    for name, data in _kitti_archives(synth_root / "kitti").items():
        h.files[f"/kitti/{name}"] = data
    good = h.files["/kitti/data_scene_flow.zip"]
    h.files["/kitti/data_scene_flow.zip"] = good[: len(good) // 3]  # truncated on the server
    cfg = DownloadConfig(source="url", mirror=f"{base}/kitti")
    root = tmp_path / "raw" / "kitti"
    with pytest.raises(DataError, match="data_scene_flow.zip: (not a zip|corrupt)"):
        acquire("kitti", root, cfg, SyntheticConfig(), ReaderConfig(), cache_dir=tmp_path / "dl", progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


def test_acquire_from_local_mirror_directory(synth_root, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in _kitti_archives(synth_root / "kitti").items():
        (mirror / name).write_bytes(data)
    cfg = DownloadConfig(source="url", mirror=str(mirror))
    root = tmp_path / "raw" / "kitti"
    acquire("kitti", root, cfg, SyntheticConfig(), ReaderConfig(), cache_dir=tmp_path / "dl", progress=False)
    assert len(create_reader("kitti", root).ids()) == 8


def test_acquire_local_directory_and_archive(synth_root, tmp_path):
    cfg = DownloadConfig(source="local", local_path=str(synth_root / "nuimages"))
    acquire("nuimages", tmp_path / "a", cfg, SyntheticConfig(), ReaderConfig(), cache_dir=tmp_path, progress=False)
    assert len(create_reader("nuimages", tmp_path / "a").ids()) == 8
    archive = tmp_path / "nuimages.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(synth_root / "nuimages", arcname=".")
    cfg = DownloadConfig(source="local", local_path=str(archive))
    acquire("nuimages", tmp_path / "b", cfg, SyntheticConfig(), ReaderConfig(), cache_dir=tmp_path, progress=False)
    assert len(create_reader("nuimages", tmp_path / "b").ids()) == 8


def test_nuimages_url_source_explains_itself(tmp_path):
    with pytest.raises(LixError, match="set download.nuimages.source to 'local'"):
        acquire("nuimages", tmp_path / "n", DownloadConfig(source="url"), SyntheticConfig(), ReaderConfig(),
                cache_dir=tmp_path, progress=False)
