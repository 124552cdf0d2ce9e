"""Apply a trained RGB-only student to a folder of images: label maps in the dataset's colours
and overlays.

    predict_folder("data/runs/kitti/mfnet/lix/seed0/best.pt", "my_images/", "predictions/")

Inputs. The files directly in the input folder (not its subfolders) whose suffix is one of
:data:`IMAGE_SUFFIXES` (PNG, JPEG, BMP, TIFF, WebP; case ignored); other files are ignored. The
file's bytes decide the format, not its suffix. PNG and JPEG are read by
``pipeline.imageio.read_rgb`` (truncated files refused); BMP, TIFF and WebP by OpenCV, when the
installed OpenCV decodes that format (the opencv-python wheels decode all three; a build without
one skips those files, with that reason). Grey, 16-bit and RGBA images are taken as OpenCV's
``IMREAD_COLOR`` gives them (8-bit RGB; 16-bit shifted down, alpha dropped). A file that is
not a decodable image is skipped: listed with its one-line reason (returned, printed by the CLI,
written to ``skipped.txt``); the run fails (DataError) when nothing was segmented.

Outputs. For an input ``<stem>.<ext>`` the output folder gets ``<stem>_label.png`` (uint8 class
ids, the dataset's train ids), ``<stem>_colour.png`` (the ids in the dataset's colours,
pipeline.preview's palette) and ``<stem>_overlay.png`` (the colours over the image). When
inputs share a stem (``a.png``, ``a.jpg``; compared case-insensitively, as a case-insensitive
file system would) every one of them is named ``<stem>_<ext>`` (``a_png_label.png``,
``a_jpg_label.png``), and a name still taken gets ``_2``, ``_3``, ... in file-name order: the
names depend only on the folder's file names. ``predict.json`` maps every input to its outputs.
Every file is written atomically, so an interrupted run leaves no half-written output; outputs
of an image are written once its prediction exists, and existing outputs are overwritten.

Memory. ``memory_budget_gib`` bounds what one forward pass may hold: the network's activations
(measured once per run, see :func:`forward_bytes_per_pixel`), the tile stitching buffer and, on
the CPU, the decoded image and its outputs (:data:`HOST_BYTES_PER_PIXEL`; on a GPU those live
in host memory and the budget is GPU memory). Images of one size are batched, up to
``batch_size`` and as many as fit the budget. An image too large to go through the network
whole is segmented by sliding window, as mmsegmentation's ``mode='slide'`` inference: square
tiles of the largest side the budget allows, overlapping by about a third, whose logits are
averaged where they overlap (summed: the argmax of the sum is the argmax of the mean). An image
that fits the budget whole goes through whole, so its labels are exactly whole-image inference
(the same code as before the budget). For a fully convolutional net tiling is not exactly
whole-image inference: near a tile border the receptive field is cut off by the tile (the
convolutions zero-pad there, the model pads a short last tile) instead of seeing the
neighbouring pixels, so labels change slightly near tile borders, and the averaging of
overlapping tiles blends the two predictions there (tests/test_predict.py measures how much).
Unlike mmsegmentation, which shifts the last tile back to end at the image's edge, every tile
origin stays on a 32-pixel grid (a multiple of MFNet's 16 and SNE-RoadSeg's 32), so the pooling
windows inside a tile are the whole image's. A per-pixel model gives identical labels tiled or
not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from lix.config import TrainConfig, from_dict
from lix.evaluate import load_run
from lix.inputs import Inputs
from lix.model_factory import build_model
from lix.runtime import DistInfo, ProgressBar, autocast, resolve_device
from pipeline.errors import DataError, LixError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ACCEPTED = "PNG, JPEG (.jpg/.jpeg), BMP, TIFF (.tif/.tiff) and WebP (.webp)"

GIB = 1 << 30
CPU_DEFAULT_BUDGET_GIB = 2.0
# Host bytes per image pixel held while an image is segmented on the CPU: the RGB image (3), the
# labels (1), the colour map (3) and the overlay (3), plus the BGR copy and the encoded PNG of
# one output while it is written (up to 3 + 3). The overlay is computed in row chunks, so its
# float temporaries stay small (OVERLAY_CHUNK_PIXELS).
HOST_BYTES_PER_PIXEL = 16
OVERLAY_CHUNK_PIXELS = 1 << 18
# forward_bytes_per_pixel follows the tensors torch functions return, not the scratch memory
# inside a function (convolution workspaces): a forward pass's peak RSS growth on the CPU was
# 1.02-1.19x the tracked figure (MFNet at 1500x2000 and 2000x2000, SNE-RoadSeg-152 at 1000x1000,
# SNE-RoadSeg-18 at 1000x1500).
FORWARD_SAFETY = 1.3
PROBE_SIDE = 128  # probe image side (px), a multiple of every model's stride
TILE_ALIGN = 32  # tile sizes and origins: multiples of the models' strides (MFNet 16, SNE-RoadSeg 32)
MIN_TILE = 64  # smaller tiles are mostly border: refuse rather than produce noise


# --------------------------------------------------------------------------- reading
def list_images(folder: Path) -> list[Path]:
    """Files directly in ``folder`` whose suffix is one of IMAGE_SUFFIXES (case ignored; not
    recursive), sorted by name."""
    if not folder.is_dir():
        raise DataError(folder, "input folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _sniff(head: bytes) -> str | None:
    """The image format from a file's first bytes (PNG, JPEG, BMP, TIFF, WebP), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF, both byte orders
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


