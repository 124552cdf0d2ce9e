"""Every bad input gets one clear error naming the file and what was expected, and
leaves nothing half-written behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from lix.cli import app
from lix.config import SplitConfig
from pipeline.errors import DataError
from pipeline.imageio import write_image
from pipeline.prepare import build_split
from pipeline.sources import create_reader


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="kitti dataset root not found"):
        create_reader("kitti", tmp_path / "nope")


@pytest.mark.parametrize("name,hint", [("kitti", "training/image_2"), ("vkitti2", "Scene\\*"),
                                       ("nuimages", "category.json")])
def test_wrong_layout(tmp_path, name, hint):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DataError, match=hint):
        create_reader(name, tmp_path)


def test_truncated_png_named(dataset_copy):
    root = dataset_copy("kitti")
    path = root / "training/image_2/000002_10.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="000002_10.png: truncated or corrupt PNG"):
        create_reader("kitti", root).frame("000002")


def test_truncated_jpeg_named(dataset_copy):
    root = dataset_copy("vkitti2")
    r = create_reader("vkitti2", root)
    sid = r.ids()[0]
    path = root / sid.rsplit("/", 1)[0] / "frames/rgb/Camera_0" / f"rgb_{sid.rsplit('/', 1)[1]}.jpg"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt JPEG"):
        r.frame(sid)


def test_label_colour_not_in_table(dataset_copy):
    root = dataset_copy("vkitti2")
    r = create_reader("vkitti2", root)
    sid = r.ids()[1]
    path = r.label_path(sid)
    from pipeline.imageio import read_raw

    img = read_raw(path, np.uint8, channels=3)
    img[3, 7] = (1, 2, 3)
    write_image(path, img)
    with pytest.raises(DataError, match=r"colour \(1, 2, 3\) at pixel \(x=7, y=3\) is not in .*colors.txt"):
        r.label(sid)


def test_size_mismatch(dataset_copy):
    root = dataset_copy("kitti")
    path = root / "training/semantic/000001_10.png"
    write_image(path, np.full((20, 30), 7, np.uint8))
    with pytest.raises(DataError, match="000001_10.png: label is 30x20 but the image is 160x48"):
        create_reader("kitti", root).frame("000001")


def test_missing_calibration(dataset_copy):
    root = dataset_copy("kitti")
    (root / "training/calib_cam_to_cam/000004.txt").unlink()
    with pytest.raises(DataError, match="000004.txt: calibration file not found"):
        create_reader("kitti", root).frame("000004")


def test_missing_nuimages_table(dataset_copy):
    root = dataset_copy("nuimages")
    (root / "v1.0-train/surface_ann.json").unlink()
    with pytest.raises(DataError, match="surface_ann.json: nuImages table missing"):
        create_reader("nuimages", root)


def test_corrupt_nuimages_table(dataset_copy):
    root = dataset_copy("nuimages")
    (root / "v1.0-train/category.json").write_text("[{")
    with pytest.raises(DataError, match="could not load the tables"):
        create_reader("nuimages", root)


def test_bad_sample_leaves_no_manifest(dataset_copy, tmp_path):
    root = dataset_copy("kitti")
    p = root / "training/image_3/000003_10.png"
    p.write_bytes(p.read_bytes()[:50])
    out = tmp_path / "splits" / "kitti.json"
    with pytest.raises(DataError, match="image_3/000003_10.png"):
        build_split("kitti", root, out, SplitConfig(n_images=8, ratio=(3, 1)), None, progress=False)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temporaries left either


def test_cli_prints_one_line_and_exits_2(dataset_copy, tmp_path):
    root = dataset_copy("kitti")
    shutil.rmtree(root / "training/semantic")
    params = tmp_path / "params.yaml"
    params.write_text("splits:\n  kitti: {n_images: 8, ratio: [3, 1]}\n")
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["prepare", "splits", "-d", "kitti", "--root", str(root), "--out", str(out),
                                   "--params", str(params), "--no-progress"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "training/semantic" in lines[0] and "missing directory" in lines[0]
    assert not out.exists()


def test_cli_bad_param(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("splits:\n  kitti: {n_images: 8, ratio: [3, 0]}\n")
    res = CliRunner().invoke(app, ["prepare", "check-params", "--params", str(params)])
    assert res.exit_code == 2
    assert "splits.kitti.ratio: both parts must be >= 1" in res.output


def test_empty_checkpoint_named(tmp_path):
    """A 0-byte checkpoint (an interrupted copy): torch raises EOFError with no message."""
    from lix.checkpoint import load_checkpoint

    p = tmp_path / "best.pt"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"best\.pt: not a readable checkpoint \(empty file, 0 bytes"):
        load_checkpoint(p)
    p.write_bytes(b"\x80")  # a pickle cut after its first byte
    with pytest.raises(DataError, match=r"best\.pt: not a readable checkpoint \("):
        load_checkpoint(p)


def test_shard_error_rebuilds_from_a_dataloader_message(tmp_path):
    """torch's DataLoader re-raises a worker's exception as ``type(text)``, the text ending in
    the worker's traceback: a ShardError comes back with the same path, problem and message."""
    import pickle

    from torch._utils import ExceptionWrapper

    from pipeline.shards import ShardError

    path = tmp_path / "odd: name" / "train-00001.h5"
    try:
        raise ShardError(path, "sample 3, dataset 'rgb': cannot be read (OSError: x)")
    except ShardError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ShardError) as e:
        wrapped.reraise()
    assert e.value.path == path and e.value.problem == "sample 3, dataset 'rgb': cannot be read (OSError: x)"
    assert str(e.value) == f"{path}: sample 3, dataset 'rgb': cannot be read (OSError: x)"
    again = pickle.loads(pickle.dumps(e.value))
    assert (again.path, again.problem) == (e.value.path, e.value.problem)
