"""``lix sweep``: thin over lix/sweep.py (parse, call, report)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lix.cli.common import command, err, out

sweep_app = typer.Typer(help="The experiment matrix: the DVC pipeline's stages in parallel, then the report.")


@command(sweep_app, "sweep")
def sweep_cmd(
    jobs: int = typer.Option(None, "--jobs", "-j", show_default=False,
                             help="Stages run (or queued) at once. Local executor: default 1; CPU threads are "
                                  "shared among them, with GPUs one GPU per job slot. Slurm: default no limit."),
    filters: list[str] = typer.Option(None, "--filter", "-f", help="Only stages matching this glob (and what "
                                      "they need), e.g. 'student@*-lix-*'; repeatable."),
    report: bool = typer.Option(True, "--report/--no-report", help="Run the report stage last."),
    dry: bool = typer.Option(False, "--dry", help="Print what would run, run nothing (params.yaml is not written, "
                             "-S included)."),
    pull: bool = typer.Option(False, "--pull", help="Restore run-cached stages pushed with `dvc push --run-cache` (the "
                              "preparation but depth) from the default DVC remote instead of running them (dvc repro "
                              "--pull). Run directories persist: runs travel as dvc.lock plus dvc push/pull instead."),
    repo: Path = typer.Option(Path("."), "--repo", help="The DVC repository (default: here)."),
    set_: list[str] = typer.Option(None, "--set-param", "-S", help="Set a params.yaml key first, as dvc exp run -S "
                                   "(e.g. -S 'sweep.seeds=[0,1,2]'); validated, comments kept; repeatable."),
    executor: str = typer.Option("local", "--executor", "-e", help="Where stages run: local (processes here), "
                                 "slurm (one job per stage through submitit; sweep.slurm in params.yaml), "
                                 "submitit-local (the slurm code path with submitit's local executor)."),
    slurm_opts: list[str] = typer.Option(None, "--slurm", help="Override a key of sweep.slurm for this sweep, e.g. "
                                         "--slurm partition=gpu --slurm time_min=720; repeatable."),
    show_status: bool = typer.Option(False, "--status", help="List the stages of the last sweep and the state of "
                                     "their jobs (queued, running, done, failed...), then exit."),
    cancel_jobs: bool = typer.Option(False, "--cancel", help="Cancel the jobs of the last sweep that are still "
                                     "queued or running (a sweep that was killed left them), then exit."),
    profile: str = typer.Option(None, "--profile", "-p", help="Run a named profile (lix/sweep/profiles/<name>.yaml, "
                                "or a YAML file) instead of the DVC matrix: the runs its ledger lacks, each "
                                "appended to the ledger as it finishes (e.g. --profile testbed)."),
    rekey: bool = typer.Option(False, "--rekey", help="With --profile: give the ledger's lines this checkout's "
                               "digests where their runs provably train as this checkout would (after an edit "
                               "outside the training code that changed the digests), then exit; with --dry, "
                               "only say which."),
):
    """Run every out-of-date stage of dvc.yaml (preparation, teachers, students, ablations, report),
    `-j` at a time, here or as Slurm jobs; failed runs are reported and do not stop the others;
    rerunning resumes. Ctrl-C stops every running stage (cancels every submitted job)."""
    from lix.config import load_params
    from lix.sweep import EXECUTORS, cancel, set_params, status
    from lix.validate import check_params
    from pipeline.errors import ConfigError

    if executor not in EXECUTORS:
        raise ConfigError("--executor", f"unknown executor {executor!r}; known: {list(EXECUTORS)}")
    if rekey and profile is None:
        raise ConfigError("--rekey", "needs --profile (it rekeys a profile's ledger)")
    if profile is not None:
        if rekey:
            _rekey_profile(profile, repo, dry)
            return
        if set_ or pull:
            raise ConfigError("--profile", "takes no -S or --pull (a profile sets its own keys)")
        if show_status or cancel_jobs:
            from lix.sweep.profile import load_profile

            logs = repo / load_profile(profile).folder / "logs"
            if cancel_jobs:
                stages = cancel(repo, log_dir=logs)
                out.print(f"cancelled {len(stages)} job(s)" + (": " + ", ".join(stages) if stages else ""),
                          highlight=False)
            _print_status(*status(repo, log_dir=logs))
            return
        slurm = _slurm_config(load_params(repo / "params.yaml").sweep.slurm, slurm_opts or [])
        _run_profile(profile, repo, 1 if jobs is None and executor == "local" else (jobs or 0), filters, dry,
                     executor, slurm, report)
        return
    if show_status or cancel_jobs:
        if cancel_jobs:
            stages = cancel(repo)
            out.print(f"cancelled {len(stages)} job(s)" + (": " + ", ".join(stages) if stages else ""),
                      highlight=False)
        _print_status(*status(repo))
        return
    _slurm_config(load_params(repo / "params.yaml").sweep.slurm, slurm_opts or [])  # before -S writes anything
    changed: dict = {}
    if set_:  # validated as a whole (the registries included) before the file is touched
        changed = set_params(repo / "params.yaml", set_, write=not dry)
        for key, value in changed.items():
            out.print(f"{'would set' if dry else 'params.yaml:'} {key} = {value!r}", highlight=False)
        params = load_params(repo / "params.yaml") if not dry else None
    else:
        params = load_params(repo / "params.yaml")
        check_params(params)
    slurm = _slurm_config(params.sweep.slurm if params else load_params(repo / "params.yaml").sweep.slurm,
                          slurm_opts or [])
    if jobs is None:
        jobs = 1 if executor == "local" else 0
    if dry:
        _print_plan(repo, jobs, filters, report, changed)
        return
    _run(repo, jobs, filters, report, pull, executor, slurm)


def _stale_note(stale: int, name: str) -> None:
    if stale:
        out.print(f"[yellow]note:[/] {stale} of these runs are in the ledger under another digest (their training "
                  f"code, config or data changed since); if only code outside the training code changed, "
                  f"`lix sweep --profile {name} --rekey --dry` says which can keep their results", highlight=False)


def _rekey_profile(name: str, repo: Path, dry: bool) -> None:
    import dataclasses

    from lix.sweep.profile import load_profile, write_params
    from lix.sweep.rekey import rekey_ledger

    prof = load_profile(name)
    if not prof.folder.is_absolute():
        prof = dataclasses.replace(prof, folder=repo / prof.folder)
    r = rekey_ledger(prof, write_params(prof, repo / "params.yaml", write=False), repo, write=not dry)
    for stage, why in r.refused.items():
        out.print(f"[yellow]kept[/]     {stage}: {why}", highlight=False)
    verb = "would rekey" if dry else "rekeyed"
    out.print(f"{verb} {len(r.rekeyed)} line(s) of {prof.ledger}; {len(r.current)} already current"
              + (f", {len(r.refused)} kept (their runs would be trained again)" if r.refused else ""), highlight=False)


def _slurm_config(base, overrides: list[str]):
    """``sweep.slurm`` with ``--slurm key=value`` overrides (values read as YAML), validated."""
    import dataclasses

    import yaml

    from lix.config import from_dict
    from pipeline.errors import ConfigError

    values = dataclasses.asdict(base)
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or not key.strip():
            raise ConfigError("--slurm", f"expected <key>=<value>, got {o!r}")
        values[key.strip()] = yaml.safe_load(value)
    return from_dict(type(base), values, "sweep.slurm")


def _print_plan(repo: Path, jobs: int, filters, report: bool, changed: dict) -> None:
    from lix.sweep import sweep

    p, _ = sweep(repo, jobs, filters or None, report, dry=True, would_change=list(changed))
    for s in p.order:
        out.print(f"{'run' if s in p.todo else 'up to date':>10}  {s}", highlight=False)
    out.print(f"{len(p.todo)} of {len(p.order)} stage(s) would run")
    if any(k == "datasets" or k.startswith("sweep.") for k in changed):
        out.print("[yellow]note:[/] the plan lists the current matrix; the -S values change the matrix "
                  "itself (params.yaml is not written with --dry)", highlight=False)


def _run(repo: Path, jobs: int, filters, report: bool, pull: bool, executor: str, slurm) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lix.sweep import sweep

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=out, transient=False) as bar:
        task = bar.add_task("sweep", total=None)

        def on_event(kind: str, stage: str, detail: str) -> None:
            if kind in ("start", "adopt"):
                word = "start" if kind == "start" else "adopted"
                bar.console.print(f"[cyan]{word:<7}[/] {stage}", highlight=False)
                return
            colour = {"done": "green", "failed": "bold red", "skipped": "yellow", "cancelled": "yellow"}[kind]
            note = {"failed": f" (log {detail})", "skipped": f" (upstream {detail} failed)"}.get(kind, "")
            bar.console.print(f"[{colour}]{kind:<7}[/] {stage}{note}", highlight=False)
            if kind != "cancelled":
                bar.advance(task)

        p, o = sweep(repo, jobs, filters or None, report, on_event=on_event, pull=pull, executor=executor,
                     slurm=slurm)
        bar.update(task, total=len(p.todo), completed=len(o.ran) + len(o.failed) + len(o.skipped))
    out.print(f"[green]{len(o.ran)}[/] ran, {len(o.up_to_date)} up to date, [red]{len(o.failed)}[/] failed, "
              f"{len(o.skipped)} skipped (upstream failed)")
    if o.failed:
        for stage, log in o.failed.items():
            err.print(f"[bold red]failed:[/] {stage}: {Path(log)}", highlight=False)
        raise typer.Exit(1)


def _run_profile(name: str, repo: Path, jobs: int, filters, dry: bool, executor: str, slurm, report: bool) -> None:
    from lix.sweep.estimate import describe, estimate, progress
    from lix.sweep.ledger import Ledger
    from lix.sweep.profile import load_profile, runs
    from lix.sweep.profile_run import run_profile

    prof = load_profile(name)
    ledger_file = repo / prof.ledger
    planned = run_profile(prof, repo, jobs, filters=filters or None, dry=True)
    of = {run.stage: run for run in runs(prof)}  # the matrix: stage -> run
    left = {s: (of[s].dataset, of[s].model, of[s].method) for s in planned.todo if s in of}  # runs, not shards
    if dry:
        for s in planned.todo:
            out.print(f"       run  {s}", highlight=False)
        out.print(f"{len(planned.todo)} stage(s) would run; {planned.in_ledger} run(s) of the matrix already in "
                  f"{prof.folder / 'ledger.jsonl'}")
        _stale_note(planned.stale, name)
        if left:
            out.print("estimated: " + describe(estimate(list(left.values()), Ledger(ledger_file).lines), jobs or 1),
                      highlight=False)
        return

    _stale_note(planned.stale, name)
    in_ledger = [planned.in_ledger, len(Ledger(ledger_file).lines)]  # the matrix's runs in it; its lines

    def on_event(kind: str, stage: str, detail: str) -> None:
        colour = {"start": "cyan", "adopt": "cyan", "done": "green", "failed": "bold red", "skipped": "yellow",
                  "cancelled": "yellow"}[kind]
        note = {"failed": f" (log {detail})", "skipped": f" (upstream {detail} failed)"}.get(kind, "")
        out.print(f"[{colour}]{kind:<9}[/] {stage}{note}", highlight=False)
        if stage in left and kind in ("done", "failed", "skipped", "cancelled"):
            left.pop(stage)
            if kind == "done":
                try:
                    lines = Ledger(ledger_file).lines
                    in_ledger[0] += len(lines) - in_ledger[1]  # 0 when the run could not be recorded
                    in_ledger[1] = len(lines)
                    line = progress(in_ledger[0], len(of), list(left.values()), lines, jobs)
                except Exception as e:  # noqa: BLE001 - a progress line must never stop a sweep of many hours
                    line = f"no estimate ({type(e).__name__}: {e})"
                out.print(f"          {time.strftime('%H:%M')} {line}", highlight=False)

    r = run_profile(prof, repo, jobs, executor=executor, slurm=slurm, filters=filters or None, on_event=on_event)
    if report and (prof_ledger := repo / prof.ledger).is_file() and prof_ledger.read_text().strip():
        from lix.report.paper import SHIPPED
        from lix.sweep.profile_run import write_ledger_report

        cmd = f"lix sweep --profile {name} -j {jobs} --executor {executor}"
        write_ledger_report(prof_ledger, repo / prof.folder / "report", paper=SHIPPED, command=cmd)
        out.print(f"verdict so far -> {repo / prof.folder / 'report' / 'README.md'}", highlight=False)
    o = r.outcome
    if o is None:
        out.print(f"nothing to run: the {r.in_ledger} run(s) of profile {prof.name} are in its ledger")
        return
    out.print(f"[green]{len(r.recorded)}[/] run(s) added to {prof.folder / 'ledger.jsonl'} ({r.in_ledger} were "
              f"there), [red]{len(o.failed)}[/] failed, {len(o.skipped)} skipped (upstream failed)")
    for stage, why in r.errors.items():
        err.print(f"[bold red]not recorded:[/] {stage}: {why}", highlight=False)
    for stage, log in o.failed.items():
        err.print(f"[bold red]failed:[/] {stage}: {Path(log)}", highlight=False)
    if o.failed or r.errors:
        raise typer.Exit(1)


_COLOURS = {"done": "green", "running": "cyan", "queued": "blue", "waiting": "dim", "failed": "bold red",
            "skipped": "yellow", "cancelled": "yellow", "ended": "magenta", "unknown": "magenta"}


def _print_status(header: dict, rows: list[dict]) -> None:
    from collections import Counter

    from rich.table import Table

    if not rows:
        out.print("no sweep on record (data/logs/sweep/jobs.json)")
        return
    t = Table(title=f"sweep of {header.get('started', '?')} ({header.get('executor', '?')} executor)")
    for col in ("stage", "state", "job", "since", "log / why"):
        t.add_column(col, overflow="fold")
    for r in rows:
        why = f"upstream {r['upstream_failed']} failed" if r["upstream_failed"] else r["log"]
        t.add_row(r["stage"], f"[{_COLOURS.get(r['state'], 'white')}]{r['state']}[/]", str(r["job"]), r["since"], why)
    out.print(t)
    counts = Counter(r["state"] for r in rows)
    out.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())), highlight=False)


@command(sweep_app, "sbatch")
def sbatch_cmd(
    args: list[str] = typer.Argument(..., help="The lix command to run on every GPU, after `--`, e.g. "
                                     "-- train --dataset kitti --role teacher --out data/runs/kitti/sne_roadseg/..."),
    nodes: int = typer.Option(1, "--nodes", "-N", help="Nodes (one torchrun each)."),
    gpus: int = typer.Option(None, "--gpus", "-g", show_default=False,
                             help="GPUs per node (one process each); default sweep.slurm.gpus_per_job."),
    name: str = typer.Option("lix", "--name", help="The job's name (%x in the log name)."),
    port: int = typer.Option(29500, "--port", help="The rendezvous port on the first node."),
    slurm_opts: list[str] = typer.Option(None, "--slurm", help="Override a key of sweep.slurm, e.g. --slurm "
                                         "partition=gpu; repeatable."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Where sweep.slurm is read."),
    out_file: Path = typer.Option(None, "--out", "-o", help="Write the script here (default: print it)."),
):
    """A Slurm batch script that runs one lix command on several GPUs and nodes (srun + torchrun,
    DDP); submit it with `sbatch`. The job's log goes to data/logs/slurm/<name>-<job id>.out."""
    from lix.config import load_params
    from lix.sweep.launch import sbatch_script
    from pipeline.atomic import write_text

    cfg = _slurm_config(load_params(params).sweep.slurm, slurm_opts or [])
    log = "data/logs/slurm/%x-%j.out"
    text = sbatch_script(list(args), cfg, nodes=nodes, gpus_per_node=gpus, name=name, log=log, port=port)
    Path(log).parent.mkdir(parents=True, exist_ok=True)  # sbatch does not make the log's folder
    if out_file is None:
        typer.echo(text, nl=False)
        return
    write_text(out_file, text)
    out_file.chmod(0o755)
    out.print(f"wrote {out_file}: `sbatch {out_file}` runs `lix {' '.join(args)}` on {nodes} node(s) x "
              f"{gpus or cfg.gpus_per_job} GPU(s)", highlight=False)