_EXT = {"BMP": ".bmp", "TIFF": ".tiff", "WebP": ".webp"}


@functools.cache
def opencv_decodes(fmt: str) -> bool:
    """Whether the installed OpenCV decodes ``fmt`` (BMP, TIFF or WebP): a 4x4 colour image is
    encoded and decoded back (``cv2.haveImageReader`` needs a file on disk)."""
    import cv2

    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    with _quiet_opencv():
        try:
            ok, buf = cv2.imencode(_EXT[fmt], img)
            back = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        except cv2.error:
            return False
    return back is not None and np.array_equal(back, img)


class _quiet_opencv:
    """Silence OpenCV's own log lines (a failed decode prints an [ERROR] line to stderr) while
    decoding: the skip reason says it once, in one line."""

    def __enter__(self):
        import cv2

        self.level = cv2.getLogLevel()
        cv2.setLogLevel(0)  # 0: LOG_LEVEL_SILENT

    def __exit__(self, *exc):
        import cv2

        cv2.setLogLevel(self.level)


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG, BMP, TIFF or WebP image. Returns (H, W, 3) uint8 RGB. Anything that is
    not one of those, or does not decode, is a DataError with a one-line reason."""
    import cv2

    from pipeline.imageio import read_rgb

    path = Path(path)
    try:
        with open(path, "rb") as f:
            fmt = _sniff(f.read(16))
        if fmt is None:
            raise DataError(path, "not a PNG, JPEG, BMP, TIFF or WebP image (unrecognised file signature)")
        with _quiet_opencv():
            if fmt in ("PNG", "JPEG"):
                return read_rgb(path)  # checks the PNG/JPEG end markers: OpenCV decodes truncated ones
            if not opencv_decodes(fmt):
                raise DataError(path, f"this OpenCV build cannot decode {fmt} images")
            img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None
    except cv2.error as e:  # e.g. larger than OpenCV's pixel limit (CV_IO_MAX_IMAGE_PIXELS)
        raise DataError(path, f"could not decode image ({str(e).strip().splitlines()[-1][:200]})") from None
    if img is None:
        raise DataError(path, f"corrupt or truncated {fmt} image (OpenCV could not decode it)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """The output name stem of every input (see the module docstring): its stem, or
    ``<stem>_<ext>`` when another input has the same stem, made unique with ``_2``, ``_3``, ...
    (compared case-insensitively) in the order of ``paths``."""
    by_stem: dict[str, int] = defaultdict(int)
    for p in paths:
        by_stem[p.stem.casefold()] += 1
    # Plain stems first, so a file really named "a_png.bmp" keeps "a_png" and a disambiguated
    # "a.png" moves to "a_png_2", whatever the order of the names.
    taken = {p.stem.casefold() for p in paths if by_stem[p.stem.casefold()] == 1}
    stems: dict[Path, str] = {}
    for p in paths:
        if by_stem[p.stem.casefold()] == 1:
            stems[p] = p.stem
            continue
        base = f"{p.stem}_{p.suffix[1:]}"
        name, k = base, 1
        while name.casefold() in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name.casefold())
        stems[p] = name
    return stems


# --------------------------------------------------------------------------- model
def load_student(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, Inputs, dict]:
    """The model of a run (``best.pt``/``last.pt``/``model.safetensors``) in eval mode, with its
    input encoding. A teacher (RGB + X) is refused: it needs geometry the images do not carry."""
    state, config = load_run(checkpoint)
    if config.get("x"):
        raise DataError(checkpoint, f"is an RGB + {config['x']} teacher; lix predict runs RGB-only students")
    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None)
    model = build_model(cfg, config["n_classes"], None)
    model.load_state_dict(state)
    return model.to(device).eval(), Inputs.from_config(cfg, "student"), config


def _logits(model: torch.nn.Module, inputs: Inputs, rgb: torch.Tensor, amp: bool) -> torch.Tensor:
    """(N, C, H, W) logits of (N, H, W, 3) uint8 RGB on the model's device."""
    x, _ = inputs({"rgb": rgb.permute(0, 3, 1, 2).float().div_(255.0)})
    with autocast(rgb.device, amp):
        return model(x)


