"""The ``lix`` command line: the root command table. Each command group lives in its own module
(``lix/cli/prepare.py``: data preparation), thin over ``pipeline``/``lix``; this file only
mounts them, so the DVC stages do not depend on it."""

from __future__ import annotations

import typer

from lix.cli.cross import cross_app
from lix.cli.distill import distill_app
from lix.cli.predict import predict_app
from lix.cli.prepare import prepare_app
from lix.cli.report import report_app
from lix.cli.sweep import sweep_app
from lix.cli.train import train_app

app = typer.Typer(help="LIX: geometry-aware knowledge distillation for semantic segmentation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(prepare_app, name="prepare")
app.add_typer(train_app)  # lix train, lix evaluate
app.add_typer(distill_app)  # lix distill
app.add_typer(report_app)  # lix report
app.add_typer(sweep_app)  # lix sweep
app.add_typer(cross_app)  # lix cross-evaluate
app.add_typer(predict_app)  # lix predict


if __name__ == "__main__":
    app()
