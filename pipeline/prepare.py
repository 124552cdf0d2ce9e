"""The preparation steps as plain functions; the CLI and the DVC stages call these.

Each step imports what it uses inside its function, so a stage loads (and its DVC deps name)
only its own code: the renderer is not a dependency of the shards stage.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import progress_bar
from pipeline.sources import create_reader


def _validator(dataset: str, reader_options):
    def validate(root: Path):
        reader = create_reader(dataset, root, reader_options)
        if not reader.ids():
            raise DataError(root, f"the {dataset} layout is there but holds no samples")
        return reader

    return validate


def acquire(dataset: str, root: str | Path, download, synthetic, reader_options, *, cache_dir: str | Path,
            workers: int = 1, progress: bool = True) -> Path:
    """Put ``dataset`` at ``root`` in its native layout, from the source ``download.source``.

    ``download``/``synthetic``/``reader_options`` are the dataset's DownloadConfig,
    SyntheticConfig and ReaderConfig.
    """
    from pipeline.download import archive_sources, copy_tree, extract_all, fetch

    root = Path(root)
    validate = _validator(dataset, reader_options)
    if download.source == "synthetic":
        from pipeline.sources.synthetic import generate

        generate(dataset, root, n_images=synthetic.n_images, width=synthetic.width, height=synthetic.height,
                 seed=synthetic.seed, workers=workers, progress=progress, variations=synthetic.variations)
        validate(root)
    elif download.source == "url":
        files = [fetch(a.url, Path(cache_dir) / a.name, download.sha256.get(a.name), progress=progress)
                 for a in archive_sources(dataset, download.mirror)]
        extract_all(files, root, validate)
    else:
        src = Path(download.local_path)
        if src.is_dir():
            copy_tree(src, root, validate)
        elif src.is_file():
            extract_all([src], root, validate)
        else:
            raise DataError(src, f"download.{dataset}.local_path: no such file or directory")
    return root


def build_split(dataset: str, root: str | Path, out: str | Path, split_cfg, reader_options, *,
                progress: bool = True) -> dict[str, list[str]]:
    """Draw the train/val split, read every chosen sample once to catch bad files, then
    write the manifest (only if all of them are readable)."""
    from pipeline.splits import make_split, write_manifest

    reader = create_reader(dataset, root, reader_options)
    ids = reader.ids()
    groups = None if split_cfg.group_by == "none" else {i: reader.group(i, split_cfg.group_by) for i in ids}
    split = make_split(ids, split_cfg.n_images, split_cfg.ratio, split_cfg.seed, key=f"splits.{dataset}",
                       groups=groups)
    chosen = split["train"] + split["val"]
    with progress_bar(f"checking {dataset} samples", len(chosen), progress) as advance:
        for sample_id in chosen:
            reader.frame(sample_id)
            advance()
    write_manifest(out, dataset, split, ratio=split_cfg.ratio, seed=split_cfg.seed,
                   class_names=reader.class_names, n_images=split_cfg.n_images, group_by=split_cfg.group_by,
                   groups=groups)
    return split


def compute_normals(dataset: str, root, split_path, depth_dir, out_dir, normals_cfg, reader_options, *,
                    metrics_path=None, progress: bool = True) -> dict:
    """Surface normals (``normals_cfg.estimator``) for every sample of the split, from the depth
    stage's maps; written as uint16 PNGs (see pipeline.normals.encode_normals) into a directory
    renamed into place.

    With ``metrics_path``, also the geometry quality (pipeline.geometry_quality): the normals
    against those of the best depth the source carries (``reader.ground_truth_depth``; same
    estimator and max_depth), on pixels valid in both, and the valid shares of the estimated
    normals and depth; written atomically as JSON.
    """
    import json

    from pipeline.atomic import atomic_path
    from pipeline.depth_codec import read_depth
    from pipeline.imageio import write_image
    from pipeline.normals import encode_normals, surface_normals
    from pipeline.splits import sample_ids

    reader = create_reader(dataset, root, reader_options)
    ids = sample_ids(reader, split_path)
    valid_px = total_px = 0
    parts = []

    def normals(depth, sid):
        return surface_normals(depth, reader.intrinsics(sid), max_depth=normals_cfg.max_depth,
                               return_mask=True, estimator=normals_cfg.estimator)

    with atomic_path(out_dir) as tmp, progress_bar(f"normals {dataset}", len(ids), progress) as advance:
        for sid in ids:
            depth = read_depth(depth_dir, sid)
            n, ok = normals(depth, sid)
            write_image(tmp / f"{sid}.png", encode_normals(n, ok))
            valid_px += int(ok.sum())
            total_px += ok.size
            if metrics_path:
                from pipeline.geometry_quality import frame_geometry

                gt = reader.ground_truth_depth(sid)
                ref = normals(gt, sid) if gt is not None else (None, None)
                parts.append(frame_geometry(n, ok, *ref, depth_valid=depth > 0))
            advance()
    summary = {"frames": len(ids), "valid_fraction": valid_px / max(total_px, 1)}
    if metrics_path:
        from pipeline.atomic import write_json
        from pipeline.geometry_quality import summarise_geometry

        manifest = Path(depth_dir) / "manifest.json"
        backends: dict[str, int] = {}
        if manifest.is_file():
            for b in json.loads(manifest.read_text()).get("backend", {}).values():
                backends[b] = backends.get(b, 0) + 1
        metrics = {"dataset": dataset, "estimator": normals_cfg.estimator, "max_depth": normals_cfg.max_depth,
                   "depth_backend": backends,
                   "reference": "normals of the source's ground-truth depth (vKITTI2 rendered depth, synthetic "
                                "side-car), same estimator",
                   **summarise_geometry(parts)}
        write_json(metrics_path, metrics)
        summary["geometry"] = metrics
    return summary


def build_shards(dataset: str, root, split_path, depth_dir, normals_dir, out_dir, shards_cfg, reader_options, *,
                 preview_path=None, metrics_path=None, progress: bool = True) -> dict:
    """Sharded HDF5 train/val splits (see pipeline.shards), a preview grid and shard counts."""
    import json

    import numpy as np

    from pipeline.atomic import atomic_path, write_json
    from pipeline.depth_codec import read_depth
    from pipeline.imageio import png_size, read_raw
    from pipeline.normals import decode_normals
    from pipeline.preview import write_preview
    from pipeline.shards import Sample, common_crop, crop, write_manifest, write_split
    from pipeline.splits import read_manifest as read_split

    reader = create_reader(dataset, root, reader_options)
    split = read_split(split_path)
    depth_manifest = Path(depth_dir) / "manifest.json"
    backends = json.loads(depth_manifest.read_text())["backend"] if depth_manifest.is_file() else {}

    def load(sid: str) -> Sample:
        normals, valid = decode_normals(read_raw(Path(normals_dir) / f"{sid}.png", np.uint16, channels=3))
        return Sample(sid, reader.rgb(sid), reader.label(sid), read_depth(depth_dir, sid), normals, valid,
                      reader.intrinsics(sid), backends.get(sid, ""))

    names = ("train", "val")
    size = common_crop([png_size(Path(depth_dir) / f"{i}.png") for n in names for i in split[n]])
    entries, first = {}, {}
    n_classes = len(reader.class_names)
    pixels = {n: np.zeros(n_classes + 1, dtype=np.int64) for n in names}  # last bin: ignore (255)
    total = sum(len(split[n]) for n in names)
    with atomic_path(out_dir) as tmp, progress_bar(f"shards {dataset}", total, progress) as advance:
        tmp.mkdir()
        for name in names:
            def samples(name=name):
                for k, sid in enumerate(split[name]):
                    s = crop(load(sid), size)
                    pixels[name] += np.bincount(np.minimum(s.label.ravel(), n_classes), minlength=n_classes + 1)
                    if k < shards_cfg.preview_rows:
                        first.setdefault(name, []).append(s)
                    advance()
                    yield s

            entries[name] = write_split(tmp, dataset, name, samples(), shards_cfg.samples_per_shard,
                                        shards_cfg.compression, shards_cfg.compression_level)
        manifest = write_manifest(tmp, dataset, reader.class_names, size, entries)
    summary = {"dataset": dataset, "image_size": list(size),
               **{f"{n}_samples": manifest["splits"][n]["count"] for n in names},
               **{f"{n}_shards": len(manifest["splits"][n]["shards"]) for n in names},
               "bytes": sum((Path(out_dir) / e["file"]).stat().st_size for n in names for e in entries[n]),
               # Share of the split's pixels per class of the label space (zeros included) and
               # ignored (255); per split they sum to 1.
               "class_pixel_share": {n: {c: float(pixels[n][k] / max(pixels[n].sum(), 1))
                                         for k, c in enumerate(reader.class_names)} for n in names},
               "ignore_pixel_share": {n: float(pixels[n][-1] / max(pixels[n].sum(), 1)) for n in names}}
    if preview_path:
        rows = [(f"{n} {s.id}", s) for n in names for s in first.get(n, [])]
        write_preview(preview_path, rows, reader.class_names)
    if metrics_path:
        write_json(metrics_path, summary)
    return summary