@torch.no_grad()
def forward_bytes_per_pixel(model: torch.nn.Module, inputs: Inputs, device: torch.device, amp: bool) -> float:
    """Bytes per input pixel that segmenting an image takes at its peak: the input, the
    activations alive at once, the logits and the argmax. Measured on a PROBE_SIDE² image by
    following the tensors the forward pass creates and frees (a TorchFunctionMode sees every
    torch function's results; a weak reference to each result's storage says when it is freed),
    times FORWARD_SAFETY for what happens inside a function (workspaces, intermediates). A fully
    convolutional net's activations grow with the pixel count, so the figure holds for any image
    size (the probe's fixed costs make it a slight overestimate for large images). A
    TorchFunctionMode rather than a TorchDispatchMode: the latter imports torch._dynamo on first
    use (seconds, ~100 MB)."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    class Tracker(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, tuple[StorageWeakRef, int]] = {}
            self.now = self.peak = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            # Forget freed storages first: a new result may reuse a freed one's address.
            for key, (ref, n) in list(self.live.items()):
                if ref.expired():
                    del self.live[key]
                    self.now -= n
            for t in tree_leaves(result):
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    key = s.data_ptr()
                    if key and key not in self.live:  # views and in-place results share a storage
                        self.live[key] = (StorageWeakRef(s), s.nbytes())
                        self.now += s.nbytes()
            self.peak = max(self.peak, self.now)  # the arguments of this call are still alive too
            return result

    with Tracker() as tracker:
        rgb = torch.zeros(1, PROBE_SIDE, PROBE_SIDE, 3, dtype=torch.uint8, device=device)
        pred = _logits(model, inputs, rgb, amp).argmax(1)
        del pred, rgb
    return FORWARD_SAFETY * tracker.peak / PROBE_SIDE ** 2


def resolve_budget(gib: float | None, device: torch.device) -> int:
    """The memory budget in bytes: ``gib`` GiB, or by default CPU_DEFAULT_BUDGET_GIB on the CPU
    and half the free memory of a CUDA device."""
    if gib is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return free // 2
        return int(CPU_DEFAULT_BUDGET_GIB * GIB)
    if not math.isfinite(gib) or gib <= 0:
        raise LixError(f"--memory-budget must be a positive number of GiB, got {gib}")
    return int(gib * GIB)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How images of a size go through the network within ``budget`` bytes.

    ``forward_bpp``: bytes per pixel of a forward pass (:func:`forward_bytes_per_pixel`);
    ``host_bpp``: bytes per pixel of the image and its outputs that count against the budget
    (HOST_BYTES_PER_PIXEL on the CPU, 0 on a GPU); ``n_classes``: channels of the float32
    stitching buffer; ``batch_size``: the most images per forward pass."""

    budget: int
    forward_bpp: float
    host_bpp: int
    n_classes: int
    batch_size: int

    def images_per_batch(self, h: int, w: int) -> int:
        """How many (h, w) images one forward pass takes whole; 0: the image needs tiles."""
        return min(self.batch_size, int(self.budget // ((self.forward_bpp + self.host_bpp) * h * w)))

    def tile(self, h: int, w: int) -> tuple[int, int] | None:
        """(tile height, tile width) in pixels for an (h, w) image that needs tiles, each a
        multiple of TILE_ALIGN or the image's own size; None when even MIN_TILE² tiles do not
        fit. A tile row needs forward_bpp * th * tw for the tile and 4 * n_classes * th * w
        for the float32 logit sums of a band of th full-width rows."""
        left = self.budget - self.host_bpp * h * w
        band = 4 * self.n_classes  # bytes per pixel of the stitching band
        if left <= 0:
            return None
        # square tiles of side s: forward_bpp * s^2 + band * w * s <= left
        a, b = self.forward_bpp, band * w
        s = (-b + math.sqrt(b * b + 4 * a * left)) / (2 * a)
        if h <= s:  # the full height fits: only slide along the width
            th, tw = h, (left / h - band * w) / self.forward_bpp
        elif w <= s:  # the full width fits: only slide down
            th, tw = left / ((self.forward_bpp + band) * w), w
        else:
            th = tw = s
        th = h if th >= h else int(th) // TILE_ALIGN * TILE_ALIGN
        tw = w if tw >= w else int(tw) // TILE_ALIGN * TILE_ALIGN
        if (th < h and th < MIN_TILE) or (tw < w and tw < MIN_TILE):  # also a budget left for no tile at all
            return None
        return th, tw


# --------------------------------------------------------------------------- inference
def _starts(size: int, tile: int) -> list[int]:
    """Tile origins along one axis: 0, step, 2 step, ... until a tile reaches ``size`` (the last
    tile may be shorter: the model pads it). ``step``: about two thirds of the tile (the overlap
    is a third, as mmsegmentation's 512/341 default), a multiple of TILE_ALIGN so every origin
    stays on the pooling grid of whole-image inference."""
    if tile >= size:
        return [0]
    step = max(TILE_ALIGN, (2 * tile // 3) // TILE_ALIGN * TILE_ALIGN)
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + step)
    return starts


@torch.no_grad()
def slide_labels(logits_fn: Callable[[torch.Tensor], torch.Tensor], rgb: np.ndarray, tile: tuple[int, int],
                 n_classes: int, device: torch.device) -> np.ndarray:
    """Sliding-window segmentation of one image.

    ``logits_fn``: (1, h, w, 3) uint8 RGB on ``device`` -> (1, n_classes, h, w) logits, for any
    h, w up to the tile; ``rgb``: (H, W, 3) uint8; ``tile``: (th, tw) pixels. Returns (H, W)
    uint8 labels: the argmax of the summed logits of the tiles covering each pixel.

    Tiles are visited row by row; a float32 buffer of n_classes x th x W (one band of tile rows)
    holds the sums, and rows above the next tile row are final: their argmax is taken and the
    band moves down, so the image's full logits (4 n_classes bytes per pixel) never exist."""
    h, w = rgb.shape[:2]
    th, tw = tile
    labels = np.empty((h, w), np.uint8)
    band = torch.zeros(n_classes, th, w, device=device)
    top = 0  # image row of band[:, 0]
    xs = _starts(w, tw)
    for y in _starts(h, th):
        if y > top:  # rows top .. y-1 get no further tiles
            k = y - top
            labels[top:y] = band[:, :k].argmax(0).to(torch.uint8).cpu().numpy()
            band[:, : th - k] = band[:, k:].clone()  # clone: source and target rows may overlap
            band[:, th - k:] = 0
            top = y
        for x in xs:
            crop = torch.from_numpy(np.ascontiguousarray(rgb[y:y + th, x:x + tw]))[None].to(device)
            out = logits_fn(crop)
            band[:, : crop.shape[1], x:x + crop.shape[2]] += out[0].float()
            del out
    labels[top:] = band[:, : h - top].argmax(0).to(torch.uint8).cpu().numpy()
    return labels


def _overlay(rgb: np.ndarray, label: np.ndarray, pal: np.ndarray, alpha: float) -> np.ndarray:
    """pipeline.preview.label_overlay in row chunks of about OVERLAY_CHUNK_PIXELS: the same
    pixels, without float64 temporaries of the whole image (24 bytes per pixel each)."""
    from pipeline.preview import label_overlay

    out = np.empty_like(rgb)
    rows = max(1, OVERLAY_CHUNK_PIXELS // max(1, rgb.shape[1]))
    for r in range(0, rgb.shape[0], rows):
        out[r:r + rows] = label_overlay(rgb[r:r + rows], label[r:r + rows], pal, alpha)
    return out


def _batches(paths: list[Path], plan: MemoryPlan, skipped: list[tuple[Path, str]]
             ) -> Iterator[tuple[list[Path], list[np.ndarray], tuple[int, int] | None]]:
    """Read the images and yield (paths, images, tile): batches of images of one size that fit
    the budget whole (tile None), or one image with the tile it is cut into. A size's batch
    is yielded when full; the rest at the end, or earlier (largest first) when the images
    waiting for their batch would take more than a quarter of the budget."""
    pending: dict[tuple[int, int], tuple[list[Path], list[np.ndarray]]] = defaultdict(lambda: ([], []))
    waiting = 0  # bytes of the pending images
    for p in paths:
        try:
            img = read_image(p)
        except DataError as e:
            skipped.append((p, e.problem))
            continue
        size = img.shape[:2]
        n = plan.images_per_batch(*size)
        if n == 0:
            tile = plan.tile(*size)
            if tile is None:
                skipped.append((p, f"{size[1]}x{size[0]} does not fit the memory budget of {plan.budget / GIB:.3g} GiB "
                                   f"even in {MIN_TILE}x{MIN_TILE} tiles (raise --memory-budget)"))
                continue
            yield [p], [img], tile
            del img  # not kept alive (by this frame) while the next image is decoded
            continue
        group = pending[size]
        group[0].append(p)
        group[1].append(img)
        waiting += img.nbytes
        if len(group[0]) >= n:
            waiting -= sum(i.nbytes for i in group[1])
            yield (*pending.pop(size), None)
        while waiting > plan.budget // 4 and pending:
            biggest = max(pending, key=lambda s: sum(i.nbytes for i in pending[s][1]))
            waiting -= sum(i.nbytes for i in pending[biggest][1])
            yield (*pending.pop(biggest), None)
    for group in pending.values():
        if group[0]:
            yield (*group, None)


@torch.no_grad()
def predict_folder(checkpoint: str | Path, input_dir: str | Path, output_dir: str | Path, *, batch_size: int = 8,
                   device: str = "auto", progress: bool = True, alpha: float = 0.55,
                   memory_budget_gib: float | None = None) -> dict:
    """Predict every image of ``input_dir`` into ``output_dir`` (see the module docstring).

    ``batch_size``: the most images per forward pass; ``memory_budget_gib``: GiB (None: 2 on
    the CPU, half the free GPU memory on CUDA). Returns {"checkpoint", "classes",
    "memory_budget_bytes", "written": [input names], "outputs": {input name: {"label",
    "colour", "overlay": output names, "tile": [th, tw] or None (whole image)}}, "skipped":
    [[path, reason]]}; ``predict.json`` in the output folder holds the same. Raises DataError
    when no image was segmented (after writing predict.json and skipped.txt)."""
    from pipeline.atomic import write_json, write_text
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette

    if batch_size < 1:
        raise LixError(f"--batch-size must be >= 1, got {batch_size}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    paths = list_images(input_dir)
    if not paths:
        raise DataError(input_dir, f"holds no images ({ACCEPTED}; subfolders are not searched)")
    d = DistInfo(device=resolve_device(device, "--device"))
    budget = resolve_budget(memory_budget_gib, d.device)
    model, inputs, config = load_student(checkpoint, d.device)
    names = list(config["class_names"])
    pal = class_palette(names)
    amp = bool(config["train"].get("amp", True))
    plan = MemoryPlan(budget, forward_bytes_per_pixel(model, inputs, d.device, amp),
                      HOST_BYTES_PER_PIXEL if d.device.type == "cpu" else 0, int(config["n_classes"]), batch_size)
    stems = output_stems(paths)
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, dict] = {}
    skipped: list[tuple[Path, str]] = []
    logits_fn = functools.partial(_logits, model, inputs, amp=amp)
    done = 0
    with ProgressBar("predict", len(paths), progress) as bar:
        for batch_paths, images, tile in _batches(paths, plan, skipped):
            if tile is None:
                rgb = torch.from_numpy(np.stack(images)).to(d.device)
                pred = logits_fn(rgb).argmax(1).to(torch.uint8).cpu().numpy()
                del rgb
            else:
                pred = [slide_labels(logits_fn, images[0], tile, plan.n_classes, d.device)]
            for p, img, lab in zip(batch_paths, images, pred):
                stem = stems[p]
                files = {"label": f"{stem}_label.png", "colour": f"{stem}_colour.png",
                         "overlay": f"{stem}_overlay.png"}
                write_image(output_dir / files["label"], lab)
                write_image(output_dir / files["colour"], pal[lab])
                write_image(output_dir / files["overlay"], _overlay(img, lab, pal, alpha))
                outputs[p.name] = {**files, "tile": list(tile) if tile else None}
            del images, pred
            while done < len(outputs) + len(skipped):
                done += 1
                bar.advance()
        while done < len(paths):  # files skipped after the last batch
            done += 1
            bar.advance()
    skipped = [(p, reason.splitlines()[0] if reason else "unreadable") for p, reason in skipped]
    result = {"checkpoint": str(checkpoint), "classes": names, "memory_budget_bytes": budget,
              "written": list(outputs), "outputs": outputs,
              "skipped": [[str(p), reason] for p, reason in skipped]}
    write_json(output_dir / "predict.json", result, sort_keys=False)
    write_text(output_dir / "skipped.txt", "".join(f"{p}\t{reason}\n" for p, reason in skipped))
    if not outputs:
        p, reason = skipped[0]
        raise DataError(input_dir, f"no image segmented: all {len(skipped)} image file(s) skipped "
                                   f"(first: {p.name}: {reason}; all in {output_dir / 'skipped.txt'})")
    return result
