"""The matplotlib side every picture of the report shares: a figure on the Agg canvas (no pyplot
state, no display), the one PNG writer (atomic, no "Software" metadata, so the same input gives
the same bytes), the title, the mean-and-band line of a curve over seeds. Matplotlib is imported
inside the functions: the report's tables do not need it.
"""

from __future__ import annotations

from pathlib import Path

from lix.report.logs import aggregate_seeds
from lix.report.names import display_dataset, display_model
from pipeline.atomic import atomic_path

GREY = 128  # the grey of a missing column and of ignored pixels


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches at 120 dpi on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically, without the "Software" metadata (the same
    figure gives the same bytes); returns ``path``. Every picture of the report is saved here."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def figure_title(dataset: str, model: str) -> str:
    """"KITTI · MFNet": the dataset and model a picture shows."""
    return f"{display_dataset(dataset)} · {display_model(model)}"


def draw_band(ax, curves: dict[int, dict[int, float]], colour: str, label: str, scale: float = 1.0) -> bool:
    """Mean line and min-max band of ``curves`` ({seed: {step: value}}) times ``scale``;
    False when there is nothing to draw."""
    agg = aggregate_seeds(curves.values())
    if not len(agg["steps"]):
        return False
    x = agg["steps"]
    marker = "o" if len(x) <= 30 else None
    ax.plot(x, agg["mean"] * scale, color=colour, marker=marker, markersize=3, linewidth=1.5,
            label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        ax.fill_between(x, agg["lo"] * scale, agg["hi"] * scale, color=colour, alpha=0.18, linewidth=0)
    return True


def epoch_axis(ax, fontsize: float | None = None) -> None:
    """Label the x axis "epoch", with integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch", fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def empty_note(ax, text: str) -> None:
    """``text`` in grey in the middle of an empty panel (what is missing, instead of a blank)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9)
