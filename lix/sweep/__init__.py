"""``lix sweep``: the DVC pipeline's stages in parallel, on this machine or a Slurm cluster,
failures isolated, then the report.

DVC runs one stage at a time (``dvc repro`` has no ``-j``), but it documents running independent
stages as parallel ``dvc repro`` processes: each releases the repository lock while its command
runs (https://dvc.org/doc/command-reference/repro#parallel-stage-execution). This package is
the scheduler for that: it reads the stage graph from DVC, asks DVC once which stages are out
of date (``dvc status``; :mod:`lix.sweep.plan`), and runs those as ``dvc repro --single-item
<stage>`` (:mod:`lix.sweep.runner`), each as soon as everything upstream of it has finished, on
an executor (:mod:`lix.sweep.executors`): local processes, ``jobs`` at a time, or one Slurm job
per stage through submitit. So everything DVC gives a single ``dvc repro`` holds per stage:
finished runs are recorded in dvc.lock and cached (an interrupted sweep resumes where it
stopped, a rerun is a no-op), and a parameter change reruns what it affects.

* **Failures are isolated**: a stage that fails is listed with its log; stages downstream of it
  are skipped; every other stage still runs (a failed run leaves ``failed.json`` in its run
  directory, so the report shows it as failed). The report stage runs last whatever failed.
  The exit status is 1 when anything failed.
* **Resources**: locally, each of the ``jobs`` processes gets ``cores // jobs`` threads
  (``OMP_NUM_THREADS``; not overridden when set), and with GPUs job slot k runs on GPU k mod n
  (``CUDA_VISIBLE_DEVICES``). On Slurm, ``sweep.slurm`` says what each job asks for. Several
  GPUs for *one* run is torchrun's job (README, :mod:`lix.sweep.launch`).
* **Stopping**: Ctrl-C, SIGTERM or SIGHUP stops every running stage (:mod:`lix.sweep.processes`)
  or cancels every submitted job, so that no stage command outlives the sweep and races the
  next one over its outputs.
* **Status**: ``data/logs/sweep/jobs.json`` (:mod:`lix.sweep.record`) holds every stage's state;
  :func:`status` lists it with what the cluster says now, :func:`cancel` cancels what is left.
* ``--filter GLOB`` restricts the sweep to matching stages (plus what they need); ``--pull``
  (``dvc repro --pull``) restores run-cached stages other machines pushed with ``dvc push --run-cache``
  (the preparation but depth; run directories persist, so they travel as dvc.lock plus dvc pull).

Logs: ``<repo>/data/logs/sweep/<stage>.log`` (the stage's full output; a lock retry overwrites it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lix.config_slurm import SlurmConfig
from lix.sweep.executors import EXECUTORS, live_state
from lix.sweep.params import set_params
from lix.sweep.plan import REPORT_STAGE, Plan, out_of_date, plan, stage_graph, stages_reading
from lix.sweep.processes import LOCK_ERROR, slot_env
from lix.sweep.record import SweepRecord
from lix.sweep.runner import Outcome, execute
from pipeline.errors import ConfigError

__all__ = ["EXECUTORS", "LOCK_ERROR", "REPORT_STAGE", "Outcome", "Plan", "cancel", "execute", "log_dir_of",
           "out_of_date", "plan", "run_plan", "set_params", "slot_env", "stage_graph", "stages_reading", "status",
           "sweep"]


def log_dir_of(repo_dir: str | Path) -> Path:
    return Path(repo_dir) / "data" / "logs" / "sweep"


def make_executor(name: str, repo_dir: str | Path, jobs: int, *, log_dir: str | Path | None = None,
                  dvc: list[str] | None = None, repro_args: tuple[str, ...] = (), slurm: SlurmConfig | None = None,
                  argv: dict[str, list[str]] | None = None):
    """The executor ``name`` of :data:`EXECUTORS` (ConfigError naming ``--executor`` otherwise);
    ``argv``: stage -> command, for stages that are not DVC stages (a profile's runs)."""
    if name not in EXECUTORS:
        raise ConfigError("--executor", f"unknown executor {name!r}; known: {list(EXECUTORS)}")
    cls = EXECUTORS[name]
    if name == "local" and jobs < 1:
        raise ConfigError("--jobs", f"must be >= 1 with the local executor, got {jobs}")
    return cls(repo_dir=Path(repo_dir), log_dir=Path(log_dir) if log_dir else log_dir_of(repo_dir), jobs=jobs,
               dvc=dvc, repro_args=tuple(repro_args), slurm=slurm, argv=argv)


def run_plan(p: Plan, repo_dir: str | Path = ".", jobs: int = 1, *, log_dir: str | Path | None = None,
             dvc: list[str] | None = None, on_event: Callable[[str, str, str], None] | None = None,
             lock_retries: int = 120, poll_s: float = 0.2, repro_args: tuple[str, ...] = (),
             executor: str = "local", slurm: SlurmConfig | None = None, record: bool = True) -> Outcome:
    """Run the stages of ``p.todo`` on ``executor``, ``jobs`` at a time (0: no limit; see the
    package docstring). ``on_event(kind, stage, detail)`` with kind start | adopt | done | failed
    | skipped | cancelled. ``dvc``: the argv of ``dvc`` (default ``python -m dvc``);
    ``repro_args`` go to every ``dvc repro`` (e.g. ``("--pull",)``). ``record``: keep
    ``<log_dir>/jobs.json`` up to date (:mod:`lix.sweep.record`)."""
    log_dir = Path(log_dir) if log_dir else log_dir_of(repo_dir)
    ex = make_executor(executor, repo_dir, jobs, log_dir=log_dir, dvc=dvc, repro_args=repro_args, slurm=slurm)
    rec = SweepRecord(log_dir / "jobs.json") if record else None
    return execute(p, ex, jobs, on_event=on_event, record=rec, lock_retries=lock_retries, poll_s=poll_s)


def sweep(repo_dir: str | Path = ".", jobs: int = 1, filters: list[str] | None = None, report: bool = True,
          dry: bool = False, on_event: Callable[[str, str, str], None] | None = None,
          pull: bool = False, would_change: list[str] | None = None, executor: str = "local",
          slurm: SlurmConfig | None = None) -> tuple[Plan, Outcome | None]:
    """Plan and (unless ``dry``) run the pipeline of ``repo_dir``: see the package docstring.
    ``pull``: ``dvc repro --pull``, so that a run-cached stage (the preparation but depth)
    finished on another machine and pushed with its run cache is restored from the default
    remote instead of run again. ``would_change``:
    params keys a dry run treats as changed (``--dry -S``, which leaves params.yaml alone)."""
    order, upstream = stage_graph(repo_dir)
    changed = out_of_date(repo_dir)
    if would_change:
        changed |= stages_reading(would_change, repo_dir)
    p = plan(order, upstream, changed, filters, report)
    if dry:
        return p, None
    return p, run_plan(p, repo_dir, jobs, on_event=on_event, repro_args=("--pull",) if pull else (),
                       executor=executor, slurm=slurm)


def status(repo_dir: str | Path = ".", log_dir: str | Path | None = None) -> tuple[dict, list[dict]]:
    """(the record's header, one row per stage: stage, state, job, log), the state of a submitted
    job as its executor says now (queued, running, or how it ended when the sweep that submitted
    it is gone)."""
    data = SweepRecord.read((Path(log_dir) if log_dir else log_dir_of(repo_dir)) / "jobs.json")
    rows = []
    for stage, e in sorted(data.get("stages", {}).items()):
        state = e.get("state", "unknown")
        if state == "submitted":
            state = live_state(e)
            state = {"done": "done", "ended": "ended"}.get(state, state)
        rows.append({"stage": stage, "state": state, "job": e.get("job_id") or e.get("pid") or "",
                     "since": e.get("since", ""), "log": e.get("log", ""),
                     "upstream_failed": e.get("upstream_failed", "")})
    return {k: v for k, v in data.items() if k != "stages"}, rows


def cancel(repo_dir: str | Path = ".", log_dir: str | Path | None = None) -> list[str]:
    """Cancel the jobs the record lists as still queued or running (a sweep that is gone left
    them): ``scancel`` on Slurm, SIGINT to a local job's process group. The stages cancelled."""
    import os
    import signal
    import subprocess

    log_dir = Path(log_dir) if log_dir else log_dir_of(repo_dir)
    rec = SweepRecord(log_dir / "jobs.json")
    done = []
    for stage, e in sorted(rec.data.get("stages", {}).items()):
        if e.get("state") != "submitted" or live_state(e) not in ("queued", "running"):
            continue
        if e.get("executor") == "slurm":
            subprocess.call(["scancel", str(e["job_id"])])
        else:
            pid = int(e.get("job_id") or e["pid"])
            try:
                os.killpg(pid, signal.SIGINT) if e.get("executor") == "local" else os.kill(pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
        rec.on_event("cancelled", stage, e.get("log", ""))
        done.append(stage)
    return done
