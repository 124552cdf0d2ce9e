"""``write_report``: scan the runs, build the summary, draw the pictures, write README.md and
summary.json (the orchestration ``lix report`` calls; the layout it reads: :mod:`lix.report`)."""

from __future__ import annotations

import logging
from pathlib import Path

from lix.report.depth import depth_sources
from lix.report.figures import cka_curves, plot_beta_sweep, training_curves
from lix.report.markdown import render_markdown
from lix.report.names import display_dataset
from lix.report.paper import SHIPPED, compare_with_paper, load_paper_figures
from lix.report.scan import read_overhead, scan_runs
from lix.report.summary import build_summary, scan_cross
from pipeline.atomic import write_json, write_text

log = logging.getLogger(__name__)


def _first_ok_seed(d: dict, model: str, method: str) -> int | None:
    """The first finished seed of ``method``'s main-table cell for ``model``; None without one."""
    row = next((r for r in d["main"] if r["method"] == method), None)
    if row is None:
        return None
    ok = row["cells"][model]["seeds"]["ok"] if model in row["cells"] else []
    return int(ok[0]) if ok else None


def draw_figures(summary: dict, runs_root: Path, shards_root: Path | None, out: Path,
                 device: str = "cpu") -> list[Path]:
    """The pictures of each dataset and model (lix/report/figures.py, grid.py, dwc.py) into ``out``, recorded in
    ``summary["datasets"][ds]["figures"][model]`` (name -> file) for the markdown: training
    curves, the teacher-student CKA over training (Fig. 5), and, with ``shards_root``, the
    qualitative grid (RGB | GT | teacher | student | the best baseline where one finished | LIX,
    the same val images for every method, seed of the first finished LIX run; its columns recorded
    in ``d["figure_info"][model]["grid"]`` for the caption) and the DWC's weight and confidence maps.
    A figure that cannot be drawn (a run without checkpoint, unreadable shards) is noted in
    ``summary["notes"]``, never fatal: the tables matter more than one picture."""
    # the pictures of val images need cv2 and the shards' reader (pipeline.preview): only here
    from lix.report.dwc import dwc_maps
    from lix.report.grid import grid_titles, qualitative_grid

    written: list[Path] = []
    for ds, d in summary["datasets"].items():
        d["figures"], d["figure_info"] = {}, {}
        for model in d["models"]:
            figs: dict[str, str] = {}
            tag = f"{ds}_{model}"

            def attempt(name: str, fn, *args, **kw):
                try:
                    p = fn(*args, **kw)
                except Exception as e:  # noqa: BLE001 - a picture must not sink the report
                    summary["notes"].append(f"{ds}/{model}: the {name} figure was not drawn ({e})")
                    log.warning("%s/%s: %s figure not drawn: %s", ds, model, name, e)
                    return
                if p is not None:
                    figs[name] = Path(p).name
                    written.append(Path(p))

            attempt("curves", training_curves, runs_root, ds, model, out / f"curves_{tag}.png")
            attempt("cka", cka_curves, runs_root, ds, model, out / f"cka_{tag}.png",
                    methods=[m for m in ("student", "lix", "dwld", "arfd")
                             if any(r["method"] == m for r in d["main"])])
            if shards_root is not None and (Path(shards_root) / ds).is_dir():
                best = d["paired"][model].get("best_baseline")
                columns = ["teacher", "student", *([best] if best else []), "lix"]
                seed = _first_ok_seed(d, model, "lix")
                seed = seed if seed is not None else _first_ok_seed(d, model, "student")
                if seed is not None:
                    attempt("grid", qualitative_grid, runs_root, shards_root, ds, model, columns,
                            out / f"grid_{tag}.png", seed=seed, device=device)
                    if "grid" in figs:  # what the caption lists: the titles the grid drew
                        d["figure_info"][model] = {"grid": {"columns": grid_titles(columns), "seed": seed,
                                                            "best_baseline": best}}
                lix_seed = _first_ok_seed(d, model, "lix")
                if lix_seed is not None:
                    attempt("dwc", dwc_maps, runs_root, shards_root, ds, model, out / f"dwc_{tag}.png",
                            seed=lix_seed, device=device)
            d["figures"][model] = figs
    return written


def _mean_table(d: dict, metric: str = "miou") -> dict[str, dict[str, float]]:
    """method -> model -> our mean ``metric`` (percent) over the finished seeds, main table rows."""
    out: dict[str, dict[str, float]] = {}
    for row in d["main"]:
        for model, cell in row["cells"].items():
            mean = ((cell or {}).get("metrics") or {}).get(metric, {}).get("mean")
            if mean is not None:
                out.setdefault(row["method"], {})[model] = mean
    return out


def write_report(runs_root: str | Path, out_dir: str | Path, *, plots: bool = True,
                 shards_root: str | Path | None = None, device: str = "cpu",
                 cross_root: str | Path | None = None, overhead: str | Path | None = None,
                 paper: str | Path | None = SHIPPED) -> dict:
    """Scan ``runs_root`` (the layout: :mod:`lix.report`), write ``README.md``, ``summary.json``
    and the pictures (with ``plots``: the β-sweep plots and the figures of
    :func:`draw_figures`) into ``out_dir`` atomically, and return the summary. Pictures of an
    earlier report that this one no longer has are removed. ``paper``: the paper's published
    figures (lix/report/paper.py; default the shipped Tables I–V, None for none; a directory
    without tables.json gives none), loaded before anything is written, so a bad file leaves the
    previous report as it was. With them, each dataset gets ``paper_comparison``
    (lix.report.paper.compare_with_paper: the gap closed and Kendall's τ per architecture)."""
    runs = scan_runs(runs_root)
    summary = build_summary(runs, read_overhead(runs_root, overhead), runs_root=str(runs_root))
    summary["depth_sources"], depth_notes = depth_sources(shards_root, summary["datasets"])
    summary["notes"] += depth_notes
    summary["cross"] = scan_cross(cross_root)
    if paper is not None:
        summary["paper"] = load_paper_figures(paper)
        if summary["paper"]:
            for ds, entry in summary["paper"]["datasets"].items():
                if ds in summary["datasets"]:
                    summary["datasets"][ds]["paper_comparison"] = compare_with_paper(
                        _mean_table(summary["datasets"][ds]), entry["rows"])
            shown = [display_dataset(d) for d in summary["paper"]["datasets"] if d in summary["datasets"]]
            unshown = [display_dataset(d) for d in summary["paper"]["datasets"] if d not in summary["datasets"]]
            summary["paper_note"] = (f"The paper's published figures ({summary['paper']['source']}) are quoted "
                                     f"beside ours for {', '.join(shown) or 'no dataset'}"
                                     + (f"; given for {', '.join(unshown)} too, which has no runs here" * bool(unshown))
                                     + ".")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        for ds, d in summary["datasets"].items():
            if "beta_sweep" in d["ablations"]:
                written.append(plot_beta_sweep(d, out / f"beta_sweep_{ds}.png"))
        written += draw_figures(summary, Path(runs_root), Path(shards_root) if shards_root else None, out, device)
    for stale in out.glob("*.png"):
        if stale not in written:
            stale.unlink()
    summary["plots"] = sorted(p.name for p in written)
    summary["notes"] = sorted(set(summary["notes"]))
    write_json(out / "summary.json", summary)
    write_text(out / "README.md", render_markdown(summary, Path(out_dir), Path(runs_root)))
    return summary
