"""lix predict: any image size, batches by size, unreadable images skipped and listed, teachers
refused, atomic outputs; PNG/JPEG/BMP/TIFF/WebP, distinct outputs for inputs of one stem, status 2
when nothing is written, large images in overlapping tiles within a memory budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lix.config import TrainConfig
from lix.train import fit
from pipeline.imageio import read_raw, read_rgb, write_image


@pytest.fixture(scope="module")
def runs(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_runs")
    cfg = TrainConfig(model="mfnet", epochs=1, batch_size=2, num_workers=0, device="cpu", patience=0, seed=1)
    fit(train_shards, out / "student", cfg, dataset="kitti", role="student", progress=False)
    fit(train_shards, out / "teacher", cfg, dataset="kitti", role="teacher", progress=False)
    return out


def test_predict_odd_sizes_and_unreadable_images(runs, tmp_path):
    from typer.testing import CliRunner

    from lix.cli import app
    from lix.predict import load_student

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (37, 53), "b.jpg": (37, 53), "c.png": (50, 161), "d.PNG": (17, 9)}
    for name, (h, w) in sizes.items():
        write_image(src / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", "--checkpoint", str(runs / "student" / "best.pt"), "--input", str(src),
                                 "--output", str(out), "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "4 image(s) segmented" in r.output and "skipped" in r.output and "broken.png" in r.output
    model, inputs, config = load_student(runs / "student" / "best.pt", torch.device("cpu"))
    for name, (h, w) in sizes.items():
        stem = Path(name).stem
        lab = read_raw(out / f"{stem}_label.png")
        assert lab.shape == (h, w) and lab.max() < config["n_classes"]
        assert read_rgb(out / f"{stem}_colour.png").shape == (h, w, 3)
        assert read_rgb(out / f"{stem}_overlay.png").shape == (h, w, 3)
        # the same prediction as the model on that image alone (batching by size changes nothing)
        img = read_rgb(src / name) if name.endswith("png") or name.endswith("PNG") else None
        if img is not None:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                want = model(x).argmax(1)[0].numpy()
            np.testing.assert_array_equal(lab, want)
    summary = json.loads((out / "predict.json").read_text())
    assert sorted(summary["written"]) == sorted(sizes)
    assert [Path(p).name for p, _ in summary["skipped"]] == ["broken.png"]
    assert "broken.png" in (out / "skipped.txt").read_text()
    assert not list(out.glob("broken*")) and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_predict_refuses_a_teacher_and_an_empty_folder(runs, tmp_path):
    from lix.predict import predict_folder
    from pipeline.errors import DataError

    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="teacher; lix predict runs RGB-only students"):
        predict_folder(runs / "teacher" / "best.pt", tmp_path / "in", tmp_path / "out", device="cpu", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        predict_folder(runs / "student" / "best.pt", tmp_path / "empty", tmp_path / "out", device="cpu",
                       progress=False)
    with pytest.raises(DataError, match="input folder not found"):
        predict_folder(runs / "student" / "best.pt", tmp_path / "nope", tmp_path / "out", device="cpu",
                       progress=False)


# --------------------------------------------------------------------------- issue 18: formats, names, exit, memory
def _invoke(*args):
    from typer.testing import CliRunner

    from lix.cli import app

    return CliRunner().invoke(app, ["predict", *map(str, args), "--device", "cpu", "--no-progress"])


def _direct(model, img):
    """The model's labels for one (H, W, 3) uint8 image, whole: (H, W)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model(x).argmax(1)[0].numpy()


def _smooth_image(h, w, seed):
    """A smooth random colour image (blobs, not pixel noise: labels that vary in regions)."""
    import cv2

    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    blur = cv2.GaussianBlur(noise, (0, 0), 6)
    return np.clip((blur - blur.mean()) / (blur.std() + 1e-6) * 60 + 128, 0, 255).astype(np.uint8)


