"""Segmentation metrics from one confusion matrix over the valid pixels.

The matrix
----------
``M[t, p]`` counts the valid pixels whose ground truth is class ``t`` and whose prediction is
class ``p`` (rows: ground truth, columns: prediction), ``int64``. A pixel is *valid* when its
target is not ``ignore_index`` (255); predictions are compared only where the target is valid,
so whatever the network predicts on an ignored pixel counts nowhere. A target outside
``[0, n_classes)`` other than ``ignore_index``, or a prediction outside it on a valid pixel, is
an error (it would otherwise alias into a neighbouring cell of the flattened matrix).

Why ``torch.bincount`` and not torchmetrics: no extra dependency; the counts are exact integers
(no float accumulation, so the result does not depend on batch order or size, and on CUDA
``bincount`` without weights is deterministic); it runs on whatever device the batch is on;
and a plain ``(C, C)`` int64 tensor is trivially summed across DDP ranks with one
``all_reduce`` (:meth:`ConfusionMatrix.reduce`), saved to JSON, and rescored offline with
:func:`scores_from_confusion`.

Definitions (per class ``c``)
-----------------------------
    TP_c = M[c, c]      FP_c = sum_t M[t, c] - TP_c      FN_c = sum_p M[c, p] - TP_c
    IoU_c = TP_c / (TP_c + FP_c + FN_c)
    F1_c  = 2 TP_c / (2 TP_c + FP_c + FN_c)     (= Dice; the paper's "Fsc" is this F-score)

* A class absent from both the ground truth and the predictions (``TP + FP + FN = 0``) has no
  defined score: it is reported as NaN per class and **excluded** from the means (mIoU, mFsc
  average over the classes that are defined, not over ``n_classes``).
* A class absent from the ground truth but predicted somewhere (``FP > 0``) scores IoU 0 and
  F1 0 and **counts** in mIoU / mFsc: false alarms of a class that is not there are penalised.
* A class present in the ground truth but never predicted likewise scores 0 and counts.
* ``mIoU``, ``mFsc``: unweighted means over the defined classes.
* ``fwIoU``, ``fwFsc``: ``sum_c w_c * score_c`` with frequency weights
  ``w_c = (ground-truth pixels of c) / (all valid pixels)`` (row sums over the total), so the
  weights sum to 1 and a class with no ground-truth pixel has weight 0 (its NaN or 0 score
  contributes nothing; its false positives still lower the score of the classes they were
  taken from, through their FN).
* ``pixel_acc = trace(M) / sum(M)``.
* With no valid pixel at all every score is NaN and ``n_pixels`` is 0.

All scores are **fractions** in ``[0, 1]`` (or NaN); reports multiply by 100 to print percent.
NaN is not valid strict JSON: ``pipeline.atomic.json_safe`` maps it to ``None`` for writing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.distributed as dist

from pipeline.atomic import atomic_path
from pipeline.constants import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``(n_classes, n_classes)`` int64 confusion matrix (rows: ground truth).

    ``device``: where the matrix lives. ``None`` keeps it on the CPU; the counting itself always
    runs on the batch's device (``bincount`` there, then only the ``C*C`` counts are moved), so
    GPU batches are never copied to the host. Pass the CUDA device to keep the matrix there too.

    In DDP every rank calls :meth:`update` on its own shard, then all ranks call :meth:`reduce`
    (a collective) before :meth:`compute`. The rank's own counts are kept apart from the reduced
    ones, so calling ``reduce`` twice does not double-count, and an ``update`` after a reduce
    invalidates it (``compute`` then falls back to the local counts until reduced again).
    """

    def __init__(self, n_classes: int, ignore_index: int = IGNORE_INDEX, device: str | torch.device | None = None):
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < self.n_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id (n_classes={n_classes})")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self.local = torch.zeros(self.n_classes, self.n_classes, dtype=torch.int64, device=self.device)
        self._reduced: torch.Tensor | None = None

    @property
    def matrix(self) -> torch.Tensor:
        """The reduced matrix after :meth:`reduce`, else this process's own counts."""
        return self._reduced if self._reduced is not None else self.local

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. ``target``: (N, ...) integer class ids, ``ignore_index`` for void.

        ``pred``: the same shape of integer class ids, or logits/scores (N, C, ...) with
        ``C == n_classes`` (the argmax over dim 1 is taken).
        """
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class ids, got {target.dtype}")
        if pred.dim() == target.dim() + 1:
            if pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
                raise ValueError(f"logits {tuple(pred.shape)} do not match target {tuple(target.shape)} "
                                 "(expected (N, C, ...) for a target (N, ...))")
            if pred.shape[1] != self.n_classes:
                raise ValueError(f"logits have {pred.shape[1]} channels, expected n_classes={self.n_classes}")
            pred = pred.argmax(dim=1)
        elif pred.shape == target.shape:
            if pred.is_floating_point() or pred.is_complex() or pred.dtype == torch.bool:
                raise TypeError(f"pred with the target's shape must hold integer class ids, got {pred.dtype}")
        else:
            raise ValueError(f"pred {tuple(pred.shape)} matches neither target {tuple(target.shape)} "
                             "(class ids) nor (N, C, ...) logits")
        target = target.to(pred.device)
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long()
        valid = t != self.ignore_index
        t, p = t[valid], p[valid]
        n = self.n_classes
        if t.numel() == 0:
            return
        bad = (t < 0) | (t >= n) | (p < 0) | (p >= n)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"class id out of range [0, {n}) on a valid pixel: target {int(t[i])}, "
                             f"prediction {int(p[i])} (ignore_index={self.ignore_index})")
        counts = torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
        self.local += counts.to(self.local.device)
        self._reduced = None

    @torch.no_grad()
    def reduce(self) -> torch.Tensor:
        """Sum the matrix over all DDP ranks (a collective: every rank must call it).

        A no-op (returns the local counts) when ``torch.distributed`` is unavailable or no
        process group is initialised. With the NCCL backend a CPU matrix is reduced through a
        temporary copy on the current CUDA device.
        """
        if not (dist.is_available() and dist.is_initialized()):
            self._reduced = None
            return self.local
        buf = self.local.clone()
        if "nccl" in str(dist.get_backend()).lower() and buf.device.type != "cuda":
            buf = buf.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        self._reduced = buf.to(self.local.device)
        return self._reduced

    def compute(self) -> dict[str, Any]:
        """Scores of :attr:`matrix` (see the module docstring); plain Python types."""
        return scores_from_confusion(self.matrix)


def _as_numpy_matrix(matrix: Any) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {m.shape}")
    if m.dtype.kind not in "iuf":
        raise ValueError(f"a confusion matrix must be numeric, got {m.dtype}")
    if m.dtype.kind == "f" and (not np.all(np.isfinite(m)) or np.any(m != np.round(m))):
        raise ValueError("a confusion matrix holds whole counts")
    if np.any(m < 0):
        raise ValueError("a confusion matrix holds non-negative counts")
    return m.astype(np.int64)


def _mean_defined(x: np.ndarray) -> float:
    d = x[~np.isnan(x)]
    return float(d.mean()) if d.size else math.nan


def scores_from_confusion(matrix: Any) -> dict[str, Any]:
    """All scores from a (C, C) confusion matrix (rows: ground truth, columns: prediction).

    Pure: takes a numpy array, a torch tensor (any device) or a nested list, returns plain
    Python floats/ints/lists. Keys: ``per_class_iou``, ``per_class_f1`` (NaN where undefined),
    ``support`` (ground-truth pixels per class), ``miou``, ``mfsc``, ``fwiou``, ``fwfsc``,
    ``pixel_acc`` (fractions), ``n_pixels``, ``n_classes_scored``, ``matrix`` (nested list).
    """
    m = _as_numpy_matrix(matrix)
    tp = np.diag(m).astype(np.float64)
    gt = m.sum(axis=1).astype(np.float64)      # TP + FN
    pr = m.sum(axis=0).astype(np.float64)      # TP + FP
    total = float(m.sum())
    union = gt + pr - tp                       # TP + FP + FN
    defined = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(defined, tp / union, np.nan)
        f1 = np.where(defined, 2 * tp / (gt + pr), np.nan)
    if total > 0:
        w = gt / total
        # w == 0 wherever the score is NaN (undefined => no ground truth), so drop those terms.
        fwiou = float(np.sum(w[defined] * iou[defined]))
        fwfsc = float(np.sum(w[defined] * f1[defined]))
        acc = float(tp.sum() / total)
    else:
        fwiou = fwfsc = acc = math.nan
    return {
        "per_class_iou": [float(v) for v in iou],
        "per_class_f1": [float(v) for v in f1],
        "support": [int(v) for v in m.sum(axis=1)],
        "miou": _mean_defined(iou),
        "mfsc": _mean_defined(f1),
        "fwiou": fwiou,
        "fwfsc": fwfsc,
        "pixel_acc": acc,
        "n_pixels": int(m.sum()),
        "n_classes_scored": int(defined.sum()),
        "matrix": m.tolist(),
    }


# ----------------------------------------------------------------------------- plot

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PAD = 6


def _text_size(text: str, scale: float) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    return w, h + base


def _label(text: str, scale: float, fg: int = 0) -> np.ndarray:
    """A white (h, w, 3) uint8 tile with ``text`` drawn on it."""
    w, h = _text_size(text, scale)
    tile = np.full((h + 2, w + 2, 3), 255, np.uint8)
    (_, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(tile, text, (1, th + 1), _FONT, scale, (fg, fg, fg), 1, cv2.LINE_AA)
    return tile


def _paste(img: np.ndarray, tile: np.ndarray, y: int, x: int) -> None:
    h, w = tile.shape[:2]
    img[y:y + h, x:x + w] = tile


def plot_confusion(matrix: Any, class_names: Sequence[str], path: str | Path, cell: int = 32,
                   font_scale: float = 0.4) -> dict[str, Any]:
    """Write the row-normalised confusion matrix as a PNG (numpy + OpenCV only), atomically.

    Rows are ground truth, columns prediction; each row is divided by its ground-truth count, so
    the diagonal is the per-class recall. Colours: viridis from 0 (dark) to 1 (yellow); a row
    with no ground-truth pixel is drawn grey. Cells of at least 20 px show the percentage. Class
    names label the rows (left) and the columns (top, rotated). A colour bar sits on the right.

    Returns the layout: ``shape`` (H, W) of the image, ``grid`` (y0, x0) of the top-left cell,
    ``cell`` (its side in px), so cell (r, c) covers
    ``[y0 + r*cell, y0 + (r+1)*cell) x [x0 + c*cell, x0 + (c+1)*cell)``.
    """
    m = _as_numpy_matrix(matrix).astype(np.float64)
    n = m.shape[0]
    names = [str(s) for s in class_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}x{n} matrix")
    if cell < 4:
        raise ValueError(f"cell must be >= 4 px, got {cell}")
    rows = m.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, m / rows, np.nan)

    row_tiles = [_label(s, font_scale) for s in names]
    col_tiles = [cv2.rotate(_label(s, font_scale), cv2.ROTATE_90_COUNTERCLOCKWISE) for s in names]
    title = _label("rows: ground truth, columns: prediction (row-normalised)", font_scale)
    x0 = _PAD + max(t.shape[1] for t in row_tiles) + _PAD
    y0 = _PAD + title.shape[0] + _PAD + max(t.shape[0] for t in col_tiles) + _PAD
    bar_w = 14
    bar_labels = [_label("100%", font_scale), _label("0%", font_scale)]
    # Labels taller/wider than a cell (tiny cells) may overhang the grid: make room for them.
    grid_h = max(n * cell, (n - 1) * cell + max(t.shape[0] for t in row_tiles), 2 * bar_labels[0].shape[0])
    col_w = max(n * cell, (n - 1) * cell + max(t.shape[1] for t in col_tiles))
    bar_x = x0 + col_w + 2 * _PAD
    width = max(bar_x + bar_w + _PAD + max(t.shape[1] for t in bar_labels) + _PAD, _PAD + title.shape[1] + _PAD)
    height = y0 + grid_h + _PAD
    img = np.full((height, width, 3), 255, np.uint8)  # BGR

    _paste(img, title, _PAD, _PAD)
    grey = np.array([160, 160, 160], np.uint8)
    levels = np.round(np.nan_to_num(norm, nan=0.0) * 255).astype(np.uint8)
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_VIRIDIS)  # (n, n, 3) BGR
    for r in range(n):
        for c in range(n):
            y, x = y0 + r * cell, x0 + c * cell
            img[y:y + cell, x:x + cell] = grey if np.isnan(norm[r, c]) else colours[r, c]
            if cell >= 20 and not np.isnan(norm[r, c]):
                txt = f"{100 * norm[r, c]:.0f}"
                tw, th = _text_size(txt, font_scale * 0.9)
                fg = (0, 0, 0) if levels[r, c] > 140 else (255, 255, 255)
                cv2.putText(img, txt, (x + (cell - tw) // 2, y + (cell + th) // 2 - 2), _FONT, font_scale * 0.9,
                            fg, 1, cv2.LINE_AA)
        t = row_tiles[r]
        _paste(img, t, y0 + r * cell + max(0, (cell - t.shape[0]) // 2), x0 - _PAD - t.shape[1])
    for c, t in enumerate(col_tiles):
        _paste(img, t, y0 - _PAD - t.shape[0], x0 + c * cell + max(0, (cell - t.shape[1]) // 2))
    for k in range(1, n):  # thin white lines between cells
        img[y0 + k * cell, x0:x0 + n * cell] = 255
        img[y0:y0 + n * cell, x0 + k * cell] = 255
    # Colour bar: 1 at the top, 0 at the bottom.
    ramp = np.linspace(255, 0, n * cell).round().astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(ramp, bar_w, axis=1), cv2.COLORMAP_VIRIDIS)
    img[y0:y0 + n * cell, bar_x:bar_x + bar_w] = bar
    _paste(img, bar_labels[0], y0, bar_x + bar_w + _PAD // 2)
    _paste(img, bar_labels[1], y0 + max(n * cell - bar_labels[1].shape[0], bar_labels[0].shape[0]),
           bar_x + bar_w + _PAD // 2)

    path = Path(path)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"could not encode the confusion plot for {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    return {"shape": (height, width), "grid": (y0, x0), "cell": cell}
