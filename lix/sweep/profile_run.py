"""``lix sweep --profile <name>``: plan a profile's missing runs, run them on an executor, and
append each to the ledger as it finishes (a teacher's weights copied beside it first, before
its students start). See :mod:`lix.sweep.profile` and :mod:`lix.sweep.ledger`."""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lix.config_slurm import SlurmConfig
from lix.sweep.ledger import Ledger, run_key, run_record
from lix.sweep.plan import plan
from lix.sweep.processes import slot_env
from lix.sweep.profile import TEACHER, Profile, Run, load_profile, plan_profile, write_params
from lix.sweep.record import SweepRecord
from lix.sweep.runner import Outcome, execute
from pipeline.errors import LixError


@dataclass
class ProfileOutcome:
    outcome: Outcome | None
    todo: list[str]  # the stages the plan had to run
    recorded: list[str] = field(default_factory=list)  # runs appended to the ledger
    errors: dict[str, str] = field(default_factory=dict)  # stage -> why it could not be recorded
    in_ledger: int = 0  # runs of the matrix already in the ledger before this sweep
    stale: int = 0  # runs to do that the ledger holds under another digest (lix sweep --rekey may keep them)


def run_profile(profile: Profile, repo_dir: str | Path = ".", jobs: int = 1, *, executor: str = "local",
                slurm: SlurmConfig | None = None, filters: list[str] | None = None, dry: bool = False,
                on_event: Callable[[str, str, str], None] | None = None, dvc: list[str] | None = None,
                command_of: Callable[[Run], list[str]] | None = None, poll_s: float = 0.5) -> ProfileOutcome:
    """Run what the ledger of ``profile`` lacks (``filters``: only the runs matching these stage
    globs, e.g. ``'*-0'`` for seed 0); ``dry``: plan only. ``dvc`` / ``command_of``: the commands
    of the preparation and of a run (tests put stand-ins here)."""
    from lix.provenance import code_digest
    from lix.sweep import make_executor

    repo = Path(repo_dir)
    profile = Profile(**{**profile.__dict__, "folder": repo / profile.folder}) if not profile.folder.is_absolute() \
        else profile
    params = write_params(profile, repo / "params.yaml", write=not dry)
    ignore = profile.folder / ".gitignore"
    if not dry and not ignore.is_file():  # git takes the ledger, the teachers, params.yaml; not the runs
        ignore.write_text("runs/\nlogs/\n")
    ledger = Ledger(profile.ledger)
    code = code_digest()
    full, stage_run, argv, dig = plan_profile(profile, params, ledger.digests(), code, dvc)
    if command_of is not None:
        argv.update({s: command_of(r) for s, r in stage_run.items()})
    p = plan(full.order, full.upstream, full.todo, filters, report=False) if filters else full
    recorded = {run_key(ln) for ln in ledger.lines}
    result = ProfileOutcome(None, [s for s in p.order if s in p.todo],
                            in_ledger=sum(1 for d in dig.values() if d in ledger.digests()),
                            stale=sum(dataclasses.astuple(stage_run[s]) in recorded for s in p.todo if s in stage_run))
    if dry or not p.todo:
        return result
    started: dict[str, float] = {}
    threads = (slurm or SlurmConfig()).cpus_per_job if executor == "slurm" else \
        int(slot_env(0, max(1, jobs))["OMP_NUM_THREADS"])

    def hook(kind: str, stage: str, detail: str) -> None:
        if kind == "start":
            started[stage] = time.monotonic()
        if kind == "done" and stage in stage_run:
            try:
                result.recorded.append(_record(profile, stage_run[stage], dig, ledger, code,
                                               time.monotonic() - started.get(stage, time.monotonic()), threads))
            except (LixError, OSError) as e:  # the run finished but cannot be recorded: say which and why
                result.errors[stage] = str(e)
        if on_event is not None:
            on_event(kind, stage, detail)

    log_dir = profile.folder / "logs"
    ex = make_executor(executor, repo, jobs, log_dir=log_dir, slurm=slurm, argv=argv)
    result.outcome = execute(p, ex, jobs, on_event=hook, record=SweepRecord(log_dir / "jobs.json"), poll_s=poll_s)
    return result


def _record(profile: Profile, run: Run, dig: dict[Run, str], ledger: Ledger, code: str, seconds: float,
            threads: int) -> str:
    """Append ``run`` to the ledger; for a teacher, first its weights beside the ledger (its
    students read them from there)."""
    from pipeline.atomic import atomic_path

    run_dir = profile.run_dir(run.dataset, run.model, run.method, run.seed)
    teacher = None if run.method == TEACHER else dig[run.teacher]
    line = run_record(run_dir, digest=dig[run], profile=profile.name, teacher_digest=teacher, code=code,
                      seconds=seconds, threads=threads, run=dataclasses.asdict(run))
    if run.method == TEACHER:
        dst = profile.teacher_file(run.dataset, run.model, run.seed)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(run_dir / "model.safetensors", tmp)
    ledger.append(line)
    return run.stage


def write_ledger_report(ledger: str | Path, out_dir: str | Path, *, paper: str | Path | None = None,
                        plots: bool = True, command: str | None = None) -> dict:
    """The verdict of the ledger file ``ledger`` (lix.sweep.ledger) into ``out_dir``, with the
    paper's figures of ``paper`` (lix.report.paper) beside ours; the rows in the profile's order
    when the ledger's profile is a shipped one."""
    from lix.report.paper import load_paper_figures
    from lix.sweep.diagnostics import diagnostics, diagnostics_markdown
    from lix.verdict.markdown import write_verdict
    from pipeline.atomic import write_json, write_text
    from pipeline.errors import DataError

    if not Path(ledger).is_file():
        raise DataError(Path(ledger), "ledger not found (expected the JSON-lines file a profile's sweep appends "
                                      "to, e.g. data/testbed/ledger.jsonl)")
    lines = Ledger(Path(ledger)).lines
    if not lines:
        raise DataError(Path(ledger), "no runs in the ledger yet")
    name = lines[0].get("profile", "")
    methods = None
    try:
        methods = ["teacher", *load_profile(name).methods]
    except Exception:  # noqa: BLE001 - a ledger of a profile file that is not shipped: ledger order
        pass
    # The diagnostics (and their pictures) first: write_verdict writes README.md and verdict.json,
    # which are then rewritten with the diagnostics added, with nothing that can fail in between.
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    diag = diagnostics(lines, methods)
    diag_md = "\n".join(diagnostics_markdown(diag, out_dir, plots=plots)) + "\n"
    summary = write_verdict(lines, out_dir, paper=load_paper_figures(paper) if paper else None, methods=methods,
                            plots=plots, title=f"The verdict of profile {name}",
                            command=command or f"lix report --ledger {ledger} --out {out_dir}")
    readme = Path(out_dir) / "README.md"
    write_text(readme, readme.read_text() + diag_md)
    summary["diagnostics"] = {ds: {model: {m: {k: v for k, v in c.items() if k != "cka_curves"}  # in the ledger
                                           for m, c in cells.items()} for model, cells in per.items()}
                              for ds, per in diag.items()}
    write_json(Path(out_dir) / "verdict.json", summary, nan_as_null=True)
    return summary
