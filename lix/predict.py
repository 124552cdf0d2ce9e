"""Apply a trained RGB-only student to a folder of images: label maps in the dataset's colours
and overlays.

    predict_folder("data/runs/kitti/mfnet/lix/seed0/best.pt", "my_images/", "predictions/")

For each readable image ``<name>.<ext>`` (png, jpg, jpeg, bmp; any size: the models pad to
their stride and crop the logits back) the output folder gets ``<name>_label.png`` (uint8 class
ids, the dataset's train ids), ``<name>_colour.png`` (the ids in the dataset's colours,
pipeline.preview's palette) and ``<name>_overlay.png`` (the colours over the image). Images of
one size are batched (``batch_size``). Every file is written atomically, so an interrupted run
leaves no half-written output; unreadable images are skipped and listed (returned, printed by
the CLI, and written to ``skipped.txt``). Outputs of an image are only written once its
prediction exists, and existing outputs are overwritten.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lix.config import TrainConfig, from_dict
from lix.train import DistInfo, Inputs, _autocast, _Bar, build_model, load_run, resolve_device
from pipeline.errors import DataError, LixError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name; suffix case ignored)."""
    if not folder.is_dir():
        raise DataError(folder, "input folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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


def _batches(paths: list[Path], batch_size: int, skipped: list[tuple[Path, str]]
             ) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    """Read the images, group them by size, yield full batches (and the rest at the end)."""
    from pipeline.imageio import read_rgb

    pending: dict[tuple[int, int], tuple[list[Path], list[np.ndarray]]] = defaultdict(lambda: ([], []))
    for p in paths:
        try:
            img = read_rgb(p)
        except (DataError, OSError) as e:
            skipped.append((p, e.problem if isinstance(e, DataError) else str(e)))
            continue
        group = pending[img.shape[:2]]
        group[0].append(p)
        group[1].append(img)
        if len(group[0]) == batch_size:
            yield pending.pop(img.shape[:2])
    for group in pending.values():
        if group[0]:
            yield group


@torch.no_grad()
def predict_folder(checkpoint: str | Path, input_dir: str | Path, output_dir: str | Path, *, batch_size: int = 8,
                   device: str = "auto", progress: bool = True, alpha: float = 0.55) -> dict:
    """Predict every image of ``input_dir`` into ``output_dir`` (see the module docstring).
    Returns {"written": [names], "skipped": [(path, reason)], "classes": [...]}; ``predict.json``
    in the output folder holds the same."""
    from pipeline.atomic import atomic_path
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette, label_overlay

    if batch_size < 1:
        raise LixError(f"--batch-size must be >= 1, got {batch_size}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    paths = list_images(input_dir)
    if not paths:
        raise DataError(input_dir, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    d = DistInfo(device=resolve_device(device, "--device"))
    model, inputs, config = load_student(checkpoint, d.device)
    names = list(config["class_names"])
    pal = class_palette(names)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    skipped: list[tuple[Path, str]] = []
    amp = bool(config["train"].get("amp", True))
    done = 0
    with _Bar("predict", len(paths), progress) as bar:
        for batch_paths, images in _batches(paths, batch_size, skipped):
            rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(d.device)
            x, _ = inputs({"rgb": rgb.float().div_(255.0)})
            with _autocast(d.device, amp):
                pred = model(x).argmax(1).to(torch.uint8).cpu().numpy()
            for p, img, lab in zip(batch_paths, images, pred):
                stem = p.stem
                write_image(output_dir / f"{stem}_label.png", lab)
                write_image(output_dir / f"{stem}_colour.png", pal[lab])
                write_image(output_dir / f"{stem}_overlay.png", label_overlay(img, lab, pal, alpha))
                written.append(p.name)
            while done < len(written) + len(skipped):
                done += 1
                bar.advance()
    result = {"checkpoint": str(checkpoint), "classes": names, "written": written,
              "skipped": [[str(p), reason] for p, reason in skipped]}
    with atomic_path(output_dir / "predict.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(output_dir / "skipped.txt") as tmp:
        tmp.write_text("".join(f"{p}\t{reason}\n" for p, reason in skipped))
    return result
