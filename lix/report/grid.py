"""The qualitative grid: RGB | ground truth | one prediction column per method, for the same
first val images, the class legend below (pipeline.preview's palette and legend strip); a method
whose run is missing gets a grey column marked "missing"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from lix import layout
from lix.report.names import display_name
from lix.report.networks import load_net, logits_of, rgb_of, torch_device, val_items
from lix.report.plot import GREY
from pipeline.errors import DataError
from pipeline.preview import legend_height, with_legend

log = logging.getLogger(__name__)

GAP = 2  # px of white between the tiles of qualitative_grid


def title_height(tile_w: int) -> int:
    """Height in px of qualitative_grid's title strip for tiles ``tile_w`` px wide."""
    return max(16, min(40, tile_w // 10))


def grid_titles(methods: Sequence[str]) -> list[str]:
    """The column titles of :func:`qualitative_grid` for ``methods``, left to right: the grid
    draws them and the report's caption lists them, so the two cannot disagree."""
    return ["RGB", "ground truth", *(display_name(m) for m in methods)]


def grid_size(n_rows: int, n_cols: int, tile_h: int, tile_w: int,
              class_names: Sequence[str] | None = None) -> tuple[int, int]:
    """(H, W) of qualitative_grid's picture: the title strip, then per row a GAP and the row;
    columns separated by GAP; with ``class_names``, a GAP and the class legend below
    (:func:`legend_height`), as qualitative_grid draws it."""
    h, w = title_height(tile_w) + n_rows * (GAP + tile_h), n_cols * tile_w + (n_cols - 1) * GAP
    if class_names is not None:
        h += GAP + legend_height(class_names, w)
    return h, w


def _text(img: np.ndarray, text: str, colour, max_h: float) -> np.ndarray:
    """``text`` centred on ``img`` (uint8 (h, w, 3)), as large as fits ``max_h`` px high."""
    import cv2

    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thick)
    h, w = img.shape[:2]
    scale = max(0.2, min(max_h / (th + base), (w - 4) / max(tw, 1)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    org = (max(0, (w - tw) // 2), (h + th) // 2)
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)
    return img


def _missing_tile(h: int, w: int, text: str) -> np.ndarray:
    return _text(np.full((h, w, 3), GREY, np.uint8), text, (40, 40, 40), 0.3 * h)


def qualitative_grid(runs_root: str | Path, shards_root: str | Path, dataset: str, model: str,
                     methods: Sequence[str], path: str | Path, n_images: int = 4, seed: int = 0,
                     device: str = "cpu") -> Path:
    """One row per val image (the first ``n_images`` of ``<shards_root>/<dataset>``'s val
    split, the same for every column): RGB | ground truth | one column per entry of
    ``methods`` in order, each the prediction of ``<runs_root>/<dataset>/<model>/<method>/
    seed<seed>/best.pt`` as class colours over the RGB (pipeline.preview's palette; ignored
    ground-truth pixels show the RGB). The teacher sees RGB + its X through its own Inputs.
    A method without that checkpoint gets a grey column marked "missing" (an unreadable one:
    "unreadable", with a warning); a run trained on other classes is a DataError. A title
    strip names the columns (:func:`grid_titles`); the class legend (:func:`class_legend`)
    runs below. Tiles are the val images' size (H, W), GAP px apart: the picture is
    :func:`grid_size` (rows, 2 + len(methods), H, W, class names). PNG, written atomically."""
    from lix.checkpoint import load_checkpoint
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette, label_overlay

    dev = torch_device(device)
    items, class_names = val_items(shards_root, dataset, n_images)
    pal = class_palette(class_names)
    h, w = items[0]["rgb"].shape[1:]
    rgbs = [_fit(rgb_of(it), h, w) for it in items]
    gts = [_fit(label_overlay(rgb_of(it), it["label"].numpy(), pal), h, w) for it in items]
    col_titles = grid_titles(methods)
    columns: list[tuple[str, list[np.ndarray]]] = [(col_titles[0], rgbs), (col_titles[1], gts)]
    for method, name in zip(methods, col_titles[2:]):
        ckpt_path = layout.run_dir(dataset, model, method, seed, runs_root) / "best.pt"
        if not ckpt_path.is_file():
            columns.append((name, [_missing_tile(h, w, "missing")] * len(items)))
            continue
        try:
            ckpt = load_checkpoint(ckpt_path, required=("model", "config"))
        except DataError as e:
            log.warning("qualitative grid: %s", e)
            columns.append((name, [_missing_tile(h, w, "unreadable")] * len(items)))
            continue
        net, inputs, _config = load_net(ckpt, ckpt_path, class_names, dev)
        tiles = []
        for it in items:
            pred = logits_of(net, inputs, it, dev).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
            tiles.append(_fit(label_overlay(rgb_of(it), pred, pal), h, w))
        columns.append((name, tiles))
        del net, ckpt
    th = title_height(w)
    gap_v = np.full((h, GAP, 3), 255, np.uint8)
    titles = [_text(np.full((th, w, 3), 255, np.uint8), t, (0, 0, 0), 0.65 * th) for t, _ in columns]
    parts = [_hjoin(titles, np.full((th, GAP, 3), 255, np.uint8))]
    for r in range(len(items)):
        row = _hjoin([tiles[r] for _, tiles in columns], gap_v)
        parts += [np.full((GAP, row.shape[1], 3), 255, np.uint8), row]
    grid = with_legend(np.concatenate(parts, axis=0), class_names, pal)
    write_image(path, grid)
    return Path(path)


def _hjoin(tiles: list[np.ndarray], gap: np.ndarray) -> np.ndarray:
    return np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)


def _fit(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """A val image of another size, resized (nearest: class colours stay exact) to (h, w)."""
    if tile.shape[:2] == (h, w):
        return tile
    import cv2

    return cv2.resize(tile, (w, h), interpolation=cv2.INTER_NEAREST)
