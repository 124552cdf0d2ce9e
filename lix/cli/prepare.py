"""``lix prepare ...``: the data-preparation commands (one per DVC stage), thin over pipeline/."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import typer

from lix import layout
from lix.cli.common import Dataset, DatasetOpt, ParamsOpt, ProgressOpt, command, out

prepare_app = typer.Typer(help="Data preparation: download, splits, depth, normals, shards (the DVC stages).",
                          no_args_is_help=True)


# Options several preparation steps share; each defaults to the step's place under data/ (lix.layout).
RootOpt = typer.Option(None, help="Dataset root (default data/raw/<dataset>).")
SplitOpt = typer.Option(None, help="Split manifest (default data/splits/<dataset>.json).")
DepthOpt = typer.Option(None, help="Depth maps from `lix prepare depth` (default data/depth/<dataset>).")


@command(prepare_app, "download")
def download_cmd(
    dataset: Dataset = DatasetOpt,
    root: Path = typer.Option(None, help="Where the dataset goes (default data/raw/<dataset>)."),
    params: Path = ParamsOpt,
    cache: Path = typer.Option(layout.DOWNLOADS, help="Where downloaded archives are kept."),
    workers: int = typer.Option(min(2, os.cpu_count() or 1), help="Processes for synthesising."),
    progress: bool = ProgressOpt,
):
    """Put a dataset in its native layout: synthesise it (default), download it, or take local files."""
    from lix.config import load_params
    from pipeline.prepare import acquire

    p = load_params(params)
    d = dataset.value
    root = root or layout.raw(d)
    acquire(d, root, p.download[d], p.synthetic[d], p.reader[d], cache_dir=cache, workers=workers,
            progress=progress)
    out.print(f"[green]{d}[/] ready at {root} (source: {p.download[d].source})")


@command(prepare_app, "splits")
def splits_cmd(
    dataset: Dataset = DatasetOpt,
    root: Path = RootOpt,
    out_path: Path = typer.Option(None, "--out", help="Manifest to write (default data/splits/<dataset>.json)."),
    params: Path = ParamsOpt,
    progress: bool = ProgressOpt,
):
    """Draw the seeded train/val split and write its manifest of sample ids."""
    from lix.config import load_params
    from pipeline.prepare import build_split

    p = load_params(params)
    d = dataset.value
    root = root or layout.raw(d)
    out_path = out_path or layout.split(d)
    split = build_split(d, root, out_path, p.splits[d], p.reader[d], progress=progress)
    out.print(f"[green]{d}[/] split: {len(split['train'])} train / {len(split['val'])} val -> {out_path}")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@command(prepare_app, "depth")
def depth_cmd(
    dataset: Dataset = DatasetOpt,
    root: Path = RootOpt,
    split: Path = typer.Option(None, help="Split manifest: only its samples get depth (default: all samples)."),
    out_dir: Path = typer.Option(None, "--out", help="Output directory (default data/depth/<dataset>)."),
    metrics: Path = typer.Option(None, help="Depth-quality metrics JSON (default data/metrics/depth_<dataset>.json)."),
    params: Path = ParamsOpt,
    part: int = typer.Option(None, help="This process's part of the frames (default: torchrun's RANK, else 0)."),
    num_parts: int = typer.Option(None, help="Number of parts (default: torchrun's WORLD_SIZE, else 1)."),
    progress: bool = ProgressOpt,
):
    """Dense metric depth for every sample: CreStereo / SGBM (stereo), Depth Anything (mono), or the
    depth the source carries. Resumable; with several parts, rank 0 merges and scores."""
    from lix.config import load_params
    from pipeline.depth.run import finalize, generate_depth

    p = load_params(params)
    d = dataset.value
    root = root or layout.raw(d)
    out_dir = out_dir or layout.depth(d)
    metrics = metrics or layout.prep_metrics("depth", d)
    part = _env_int("RANK", 0) if part is None else part
    num_parts = _env_int("WORLD_SIZE", 1) if num_parts is None else num_parts
    # Each torchrun process's GPU comes from LOCAL_RANK in pipeline.depth.base.resolve_device.
    summary = generate_depth(d, root, out_dir, p.depth[d], p.reader[d], split=split, part=part,
                             num_parts=num_parts, progress=progress)
    out.print(f"[green]{d}[/] depth part {part}/{num_parts}: {summary['computed']} computed, "
              f"{summary['skipped']} already done, backend {summary['backend']} ({summary['reason']})")
    if num_parts > 1 and "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        dist.barrier()
        if dist.get_rank() != 0:
            dist.destroy_process_group()
            return
        dist.destroy_process_group()
    elif num_parts > 1:
        out.print("other parts may still be running; merge with [bold]--part 0 --num-parts 1[/] when all are done")
        return
    m = finalize(d, root, out_dir, p.depth[d], p.reader[d], split=split, metrics_path=metrics,
                 reason=summary["reason"], progress=progress)
    out.print(f"[green]{d}[/] depth metrics -> {metrics}: {m['vs_ground_truth'] or m['vs_sparse_lidar']}")


@command(prepare_app, "normals")
def normals_cmd(
    dataset: Dataset = DatasetOpt,
    root: Path = RootOpt,
    split: Path = SplitOpt,
    depth: Path = DepthOpt,
    out_dir: Path = typer.Option(None, "--out", help="Output directory (default data/normals/<dataset>)."),
    metrics: Path = typer.Option(None, help="Geometry-quality JSON: normals vs those of the source's ground-truth "
                                 "depth, valid shares (default data/metrics/geometry_<dataset>.json)."),
    params: Path = ParamsOpt,
    progress: bool = ProgressOpt,
):
    """Surface normals (normals.<dataset>.estimator) for every sample of the split, from its depth map,
    and their geometry quality."""
    from lix.config import load_params
    from pipeline.prepare import compute_normals

    p = load_params(params)
    d = dataset.value
    metrics = metrics or layout.prep_metrics("geometry", d)
    s = compute_normals(d, root or layout.raw(d), split or layout.split(d),
                        depth or layout.depth(d), out_dir or layout.normals(d), p.normals[d],
                        p.reader[d], metrics_path=metrics, progress=progress)
    vs = s["geometry"]["vs_reference"]
    quality = (f"; vs ground truth: median {vs['median_deg']:.1f} deg, {vs['within_11.25']:.0%} within 11.25 deg"
               if vs and vs.get("pixels") else "")
    out.print(f"[green]{d}[/] normals for {s['frames']} frames ({s['valid_fraction']:.1%} of pixels valid{quality}); "
              f"metrics {metrics}")


@command(prepare_app, "shards")
def shards_cmd(
    dataset: Dataset = DatasetOpt,
    root: Path = RootOpt,
    split: Path = SplitOpt,
    depth: Path = DepthOpt,
    normals: Path = typer.Option(None, help="Normal maps (default data/normals/<dataset>)."),
    out_dir: Path = typer.Option(None, "--out", help="Shard directory (default data/shards/<dataset>)."),
    preview: Path = typer.Option(None, help="Preview PNG (default data/previews/<dataset>.png)."),
    metrics: Path = typer.Option(None, help="Shard counts JSON (default data/metrics/shards_<dataset>.json)."),
    params: Path = ParamsOpt,
    progress: bool = ProgressOpt,
):
    """Write the train/val splits as HDF5 shards with a manifest, plus a preview grid."""
    from lix.config import load_params
    from pipeline.prepare import build_shards

    p = load_params(params)
    d = dataset.value
    preview = preview or layout.preview(d)
    s = build_shards(d, root or layout.raw(d), split or layout.split(d),
                     depth or layout.depth(d), normals or layout.normals(d),
                     out_dir or layout.shards(d), p.shards[d], p.reader[d], preview_path=preview,
                     metrics_path=metrics or layout.prep_metrics("shards", d), progress=progress)
    out.print(f"[green]{d}[/] shards: {s['train_samples']} train / {s['val_samples']} val in "
              f"{s['train_shards'] + s['val_shards']} files ({s['bytes'] / 2**20:.1f} MiB); preview {preview}")


@command(prepare_app, "preview")
def preview_cmd(
    dataset: Dataset = DatasetOpt,
    shards: Path = typer.Option(None, help="Shard directory (default data/shards/<dataset>)."),
    out_path: Path = typer.Option(None, "--out", help="PNG to write (default data/previews/<dataset>.png)."),
    rows: int = typer.Option(3, min=1, help="Samples per split."),
):
    """A preview grid (RGB | depth | normals | labels) of the first samples of each split, from the shards."""
    from pipeline.preview import preview_from_shards

    d = dataset.value
    path = preview_from_shards(shards or layout.shards(d), out_path or layout.preview(d), rows)
    out.print(f"[green]{d}[/] preview -> {path}")


class SplitChoice(str, Enum):
    train = "train"
    val = "val"
    all = "all"


@command(prepare_app, "verify-shards")
def verify_shards_cmd(
    shards: Path = typer.Option(None, "--shards", help="Shard directory (holds manifest.json)."),
    dataset: Dataset = typer.Option(None, "--dataset", "-d", help="Instead of --shards: data/shards/<dataset>."),
    sha256: bool = typer.Option(False, "--sha256", help="Also check every byte against the manifest's SHA-256 "
                                                        "(reads every shard once): after copying or downloading "
                                                        "shards, or when in doubt."),
    split: SplitChoice = typer.Option(SplitChoice.all, "--split", help="Which split to check: train, val or all."),
    progress: bool = ProgressOpt,
):
    """Check the shards against their manifest: presence, byte size, HDF5 schema, dataset, split and
    sample counts (the check every loader does); with --sha256 also every byte."""
    from pipeline.errors import ConfigError
    from pipeline.progress import progress_bar
    from pipeline.shards import read_manifest, split_entries, verify_shards

    if shards is None and dataset is None:
        raise ConfigError("--shards/--dataset", "give the shard directory (--shards DIR) or a dataset (--dataset)")
    shard_dir = shards or layout.shards(dataset.value)
    m = read_manifest(shard_dir)
    splits = list(m["splits"]) if split is SplitChoice.all else [split.value]
    entries = {s: split_entries(shard_dir, s, m) for s in splits}
    method = "sha256" if sha256 else "size"
    with progress_bar(f"verifying shards ({method})", sum(map(len, entries.values())), enabled=progress) as advance:
        for s in splits:
            verify_shards(shard_dir, s, method, on_shard=lambda _p: advance())
    for s in splits:
        n = sum(e["count"] for e in entries[s])
        k = len(entries[s])
        out.print(f"[green]{m['dataset']}[/] {s}: {k} shard{'s' * (k != 1)}, {n} samples, ok "
                  f"({'every byte' if sha256 else 'size and schema'}) in {shard_dir}", soft_wrap=True)


@command(prepare_app, "check-params")
def check_params_cmd(params: Path = ParamsOpt):
    """Validate params.yaml (types, ranges, and every model, method and hyper-parameter against the
    registries) and print the resolved values."""
    from lix.config import load_params
    from lix.validate import check_params

    out.print(check_params(load_params(params)))
