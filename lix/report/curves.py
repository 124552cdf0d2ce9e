"""The matrix's validation curves as DVC plots: one file per dataset, one line per run.

DVC draws a data file's last column (or the columns a plot definition names), so 129 runs
declared one by one make 129 two-point plots, and a list of files in dvc.yaml goes stale the
moment ``sweep.methods`` changes. Instead the report stage writes, for every dataset,
``<out>/<dataset>.csv`` in long form::

    epoch,run,miou
    1,mfnet/teacher/seed0,0.213
    1,mfnet/lix/seed0,0.198
    ...

from whatever runs exist (each run's dvclive log, ``dvclive/plots/metrics/val/<metric>.tsv``),
and dvc.yaml declares the directory once with the template ``lix/report/plots/val_curves.json``, which
colours the lines by ``run`` (and dashes them by revision in ``dvc plots diff``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lix import layout
from lix.report.logs import metric_file
from pipeline.atomic import write_text


def run_curve(run_dir: Path, metric: str = "miou") -> list[tuple[int, float]]:
    """(epoch, value) of ``val/<metric>`` from a run's dvclive log; [] when it has none or the
    file is unreadable (a run that failed before its first evaluation)."""
    path = metric_file(run_dir, f"val/{metric}")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
        return [(int(float(r["step"])), float(r[metric])) for r in rows]
    except (OSError, KeyError, ValueError, TypeError):
        return []


def val_curves(runs_dir: str | Path, metric: str = "miou") -> dict[str, list[tuple[int, str, float]]]:
    """dataset -> [(epoch, "<model>/<method>/seed<k>", value)] over the runs under
    ``runs_dir/<dataset>/<model>/<method>/seed<k>``, sorted by run then epoch."""
    out: dict[str, list[tuple[int, str, float]]] = {}
    for run_dir in sorted(Path(runs_dir).glob("*/*/*/seed*")):
        if not run_dir.is_dir() or not layout.SEED_DIR.match(run_dir.name):
            continue
        dataset, model, method, seed = run_dir.relative_to(runs_dir).parts
        label = f"{model}/{method}/{seed}"
        out.setdefault(dataset, []).extend((epoch, label, v) for epoch, v in run_curve(run_dir, metric))
    return out


def write_val_curves(runs_dir: str | Path, out_dir: str | Path, metric: str = "miou") -> list[Path]:
    """Write ``<out_dir>/<dataset>.csv`` (columns epoch, run, ``metric``) for every dataset with
    at least one evaluated run; files of datasets without runs are removed, so the directory
    holds exactly the current matrix. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = val_curves(runs_dir, metric)
    written = []
    for dataset, rows in sorted(curves.items()):
        if not rows:
            continue
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["epoch", "run", metric])
        w.writerows((epoch, run, f"{v:.6f}") for epoch, run, v in rows)
        path = out_dir / f"{dataset}.csv"
        write_text(path, buf.getvalue())
        written.append(path)
    for stale in set(out_dir.glob("*.csv")) - set(written):
        stale.unlink()
    return written
