"""The runs' dvclive logs, read back: one metric file as [(step, value)], a method's curves per
seed and their aggregate over seeds (the numbers behind the training-curve and CKA figures).

    <runs_root>/<dataset>/<model>/<method>/seed<k>/dvclive/plots/metrics/<name>.tsv
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from lix.config import VARIANT_SEP
from lix.report.names import DISPLAY
from lix.report.scan import method_dir, model_dir, seed_dirs

METRICS_DIR = ("dvclive", "plots", "metrics")


def read_tsv(path: str | Path) -> list[tuple[int, float]]:
    """The rows of one dvclive metric file (``step<TAB><name>`` header, one row per logged
    step) as [(step, value)] in file order. A missing file gives []; the header, blank lines
    and rows that do not parse (e.g. a half-written last line) are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows: list[tuple[int, float]] = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        try:
            rows.append((int(parts[0]), float(parts[1])))
        except ValueError:  # the header, or a damaged row
            continue
    return rows


def metric_file(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/dvclive/plots/metrics/<name>.tsv`` (``name`` e.g. ``"val/miou"``)."""
    return Path(run_dir).joinpath(*METRICS_DIR, f"{name}.tsv")


def method_seeds(runs_root: str | Path, dataset: str, model: str, method: str) -> list[tuple[int, Path]]:
    """[(k, <runs_root>/<dataset>/<model>/<method>/seed<k>)] for the seed directories that exist, by k."""
    return seed_dirs(method_dir(runs_root, dataset, model, method))


def _method_key(method: str) -> tuple:
    """Main runs before ablations, each in the report's row order (lix.report.names.DISPLAY)."""
    order = list(DISPLAY)
    base = method.partition(VARIANT_SEP)[0]
    return (VARIANT_SEP in method, order.index(base) if base in order else len(order), base, method)


def list_methods(runs_root: str | Path, dataset: str, model: str, ablations: bool = False) -> list[str]:
    """The method directories of ``<runs_root>/<dataset>/<model>`` that hold a seed directory,
    in the report's order (teacher, student, the baselines, the paper's methods); ablation
    variants only when ``ablations``."""
    d = model_dir(runs_root, dataset, model)
    if not d.is_dir():
        return []
    names = [p.name for p in d.iterdir() if p.is_dir() and method_seeds(runs_root, dataset, model, p.name)]
    return sorted((m for m in names if ablations or VARIANT_SEP not in m), key=_method_key)


def seed_curves(runs_root: str | Path, dataset: str, model: str, method: str, name: str) -> dict[int, dict[int, float]]:
    """{seed: {step: value}} of the metric ``name`` (e.g. ``"val/miou"``) for every seed of
    ``method`` whose log is not empty. A step logged twice (a resumed run re-logging an epoch)
    keeps its last value."""
    out = {}
    for k, d in method_seeds(runs_root, dataset, model, method):
        rows = read_tsv(metric_file(d, name))
        if rows:
            out[k] = dict(rows)
    return out


def aggregate_seeds(curves: Iterable[dict[int, float]]) -> dict[str, np.ndarray]:
    """Per step over the seeds that logged it (NaN values left out): ``steps`` (S,) int,
    ``mean``, ``lo`` (min), ``hi`` (max) (S,) float, ``n`` (S,) int seeds counted. Steps where
    no seed has a finite value are dropped."""
    curves = list(curves)
    steps = sorted({s for c in curves for s in c})
    rows = []
    for s in steps:
        vals = [c[s] for c in curves if s in c and math.isfinite(c[s])]
        if vals:
            rows.append((s, float(np.mean(vals)), min(vals), max(vals), len(vals)))
    cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return {"steps": np.asarray(cols[0], dtype=np.int64), "mean": np.asarray(cols[1], dtype=np.float64),
            "lo": np.asarray(cols[2], dtype=np.float64), "hi": np.asarray(cols[3], dtype=np.float64),
            "n": np.asarray(cols[4], dtype=np.int64)}
