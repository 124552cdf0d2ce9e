"""Preview grids: RGB | depth (colour map of inverse depth) | normals as colours | label overlay."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.imageio import write_image
from pipeline.labels import CLASS_COLORS, CLASS_NAMES
from pipeline.shards import Sample, iter_samples, read_manifest, verify_shards


def palette(n: int) -> np.ndarray:
    """(256, 3) uint8 colours: ``n`` distinct hues, 255 (ignore) black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(n):
        pal[i] = np.array(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)) * 255
    return pal


# A label space is known by its class names (a shard manifest records the names, not the dataset).
_COLORS_BY_NAMES = {CLASS_NAMES[ds]: CLASS_COLORS[ds] for ds in CLASS_NAMES}


def class_palette(classes: int | Sequence[str]) -> np.ndarray:
    """(256, 3) uint8 colours of a label space's train ids, 255 (ignore) black: each dataset's
    own colours where the class names are one of ours (KITTI: Cityscapes; vKITTI2: its
    colors.txt; nuImages: the devkit's colour of a representative category; see pipeline.labels),
    else :func:`palette`. ``classes`` is the list of class names, or just their number."""
    if isinstance(classes, int):
        return palette(classes)
    names = tuple(classes)
    if names not in _COLORS_BY_NAMES:
        return palette(len(names))
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(names)] = _COLORS_BY_NAMES[names]
    return pal


def depth_colour(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Turbo colour map of inverse depth (near = red), invalid black. (H, W, 3) uint8."""
    inv = np.where(valid, 1.0 / np.maximum(depth, 1e-3), 0.0)
    hi = np.percentile(inv[valid], 99) if valid.any() else 1.0
    u8 = (np.clip(inv / max(hi, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb


def normal_colour(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n + 1) / 2 as RGB, invalid black."""
    rgb = ((normals + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def label_overlay(rgb: np.ndarray, label: np.ndarray, pal: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    colour = pal[label]
    out = (rgb * (1 - alpha) + colour * alpha).astype(np.uint8)
    out[label == 255] = rgb[label == 255]
    return out


def preview_grid(rows: Sequence[tuple[str, Sample]], classes: int | Sequence[str]) -> np.ndarray:
    """One row per (caption, sample): RGB | depth | normals | labels, 2 px white gutters.
    ``classes``: the class names (coloured as their dataset does, see :func:`class_palette`)
    or their number."""
    pal = class_palette(classes)
    lines = []
    for caption, s in rows:
        tiles = [s.rgb, depth_colour(s.depth, s.depth > 0), normal_colour(s.normals, s.normal_valid),
                 label_overlay(s.rgb, s.label, pal)]
        first = tiles[0].copy()
        cv2.putText(first, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        tiles[0] = first
        gap = np.full((s.rgb.shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1))
    gap = np.full((2, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate(sum(([ln, gap] for ln in lines), [])[:-1], axis=0)


def write_preview(path: str | Path, rows: Sequence[tuple[str, Sample]], classes: int | Sequence[str]) -> Path:
    write_image(path, preview_grid(rows, classes))
    return Path(path)


def preview_from_shards(shard_dir: str | Path, out_path: str | Path, rows: int = 3) -> Path:
    """A preview of the first ``rows`` samples of every split, read back from verified shards."""
    import itertools

    m = read_manifest(shard_dir)
    picked = []
    for split in m["splits"]:
        samples = itertools.chain.from_iterable(iter_samples(p) for p in verify_shards(shard_dir, split))
        picked += [(f"{split} {s.id}", s) for s in itertools.islice(samples, rows)]
    return write_preview(out_path, picked, m["class_names"])


# --------------------------------------------------------------------------- class legend
# A label picture without a legend leaves the reader guessing which colour is which class, so
# every picture of class colours (the report's grid and DWC maps, the trainer's predictions.png)
# carries this strip below it. Drawn with OpenCV into the image itself: the same pixels whether
# the picture is an array stitched by hand or a matplotlib figure.
LEGEND_PAD = 4  # px around the strip's content
LEGEND_ROW = 18  # px per line of entries
LEGEND_SWATCH = 12  # px, square
LEGEND_SPACING = 12  # px between one entry's name and the next swatch
_LEGEND_FONT_SCALE = 0.4
LEGEND_GAP = 2  # px of white between a picture and its legend (lix.report.grid's GAP)


def _legend_layout(class_names: Sequence[str], width: int) -> list[tuple[int, int]]:
    """(x, line) of each entry (swatch, 4 px, name), filled left to right and wrapped at
    ``width``; an entry wider than a whole line gets a line of its own (its name clipped)."""
    places, x, line = [], LEGEND_PAD, 0
    for name in class_names:
        (tw, _), _ = cv2.getTextSize(str(name), cv2.FONT_HERSHEY_SIMPLEX, _LEGEND_FONT_SCALE, 1)
        entry_w = LEGEND_SWATCH + 4 + tw
        if x > LEGEND_PAD and x + entry_w > width - LEGEND_PAD:
            x, line = LEGEND_PAD, line + 1
        places.append((x, line))
        x += entry_w + LEGEND_SPACING
    return places


def legend_height(class_names: Sequence[str], width: int) -> int:
    """Height in px of :func:`class_legend`'s strip for these classes at ``width`` px."""
    places = _legend_layout(class_names, width)
    lines = places[-1][1] + 1 if places else 0
    return 2 * LEGEND_PAD + lines * LEGEND_ROW


def class_legend(class_names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """A legend strip (H, ``width``, 3) uint8 to put under a picture of class colours: per class
    ``i`` a LEGEND_SWATCH px square filled with exactly ``palette[i]`` (grey outline, so light
    colours show on the white) and its name in black, entries wrapped over as many lines as
    ``width`` needs (H = :func:`legend_height`). ``palette``: (>= len(class_names), 3) uint8,
    e.g. pipeline.preview.class_palette(class_names). Ignored pixels (255) are not a class and
    get no entry."""
    if len(palette) < len(class_names):
        raise ValueError(f"{len(class_names)} classes but a palette of {len(palette)} colours")
    strip = np.full((legend_height(class_names, width), int(width), 3), 255, np.uint8)
    for i, (name, (x, line)) in enumerate(zip(class_names, _legend_layout(class_names, width))):
        y = LEGEND_PAD + line * LEGEND_ROW + (LEGEND_ROW - LEGEND_SWATCH) // 2
        cv2.rectangle(strip, (x - 1, y - 1), (x + LEGEND_SWATCH, y + LEGEND_SWATCH), (110, 110, 110), 1)
        strip[y:y + LEGEND_SWATCH, x:x + LEGEND_SWATCH] = np.asarray(palette[i], np.uint8)[:3]
        cv2.putText(strip, str(name), (x + LEGEND_SWATCH + 4, y + LEGEND_SWATCH - 2), cv2.FONT_HERSHEY_SIMPLEX,
                    _LEGEND_FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def with_legend(picture: np.ndarray, class_names: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 with a LEGEND_GAP px white gutter and :func:`class_legend` below."""
    w = picture.shape[1]
    return np.concatenate([picture, np.full((LEGEND_GAP, w, 3), 255, np.uint8), class_legend(class_names, palette, w)])