def test_predict_reads_bmp_tiff_webp(runs, tmp_path):
    """BMP, TIFF and WebP (the lossless kind, so that the pixels are the PNG's) are segmented as the
    same image in PNG is; the format follows the bytes, not the suffix; undecodable files are
    skipped with a one-line reason and no traceback."""
    import cv2

    from lix.predict import load_student

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    img = _smooth_image(45, 70, 0)
    write_image(src / "ref.png", img)
    formats = {"b.bmp": [], "t.tif": [], "t2.TIFF": [], "w.webp": [cv2.IMWRITE_WEBP_QUALITY, 101]}  # > 100: lossless
    for name, params in formats.items():
        ok, buf = cv2.imencode(Path(name).suffix.lower(), np.ascontiguousarray(img[..., ::-1]), params)
        assert ok
        (src / name).write_bytes(buf.tobytes())
    (src / "bmp_named.png").write_bytes((src / "b.bmp").read_bytes())  # a BMP under a PNG name
    (src / "half.bmp").write_bytes((src / "b.bmp").read_bytes()[:3000])  # truncated
    (src / "text.webp").write_text("not an image\n")
    r = _invoke("--checkpoint", runs / "student" / "best.pt", "--input", src, "--output", out)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "[ERROR" not in r.output  # OpenCV's own log silenced
    summary = json.loads((out / "predict.json").read_text())
    assert "b.bmp" in summary["written"] and "bmp_named.png" in summary["written"]

    from lix.predict import opencv_decodes

    supported = {n for n in formats if opencv_decodes({".bmp": "BMP", ".webp": "WebP"}.get(Path(n).suffix.lower(),
                                                                                             "TIFF"))}
    assert {"b.bmp", "t.tif", "t2.TIFF", "w.webp"} <= supported  # the opencv-python wheels decode all three
    assert sorted(summary["written"]) == sorted({"ref.png", "bmp_named.png", *supported})
    skipped = {Path(p).name: reason for p, reason in summary["skipped"]}
    assert set(skipped) == {"half.bmp", "text.webp"}
    assert skipped["half.bmp"] == "corrupt or truncated BMP image (OpenCV could not decode it)"
    assert "unrecognised file signature" in skipped["text.webp"]
    for name, reason in skipped.items():  # one line each on the console
        assert [ln for ln in r.output.splitlines() if name in ln] == [f"skipped {src / name}: {reason}"]
    model, _, _ = load_student(runs / "student" / "best.pt", torch.device("cpu"))
    want = _direct(model, img)
    for name in summary["written"]:
        np.testing.assert_array_equal(read_raw(out / summary["outputs"][name]["label"]), want, err_msg=name)


def test_predict_same_stem_gets_distinct_outputs(runs, tmp_path):
    """a.png, a.jpg, a.bmp and A.tif: four images, four sets of outputs (case-insensitively
    distinct too), each the prediction of its own image; predict.json maps each input to them."""
    import cv2

    from lix.predict import load_student

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    images = {}
    for k, name in enumerate(["a.png", "a.jpg", "a.bmp", "A.tif", "b.png"]):
        assert cv2.imwrite(str(src / name), _smooth_image(40, 56, k)[..., ::-1])  # a different image each
        images[name] = cv2.cvtColor(cv2.imread(str(src / name)), cv2.COLOR_BGR2RGB)  # as decoded (JPEG: lossy)
    r = _invoke("--checkpoint", runs / "student" / "best.pt", "--input", src, "--output", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "predict.json").read_text())
    assert sorted(summary["written"]) == sorted(images)
    outs = summary["outputs"]
    assert outs["a.png"]["label"] == "a_png_label.png" and outs["a.jpg"]["label"] == "a_jpg_label.png"
    assert outs["b.png"] == {"label": "b_label.png", "colour": "b_colour.png", "overlay": "b_overlay.png",
                             "tile": None}
    names = [f for o in outs.values() for f in (o["label"], o["colour"], o["overlay"])]
    assert len({n.casefold() for n in names}) == len(names) == 15
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    model, _, _ = load_student(runs / "student" / "best.pt", torch.device("cpu"))
    for name, img in images.items():
        np.testing.assert_array_equal(read_raw(out / outs[name]["label"]), _direct(model, img), err_msg=name)


