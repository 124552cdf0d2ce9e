"""Reading the run directories of the experiment matrix (the layout: :mod:`lix.report`).

A seed directory is a :class:`Run`: finished (a usable ``metrics.json``), failed (``failed.json``,
or a ``metrics.json`` an evaluation left damaged) or missing, with its ``config.json`` and
``summary.json`` when present. Nothing here computes a statistic or writes a file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lix import layout
from lix.report.names import ALL_METRICS, parse_method
from pipeline.errors import DataError

LAYOUT = "<runs_root>/<dataset>/<model>/<method>/seed<k>/metrics.json"


@dataclass(frozen=True)
class Run:
    """One ``seed<k>`` directory."""

    dataset: str
    model: str
    method: str  # the directory name, ablation included
    seed: int
    status: str  # "ok" | "failed" | "missing"
    metrics: dict | None = None
    error: str | None = None
    hyper: dict | None = None  # config.json's distill.resolved_hyper: every value the distiller used
    given_hyper: dict | None = None  # config.json's distill.hyper: what the run was asked for
    notes: tuple[str, ...] = field(default=())
    config: dict | None = None  # config.json: the resolved run config (lix.provenance.run_config)
    summary: dict | None = None  # summary.json: epochs, best_epoch, stopped, last, provenance, samples

    @property
    def name(self) -> str:
        """``<dataset>/<model>/<method>/seed<k>``: the run's path below the runs root."""
        return layout.run_name(self.dataset, self.model, self.method, self.seed)

    @property
    def train(self) -> dict:
        """config.json's ``train``: the resolved TrainConfig ({} when absent)."""
        train = (self.config or {}).get("train")
        return train if isinstance(train, dict) else {}


def method_dir(runs_root: str | Path, dataset: str, model: str, method: str) -> Path:
    """``<runs_root>/<dataset>/<model>/<method>``: the parent of the method's seed directories
    (lix.layout.run_dir, the one spelling of the run layout)."""
    return layout.run_dir(dataset, model, method, 0, runs_root).parent


def model_dir(runs_root: str | Path, dataset: str, model: str) -> Path:
    """``<runs_root>/<dataset>/<model>``: the parent of the method directories."""
    return method_dir(runs_root, dataset, model, layout.TEACHER).parent


def seed_dirs(method: str | Path) -> list[tuple[int, Path]]:
    """[(k, <method>/seed<k>)] for the seed directories (``lix.layout.SEED_DIR``) of a method directory, by k;
    [] when it does not exist."""
    method = Path(method)
    if not method.is_dir():
        return []
    found = ((layout.SEED_DIR.match(p.name), p) for p in method.iterdir() if p.is_dir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_optional(path: Path, notes: list[str]) -> dict | None:
    """A JSON object file that only adds detail (config.json, summary.json): None when absent;
    when unreadable or not an object, None and a note (the run's numbers do not depend on it)."""
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e}); ignored")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: not a JSON object; ignored")
        return None
    return data


