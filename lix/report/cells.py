"""The markdown cells and tables of the report: ``mean ± std`` (percent), seed counts, the
last-epoch mIoU, signed differences, and the pipe table itself."""

from __future__ import annotations

from typing import Any

from lix.report.names import METRIC_LABEL, METRICS


def fmt_value(cell: dict | None, metric: str, digits: int = 2) -> str:
    """``mean ± std`` in percent (``± –`` with one seed; the mean in bold when marked best);
    ``failed (k of n)`` when no seed finished and k failed; ``–`` when nothing is there."""
    if cell is None or cell["n_ok"] == 0:
        if cell is not None and cell["n_failed"]:
            return f"failed ({cell['n_failed']} of {cell['n']})"
        return "–"
    m = cell["metrics"][metric]
    if m["mean"] is None:
        return "–"
    mean = f"{m['mean']:.{digits}f}"
    if metric in cell["bold"]:
        mean = f"**{mean}**"
    std = "–" if m["std"] is None else f"{m['std']:.{digits}f}"
    s = f"{mean} ± {std}"
    if m["n"] != cell["n_ok"]:
        s += f" (n={m['n']})"
    return s


def fmt_n(cell: dict | None) -> str:
    """Finished seeds of the cell's seeds, with the failed and missing ones named."""
    if cell is None or cell["n"] == 0 or cell["dirs"] == 0:
        return "–"
    extra = [f"{cell['n_failed']} failed"] * bool(cell["n_failed"]) + [f"{cell['n_missing']} missing"] * bool(
        cell["n_missing"])
    return f"{cell['n_ok']}/{cell['n']}" + (f" ({', '.join(extra)})" if extra else "")


def pp(v: float | None, signed: bool = True) -> str:
    """A difference in percentage points, signed ("+1.25") unless ``signed`` is False; "–" for None."""
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown pipe table (header, separator, rows), with "|" in cells escaped."""
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in esc[1:])]


def metric_columns(models: list[str], d: dict) -> list[str]:
    """The column headers "<model> <metric>" of the ablation tables: the paper's metrics and n per model."""
    return [f"{d['model_display'][m]} {METRIC_LABEL[k]}" for m in models for k in (*METRICS, "n")]


def metric_cells(cells: dict, models: list[str]) -> list[str]:
    """The cells under :func:`metric_columns` for one row's cells ({model: cell})."""
    return [fmt_value(cells.get(m), k) if k != "n" else fmt_n(cells.get(m)) for m in models for k in (*METRICS, "n")]


LAST_LABEL = "mIoU (last epoch)"

SELECTION_GAP_PP = 2.0  # best-on-val − last-epoch mIoU (pp) from which the report calls it out


def fmt_last(cell: dict | None, metric: str = "miou", digits: int = 2) -> str:
    """The last epoch's val ``metric``, ``mean ± std`` over the finished seeds that recorded it
    (``(n=k)`` when not all did); ``–`` where none did (a run from before summary.json had it)."""
    if cell is None or cell["n_ok"] == 0 or not cell.get("last") or cell["last"][metric]["mean"] is None:
        return "–"
    m = cell["last"][metric]
    std = "–" if m["std"] is None else f"{m['std']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {std}" + (f" (n={m['n']})" if m["n"] != cell["n_ok"] else "")


def _main_keys() -> list[str]:
    """The main tables' columns per model: the paper's metrics, the last-epoch mIoU right after
    the mIoU it qualifies, then n."""
    keys = list(METRICS)
    keys.insert(keys.index("miou") + 1, "last")
    return [*keys, "n"]


def main_columns(models: list[str], d: dict) -> list[str]:
    """The main tables' column headers per model (:func:`_main_keys`)."""
    return [f"{d['model_display'][m]} {LAST_LABEL if k == 'last' else METRIC_LABEL[k]}" for m in models
            for k in _main_keys()]


def main_cells(cells: dict, models: list[str]) -> list[str]:
    """The cells under :func:`main_columns` for one row's cells ({model: cell})."""
    out = []
    for m in models:
        for k in _main_keys():
            out.append(fmt_n(cells.get(m)) if k == "n" else fmt_last(cells.get(m)) if k == "last"
                       else fmt_value(cells.get(m), k))
    return out


def dash(v: Any) -> str:
    """``v`` as text, "—" for None (a value the run did not record)."""
    return "—" if v is None else str(v)


def table_models(d: dict, rows: list[dict]) -> list[str]:
    """The dataset's models that at least one of ``rows`` has a cell for, in the dataset's order."""
    return [m for m in d["models"] if any(m in r["cells"] for r in rows)]