def test_output_stems_are_unique_and_deterministic():
    from lix.predict import output_stems

    names = ["a.png", "a.jpg", "a_png.bmp", "A.PNG", "b.png", "c.JPG", "C.jpeg"]
    stems = output_stems([Path(n) for n in sorted(names)])
    assert stems[Path("a_png.bmp")] == "a_png" and stems[Path("b.png")] == "b"  # unique stems stay as they are
    assert stems[Path("a.jpg")] == "a_jpg" and stems[Path("c.JPG")] == "c_JPG" and stems[Path("C.jpeg")] == "C_jpeg"
    assert len({s.casefold() for s in stems.values()}) == len(names)
    assert output_stems([Path(n) for n in sorted(names)]) == stems


def test_predict_exits_2_when_nothing_is_written(runs, tmp_path):
    """Every file skipped (or none there): status 2, one red line naming why, predict.json and
    skipped.txt still written."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "garbage.bmp").write_bytes(b"BM" + bytes(60))
    (src / "notes.txt").write_text("ignored: not an image suffix")
    r = _invoke("--checkpoint", runs / "student" / "best.pt", "--input", src, "--output", out)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "no image segmented" in err, err
    assert "all 2 image file(s) skipped" in err and "Traceback" not in r.output
    assert json.loads((out / "predict.json").read_text())["written"] == []
    assert len((out / "skipped.txt").read_text().splitlines()) == 2
    (tmp_path / "empty").mkdir()
    r = _invoke("--checkpoint", runs / "student" / "best.pt", "--input", tmp_path / "empty", "--output", out)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "holds no images" in r.stderr
    r = _invoke("--checkpoint", runs / "student" / "best.pt", "--input", src, "--output", out, "--memory-budget", "0")
    assert r.exit_code == 2 and "--memory-budget must be a positive number" in r.stderr


def test_memory_plan_batches_and_tiles_within_the_budget():
    """The arithmetic of the budget: a 4000x3000 image does not go whole through MFNet in 2 GiB
    (about 400 bytes per pixel: 4.8 GB); its tiles, stitching band and host arrays fit; smaller
    images are batched as far as the budget allows."""
    from lix.predict import GIB, HOST_BYTES_PER_PIXEL, MIN_TILE, TILE_ALIGN, MemoryPlan

    plan = MemoryPlan(2 * GIB, 415.0, HOST_BYTES_PER_PIXEL, 19, 8)
    assert plan.images_per_batch(3000, 4000) == 0
    th, tw = plan.tile(3000, 4000)
    assert th % TILE_ALIGN == 0 and tw % TILE_ALIGN == 0 and th == tw and 1024 <= th < 3000
    assert 415.0 * th * tw + 4 * 19 * th * 4000 + HOST_BYTES_PER_PIXEL * 3000 * 4000 <= 2 * GIB
    assert plan.images_per_batch(480, 640) == 8 and plan.images_per_batch(1080, 1920) == 2
    assert plan.tile(100, 20000) == (100, plan.tile(100, 20000)[1])  # a strip: full height, slide along
    assert MemoryPlan(1 << 20, 415.0, 16, 19, 8).tile(3000, 4000) is None  # 1 MiB: not even MIN_TILE tiles
    assert MIN_TILE % TILE_ALIGN == 0


def test_slide_labels_of_a_per_pixel_model_equal_whole_image_labels():
    """Tiling only changes what a pixel's receptive field sees: for a per-pixel (1x1 conv) model the
    stitched labels are exactly the whole image's, whatever the tile, with the image's size."""
    from lix.predict import slide_labels

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 7, 1)
    logits = lambda rgb: net(rgb.permute(0, 3, 1, 2).float() / 255)  # noqa: E731
    img = np.random.default_rng(0).integers(0, 256, (203, 301, 3), dtype=np.uint8)
    with torch.no_grad():
        want = logits(torch.from_numpy(img)[None]).argmax(1)[0].numpy()
    for tile in [(64, 64), (96, 160), (203, 64), (128, 301), (64, 96)]:
        lab = slide_labels(logits, img, tile, 7, torch.device("cpu"))
        assert lab.shape == (203, 301) and lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, want, err_msg=str(tile))


def _border_distance(h, w, tile):
    """(h, w) distance in pixels of every pixel to the nearest tile border inside the image."""
    from lix.predict import _starts

    yy, xx = np.mgrid[:h, :w]
    d = np.full((h, w), h + w)
    for starts, size, t, coord in ((_starts(h, tile[0]), h, tile[0], yy), (_starts(w, tile[1]), w, tile[1], xx)):
        for edge in {e for s0 in starts for e in (s0, s0 + t) if 0 < e < size}:
            d = np.minimum(d, np.abs(coord - edge))
    return d


def test_predict_large_image_in_tiles(runs, tmp_path):
    """An image larger than the memory budget (here a tiny budget and a 312x200 image, so that it
    takes 192x192 tiles, two by two) is segmented in overlapping tiles: output of the input's
    size, labels those of whole-image inference except near tile borders; an image that fits is
    segmented whole (exactly)."""
    from lix.predict import (
        GIB,
        HOST_BYTES_PER_PIXEL,
        _logits,
        forward_bytes_per_pixel,
        load_student,
        predict_folder,
        slide_labels,
    )

    h, w = 200, 312
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    img = _smooth_image(h, w, 7)
    write_image(src / "big.png", img)
    write_image(src / "small.png", img[:40, :40])
    cpu = torch.device("cpu")
    model, inputs, config = load_student(runs / "student" / "best.pt", cpu)
    bpp, c = forward_bytes_per_pixel(model, inputs, cpu, False), config["n_classes"]
    # room for square tiles of side 196 (-> 192, the 32-pixel grid) and their stitching band
    budget = bpp * 196 ** 2 + 4 * c * 196 * w + HOST_BYTES_PER_PIXEL * h * w
    r = predict_folder(runs / "student" / "best.pt", src, out, device="cpu", progress=False,
                       memory_budget_gib=budget / GIB)
    assert r["outputs"]["big.png"]["tile"] == [192, 192] and r["outputs"]["small.png"]["tile"] is None
    lab = read_raw(out / "big_label.png")
    assert lab.shape == (h, w) and read_rgb(out / "big_overlay.png").shape == (h, w, 3)
    np.testing.assert_array_equal(read_raw(out / "small_label.png"), _direct(model, img[:40, :40]))
    far = _border_distance(h, w, (192, 192)) >= 32  # 29 % of the pixels
    # Tolerance. Near a tile border the tile's receptive field is cut off (zero-padded convolutions
    # there see no neighbours) and the overlapping tiles' logits are averaged, so labels may
    # change near the borders; MFNet's receptive field is over a hundred pixels wide but its
    # effective reach is short. This student (one epoch) labels most pixels alike, with clear
    # margins: measured 0.01-0.04 % of the pixels changed, none 16 px or more from a border.
    changed = lab != _direct(model, img)
    assert changed.mean() <= 0.005 and not changed[far].any(), (changed.mean(), changed[far].mean())
    # The worst case: its last layer's logits standardised over the image, so that all 19 classes
    # are near ties everywhere and the smallest change of a logit flips a label. Measured (three
    # images): 10-11 % of the pixels changed, 0.08-0.12 % of those 32 px or more from a border;
    # bounds 15 % and 0.5 %.
    feats = []
    hook = model.decode1.conv.register_forward_hook(lambda mod, i, o: feats.append(o))
    _direct(model, img)
    hook.remove()
    with torch.no_grad():
        bn = model.decode1.bn
        bn.running_mean.copy_(feats[0].mean((0, 2, 3)))
        bn.running_var.copy_(feats[0].var((0, 2, 3)))
        bn.weight.fill_(1)
        bn.bias.zero_()
    want = _direct(model, img)
    assert len(np.unique(want)) == c
    tiled = slide_labels(lambda rgb: _logits(model, inputs, rgb, False), img, (192, 192), c, cpu)
    changed = tiled != want
    assert changed.mean() <= 0.15 and changed[far].mean() <= 0.005, (changed.mean(), changed[far].mean())
