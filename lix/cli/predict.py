"""``lix predict``: thin over lix/predict.py (parse, call, report)."""

from __future__ import annotations

from pathlib import Path

import typer

from lix.cli.common import DeviceOpt, ProgressOpt, command, out

# The command's own options (the shared ones live in lix/cli/common.py).
CheckpointOpt = typer.Option(..., "--checkpoint", help="An RGB-only student: best.pt / last.pt / model.safetensors "
                                                       "of lix train or lix distill.")
InputOpt = typer.Option(..., "--input", help="Folder of images, any size: PNG, JPEG (.jpg/.jpeg), BMP, TIFF "
                                             "(.tif/.tiff), WebP (.webp), suffix case ignored. Subfolders are not "
                                             "searched; other files are ignored.")
OutputOpt = typer.Option(..., "--output", help="Where <name>_label.png, _colour.png, _overlay.png, predict.json "
                                               "and skipped.txt go (<name>_<ext>_label.png ... when inputs share a "
                                               "name, as a.png and a.jpg).")
BatchSizeOpt = typer.Option(8, "--batch-size", help="Most images per forward pass (images of one size; fewer when "
                                                    "--memory-budget requires).")
MemoryBudgetOpt = typer.Option(None, "--memory-budget", metavar="GIB",
                               help="GiB a forward pass may take (activations, tile stitching and, on the CPU, the "
                                    "image and its outputs); an image too large for it is segmented in overlapping "
                                    "tiles, their logits averaged. Default: 2 on the CPU, half the free GPU memory "
                                    "on CUDA.")

predict_app = typer.Typer(help="Segmentation of a folder of images with a trained student.")


@command(predict_app, "predict")
def predict_cmd(checkpoint: Path = CheckpointOpt, input_dir: Path = InputOpt, output_dir: Path = OutputOpt,
                batch_size: int = BatchSizeOpt, memory_budget: float = MemoryBudgetOpt, device: str = DeviceOpt,
                progress: bool = ProgressOpt):
    """Segment a folder of RGB images with a trained student: label maps, colours, overlays.
    Exits with status 2 when no image could be segmented."""
    from rich.markup import escape

    from lix.predict import predict_folder

    r = predict_folder(checkpoint, input_dir, output_dir, batch_size=batch_size, device=device, progress=progress,
                       memory_budget_gib=memory_budget)
    for path, reason in r["skipped"]:
        out.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}", markup=True, highlight=False, soft_wrap=True)
    tiled = sum(1 for o in r["outputs"].values() if o["tile"])
    budget = f"{r['memory_budget_bytes'] / (1 << 30):.3g} GiB"
    out.print(f"[green]{len(r['written'])}[/] image(s) segmented -> {escape(str(output_dir))}"
              + (f" ({tiled} in overlapping tiles: larger than the memory budget of {budget})" if tiled else ""),
              soft_wrap=True)