def read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """(metrics, None) for a usable ``metrics.json``, else (None, why not). Usable: a JSON object
    with a finite ``miou`` and fields of the types evaluate_checkpoint writes. An empty file,
    ``{}``, invalid JSON or a file without ``miou`` is what an evaluation that died half-way
    leaves; counting it as finished would put a row of dashes in the tables as if the run had no
    numbers to give, so it is a failure with its reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        return None, f"metrics.json unreadable: {e}"
    if not text.strip():
        return None, "metrics.json is empty (0 bytes): the evaluation did not finish"
    try:
        metrics = json.loads(text)
    except ValueError as e:
        return None, f"metrics.json is not valid JSON ({e}): the evaluation did not finish"
    if not isinstance(metrics, dict):
        return None, "metrics.json is not a JSON object"
    if not metrics:
        return None, "metrics.json is empty ({}): the evaluation wrote no numbers"
    if finite(metrics.get("miou")) is None:
        has = ", ".join(sorted(map(str, metrics))[:8])
        return None, f"metrics.json is incomplete: no finite 'miou' (it has: {has})"
    wrong = _wrong_type(metrics)
    if wrong:
        return None, f"metrics.json is malformed: {wrong}"
    return metrics, None


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _wrong_type(metrics: dict) -> str | None:
    """The first field of ``metrics`` that evaluate_checkpoint could not have written: a scalar
    metric that is not a number (or null), a per-class table that is not {class: number or null}.
    Such a file was damaged after the fact; its other numbers are not to be trusted either."""
    for k in ALL_METRICS:
        if not _is_number(metrics.get(k)):
            return f"{k!r} is a {type(metrics[k]).__name__}, not a number"
    for k in ("per_class_iou", "per_class_f1"):
        table = metrics.get(k)
        if table is None:
            continue
        if not isinstance(table, dict):
            return f"{k!r} is a {type(table).__name__}, not a {{class: value}} object"
        bad = next((c for c, v in table.items() if not _is_number(v)), None)
        if bad is not None:
            return f"{k}[{bad!r}] is a {type(table[bad]).__name__}, not a number"
    return None


def _failed_error(f_path: Path) -> str:
    try:
        data = _read_json(f_path)
        return str(data.get("error", data)) if isinstance(data, dict) else str(data)
    except (OSError, ValueError) as e:
        return f"failed.json unreadable: {e}"


def read_run(seed_dir: Path, dataset: str, model: str, method: str, seed: int) -> Run:
    """The state of one seed directory (the layout: :mod:`lix.report`)."""
    notes: list[str] = []
    config = _read_optional(seed_dir / "config.json", notes)
    hyper = given = None
    distill = config.get("distill") if config is not None else None
    if isinstance(distill, dict):
        h, g = distill.get("resolved_hyper"), distill.get("hyper")
        hyper = dict(h) if isinstance(h, dict) else None
        given = dict(g) if isinstance(g, dict) else None
    summary = _read_optional(seed_dir / "summary.json", notes)
    kw = dict(dataset=dataset, model=model, method=method, seed=seed, hyper=hyper, given_hyper=given,
              config=config, summary=summary)
    m_path, f_path = seed_dir / "metrics.json", seed_dir / "failed.json"
    if m_path.is_file():
        metrics, why = read_metrics(m_path)
        if metrics is None:
            if f_path.is_file():  # the run's own account of what went wrong, when it left one
                why += f"; failed.json: {_failed_error(f_path)}"
            return Run(status="failed", error=why, notes=tuple(notes), **kw)
        got = metrics.get("dataset")
        if got is not None and got != dataset:
            notes.append(f"{m_path}: says dataset {got!r}, its directory {dataset!r}")
        got = metrics.get("model")
        if got is not None and not model.startswith(str(got)):
            notes.append(f"{m_path}: says model {got!r}, its directory {model!r}")
        return Run(status="ok", metrics=metrics, notes=tuple(notes), **kw)
    if f_path.is_file():
        return Run(status="failed", error=_failed_error(f_path), notes=tuple(notes), **kw)
    return Run(status="missing", notes=tuple(notes), **kw)


def scan_runs(runs_root: str | Path) -> list[Run]:
    """Every ``<dataset>/<model>/<method>/seed<k>`` directory under ``runs_root``, sorted.

    Raises DataError (naming the path) when ``runs_root`` is not a directory, holds no seed
    directory, or a method directory's ablation name is malformed."""
    root = Path(runs_root)
    if not root.is_dir():
        raise DataError(root, f"no such runs directory (expected {LAYOUT})")
    runs = []
    for ds in subdirs(root):
        for model in subdirs(ds):
            for method in subdirs(model):
                try:
                    parse_method(method.name)
                except ValueError:
                    raise DataError(method, "an ablation directory is named <method>~<key>=<value>[,<key>=<value>...]"
                                    ) from None
                for seed, sd in seed_dirs(method):
                    runs.append(read_run(sd, ds.name, model.name, method.name, seed))
    if not runs:
        raise DataError(root, f"no run directories found (expected {LAYOUT})")
    return sorted(runs, key=lambda r: (r.dataset, r.model, r.method, r.seed))


def subdirs(p: Path) -> list[Path]:
    """The directories in ``p`` by name, hidden ones (``.dvc``-style) left out."""
    return sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def read_overhead(runs_root: str | Path, path: str | Path | None = None) -> dict | None:
    """``path`` (default ``<runs_root>/overhead.json``; benchmarks/distill_step.py --json writes
    it) as {model: {method: {"time_ratio", "memory_ratio"}}}, or None when absent. A top-level
    ``"machine"`` string (where it was measured) is kept under the key ``"machine"``."""
    path = Path(path) if path is not None else Path(runs_root) / "overhead.json"
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable: {e}") from None
    machine = data.pop("machine", None) if isinstance(data, dict) and isinstance(data.get("machine"), str) else None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(path, 'expected {model: {method: {"time_ratio": float, "memory_ratio": float}}}')
    result = {}
    for model, methods in data.items():
        result[model] = {}
        for method, r in methods.items():
            r = r if isinstance(r, dict) else {}
            result[model][method] = {k: finite(r.get(k)) for k in ("time_ratio", "memory_ratio")}
    if machine:
        result["machine"] = machine
    return result

