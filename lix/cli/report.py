"""``lix report``: thin over lix/report/ (parse, call, report)."""

from __future__ import annotations

from pathlib import Path

import typer

from lix.cli.common import ProgressOpt, command, out

report_app = typer.Typer(help="The experiment matrix's runs as a report in the paper's layout.")


@command(report_app, "report")
def report_cmd(
    # what it reads
    runs: Path = typer.Option(None, "--runs", help="Runs root: <runs>/<dataset>/<model>/<method>/seed<k>/metrics.json "
                                                   "(or failed.json), optional <runs>/overhead.json."),
    ledger: Path = typer.Option(None, "--ledger", help="Instead of --runs: a profile's ledger.jsonl (lix sweep "
                                                       "--profile): the verdict from the ledger alone."),
    cross: Path = typer.Option(None, "--cross", help="Cross-dataset evaluations root (<cross>/<source>-to-<target>/"
                                                     "<model>/<method>/seed<k>/metrics.json), if any."),
    shards: Path = typer.Option(None, "--shards", help="Shards root (<shards>/<dataset>): the val images of the "
                                                       "qualitative grid and the DWC maps, and the depth source "
                                                       "of each dataset (recorded per sample in its shards)."),
    overhead: Path = typer.Option(None, "--overhead", help="benchmarks/distill_step.py --json output (default "
                                                           "<runs>/overhead.json when present)."),
    paper: Path = typer.Option(None, "--paper", help="The paper's published figures quoted beside ours: a JSON "
                                                     "file or a directory holding tables.json (format: "
                                                     "lix/report/paper.py). Default: the shipped Tables I-V "
                                                     "(lix/report/paper_tables.json)."),
    no_paper: bool = typer.Option(False, "--no-paper", help="Quote none of the paper's figures."),
    # what it writes
    out_dir: Path = typer.Option(..., "--out", help="Where README.md, summary.json and the pictures (PNG) go."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the pictures (curves, CKA over training, "
                                                            "beta sweep; with --shards the qualitative grid and "
                                                            "the DWC maps)."),
    curves: Path = typer.Option(None, "--curves", help="Also write the val mIoU curves of every run as DVC plot "
                                                       "data: <curves>/<dataset>.csv (epoch, run, miou; "
                                                       "lix/report/curves.py)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N] for the pictures' forward passes."),
    progress: bool = ProgressOpt,
):
    """The protocol (checkpoint chosen and scored on val, the teacher-vs-student premise, the
    setup of every run), tables in the paper's layout (mean ± std over seeds) with the last
    epoch's mIoU beside the chosen one, per-class IoU, ablations, overhead, paired seed
    comparisons: README.md and summary.json."""
    from lix.report.build import write_report
    from lix.report.paper import SHIPPED
    from pipeline.errors import ConfigError

    if (runs is None) == (ledger is None):
        raise ConfigError("--runs/--ledger", "give one of them")
    if ledger is not None:
        from lix.sweep.profile_run import write_ledger_report

        s = write_ledger_report(ledger, out_dir, paper=None if no_paper else (paper or SHIPPED), plots=plots)
        out.print(f"[green]verdict[/]: {s['totals']['runs']} run(s) of {ledger} -> {out_dir / 'README.md'}",
                  soft_wrap=True)
        return
    if not runs.is_dir():
        from pipeline.errors import DataError

        raise DataError(runs, "runs root not found (run the matrix first: dvc repro or lix sweep)")
    s = write_report(runs, out_dir, plots=plots, shards_root=shards, device=device, cross_root=cross,
                     overhead=overhead, paper=None if no_paper else (paper or SHIPPED))
    if curves is not None:
        from lix.report.curves import write_val_curves

        write_val_curves(runs, curves)
    c = s["counts"]
    out.print(f"[green]report[/]: {c['finished']} finished, {c['failed']} failed, {c['missing']} missing run(s) "
              f"over {len(s['datasets'])} dataset(s) -> {out_dir / 'README.md'}", soft_wrap=True)
