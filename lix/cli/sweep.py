"""``lix sweep``: thin over lix/sweep.py (parse, call, report)."""

from __future__ import annotations

from pathlib import Path

import typer

from lix.cli.common import command, err, out

sweep_app = typer.Typer(help="The experiment matrix: the DVC pipeline's stages in parallel, then the report.")


@command(sweep_app, "sweep")
def sweep_cmd(
    jobs: int = typer.Option(1, "--jobs", "-j", help="Stages run at once (CPU threads are shared among them; "
                                                     "with GPUs, one GPU per job slot)."),
    filters: list[str] = typer.Option(None, "--filter", "-f", help="Only stages matching this glob (and what "
                                      "they need), e.g. 'student@*-lix-*'; repeatable."),
    report: bool = typer.Option(True, "--report/--no-report", help="Run the report stage last."),
    dry: bool = typer.Option(False, "--dry", help="Print what would run, run nothing (params.yaml is not written, "
                             "-S included)."),
    pull: bool = typer.Option(False, "--pull", help="Restore runs finished on other machines (pushed with `dvc push "
                              "--run-cache`) from the default DVC remote instead of running them (dvc repro --pull)."),
    repo: Path = typer.Option(Path("."), "--repo", help="The DVC repository (default: here)."),
    set_: list[str] = typer.Option(None, "--set-param", "-S", help="Set a params.yaml key first, as dvc exp run -S "
                                   "(e.g. -S 'sweep.seeds=[0,1,2]'); validated, comments kept; repeatable."),
):
    """Run every out-of-date stage of dvc.yaml (preparation, teachers, students, ablations, report),
    `-j` at a time; failed runs are reported and do not stop the others; rerunning resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lix.config import load_params
    from lix.sweep import set_params, sweep
    from lix.validate import check_params

    changed: dict = {}
    if set_:  # validated as a whole (the registries included) before the file is touched
        changed = set_params(repo / "params.yaml", set_, write=not dry)
        for key, value in changed.items():
            out.print(f"{'would set' if dry else 'params.yaml:'} {key} = {value!r}", highlight=False)
    else:
        check_params(load_params(repo / "params.yaml"))
    if dry:
        p, _ = sweep(repo, jobs, filters or None, report, dry=True, would_change=list(changed))
        for s in p.order:
            out.print(f"{'run' if s in p.todo else 'up to date':>10}  {s}", highlight=False)
        out.print(f"{len(p.todo)} of {len(p.order)} stage(s) would run")
        if any(k == "datasets" or k.startswith("sweep.") for k in changed):
            out.print("[yellow]note:[/] the plan lists the current matrix; the -S values change the matrix "
                      "itself (params.yaml is not written with --dry)", highlight=False)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=out, transient=False) as bar:
        task = bar.add_task("sweep", total=None)

        def on_event(kind: str, stage: str, detail: str) -> None:
            if kind == "start":
                bar.console.print(f"[cyan]start[/]   {stage}", highlight=False)
                return
            colour = {"done": "green", "failed": "bold red", "skipped": "yellow"}[kind]
            note = {"failed": f" (log {detail})", "skipped": f" (upstream {detail} failed)"}.get(kind, "")
            bar.console.print(f"[{colour}]{kind:<7}[/] {stage}{note}", highlight=False)
            bar.advance(task)

        p, o = sweep(repo, jobs, filters or None, report, on_event=on_event, pull=pull)
        bar.update(task, total=len(p.todo), completed=len(o.ran) + len(o.failed) + len(o.skipped))
    out.print(f"[green]{len(o.ran)}[/] ran, {len(o.up_to_date)} up to date, [red]{len(o.failed)}[/] failed, "
              f"{len(o.skipped)} skipped (upstream failed)")
    if o.failed:
        for stage, log in o.failed.items():
            err.print(f"[bold red]failed:[/] {stage}: {Path(log)}", highlight=False)
        raise typer.Exit(1)
