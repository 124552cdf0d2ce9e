"""The preparation steps as plain functions; the CLI and the DVC stages call these."""

from __future__ import annotations

from pathlib import Path

from pipeline.download import archive_sources, copy_tree, extract_all, fetch
from pipeline.errors import DataError
from pipeline.sources import create_reader
from pipeline.sources.synthetic import generate
from pipeline.sources.synthetic.common import progress_bar
from pipeline.splits import make_split, write_manifest


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
    root = Path(root)
    validate = _validator(dataset, reader_options)
    if download.source == "synthetic":
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
    reader = create_reader(dataset, root, reader_options)
    split = make_split(reader.ids(), split_cfg.n_images, split_cfg.ratio, split_cfg.seed,
                       key=f"splits.{dataset}")
    chosen = split["train"] + split["val"]
    with progress_bar(f"checking {dataset} samples", len(chosen), progress) as advance:
        for sample_id in chosen:
            reader.frame(sample_id)
            advance()
    write_manifest(out, dataset, split, ratio=split_cfg.ratio, seed=split_cfg.seed,
                   class_names=reader.class_names)
    return split
