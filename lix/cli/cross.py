"""``lix cross-evaluate``: thin over lix/cross_dataset.py (parse, call, report)."""

from __future__ import annotations

from pathlib import Path

import typer

from lix import layout
from lix.cli.common import Dataset, DeviceOpt, ProgressOpt, command, out

cross_app = typer.Typer(help="Generalisation across datasets.")


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


PAIR_SEP = "-to-"  # sweep.cross entries: <source>-to-<target> (DVC stage names allow no ">" or "@")


def parse_pair(pair: str) -> tuple[str, str]:
    """``"vkitti2-to-kitti"`` -> ``("vkitti2", "kitti")``; ConfigError naming ``--pair`` otherwise."""
    from pipeline.datasets import DATASETS
    from pipeline.errors import ConfigError

    src, sep, tgt = pair.partition(PAIR_SEP)
    if not sep or src not in DATASETS or tgt not in DATASETS or src == tgt:
        raise ConfigError("--pair", f"expected <source>{PAIR_SEP}<target> of two different datasets of "
                                    f"{list(DATASETS)}, got {pair!r}")
    return src, tgt


@command(cross_app, "cross-evaluate")
def cross_evaluate_cmd(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="An RGB-only student of dataset A (lix train / "
                                                               "lix distill): best.pt, last.pt or model.safetensors."),
    dataset: Dataset = typer.Option(None, "--dataset", "-d", help="The target dataset B: its val split is scored "
                                                                  "on the classes A and B share."),
    pair: str = typer.Option(None, "--pair", help="Instead of --checkpoint/--dataset: <A>-to-<B>, with the run "
                                                  "<runs>/<A>/<model>/<method>/seed<k>/best.pt (the sweep's form)."),
    runs: Path = typer.Option(layout.RUNS, "--runs", help="Runs root for --pair."),
    model: str = typer.Option("mfnet", "--model", help="With --pair: the run's model."),
    method: str = typer.Option("lix", "--method", help="With --pair: the run's method (student, lix, kd, ...)."),
    seed: int = typer.Option(0, "--seed", help="With --pair: the run's seed."),
    shards: Path = typer.Option(None, "--shards", help="The target's shard directory (default data/shards/<dataset>)."),
    out_dir: Path = typer.Option(..., "--out", help="Where metrics.json goes (not the run's own directory)."),
    device: str = DeviceOpt,
    progress: bool = ProgressOpt,
):
    """Score a student trained on one dataset on another dataset's val split (common classes)."""
    from lix.cross_dataset import evaluate_cross
    from pipeline.errors import ConfigError

    if pair is not None:
        if checkpoint is not None or dataset is not None:
            raise ConfigError("--pair", "give either --pair or --checkpoint with --dataset, not both")
        src, d = parse_pair(pair)
        checkpoint = layout.run_dir(src, model, method, seed, runs) / "best.pt"
    elif checkpoint is None or dataset is None:
        raise ConfigError("--checkpoint/--dataset", "both are required (or --pair)")
    else:
        d = dataset.value
    m = evaluate_cross(checkpoint, d, shards or layout.shards(d), out_dir, device=device, progress=progress)
    out.print(f"[green]{m['source']} -> {m['target']}[/] ({m['model']}, {len(m['common_classes'])} common classes, "
              f"{m['val_samples']} val samples): mIoU {_pct(m['miou'])}, mFsc {_pct(m['mfsc'])}, "
              f"pixel acc {_pct(m['pixel_acc'])}, predicted without counterpart {_pct(m['other_rate'])} "
              f"-> {out_dir / 'metrics.json'}")
