"""Where a sweep's stages run (``lix sweep --executor``):

* ``local``: one ``dvc repro --single-item <stage>`` process per job slot on this machine
  (each its own process group; CPU threads shared among the slots, GPU k mod n for slot k).
* ``slurm``: one Slurm job per stage through submitit, with the resources of ``sweep.slurm``
  (per-stage GPUs, CPUs, memory, time limit, partition, account...). The job runs the same
  ``dvc repro --single-item <stage>`` in the same repository, so the repository (and DVC's cache)
  must be on a filesystem the compute nodes share with the submitting machine. A job that
  reaches its time limit is requeued by submitit and the run resumes from its ``last.pt``.
* ``submitit-local``: the same submitit code path with submitit's local executor (real
  subprocesses on this machine, no cluster): what the tests run, and a way to try a cluster
  configuration before submitting to the queue.

submitit writes each job's own stdout/stderr and pickles under ``<log_dir>/submitit``; the
stage's ``dvc repro`` output goes to ``<log_dir>/<stage>.log`` as with the local executor.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from submitit.helpers import Checkpointable

from lix.config_slurm import SlurmConfig
from lix.sweep.processes import StageProcess, run_to_end, safe_name, slot_env, stop_processes
from pipeline.errors import LixError
from pipeline.registry import Registry

EXECUTORS: Registry = Registry("sweep executor")


def stage_argv(dvc: list[str] | None, repro_args: tuple[str, ...], argv: dict[str, list[str]] | None):
    """stage -> its command: ``argv[stage]`` when given (a profile's runs), else the DVC stage's
    ``dvc repro [repro_args] --single-item <stage>`` (``dvc`` default: this Python's ``-m dvc``)."""
    repro = [*(dvc or [sys.executable, "-m", "dvc"]), "repro", *repro_args]
    if argv is not None:
        return lambda stage: list(argv[stage])
    return lambda stage: [*repro, "--single-item", stage]


# --------------------------------------------------------------------------- local processes
class LocalHandle:
    def __init__(self, proc: StageProcess):
        self.proc, self.stage, self.log = proc, proc.stage, proc.log
        self.info = {"executor": "local", "pid": proc.proc.pid}

    def poll(self) -> int | None:
        return self.proc.poll()

    def lock_contention(self) -> bool:
        return self.proc.lock_contention()


@EXECUTORS.register("local")
class LocalExecutor:
    """Stage processes on this machine, ``jobs`` at a time."""

    name = "local"

    def __init__(self, repo_dir: Path, log_dir: Path, jobs: int, dvc: list[str] | None = None,
                 repro_args: tuple[str, ...] = (), grace_s: float = 30.0, argv: dict[str, list[str]] | None = None,
                 **_):
        self.repo_dir, self.log_dir, self.jobs, self.grace_s = repo_dir, log_dir, jobs, grace_s
        self.argv = stage_argv(dvc, repro_args, argv)

    def start(self, stage: str, slot: int) -> LocalHandle:
        log = self.log_dir / f"{safe_name(stage)}.log"
        jobs = 1 if stage == "report" else self.jobs  # the report runs alone, after everything
        return LocalHandle(StageProcess(stage, self.argv(stage), self.repo_dir, log, slot_env(slot, jobs)))

    def adopt(self, stage: str, entry: dict) -> None:
        """A local process dies with the sweep that started it (Ctrl-C, SIGTERM, SIGHUP), except
        when that sweep was SIGKILLed: then refuse to start the stage twice."""
        pid = entry.get("pid") if entry.get("state") == "submitted" else None
        if pid and _pid_runs_stage(int(pid)):
            raise LixError(f"stage {stage} is still running as process {pid}, started by an earlier sweep "
                           f"that was killed; wait for it or stop it (kill -INT -- -{pid}), then rerun")
        return None

    def stop(self, handles: list[LocalHandle]) -> None:
        stop_processes([h.proc for h in handles], grace_s=self.grace_s)


def _pid_runs_stage(pid: int) -> bool:
    """Whether process ``pid`` is a stage's command: a ``dvc repro`` or a profile's ``lix.cli`` run."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "dvc" in cmd or "lix.cli" in cmd


# --------------------------------------------------------------------------- submitit jobs
class StageJob(Checkpointable):
    """The callable submitted per stage: ``dvc repro --single-item <stage>`` in the repository,
    retried on lock contention, raising when it fails (so Slurm records the job as FAILED). A
    submitit Checkpointable: a job stopped at its time limit or preempted is requeued as it is,
    and the stage's ``dvc repro`` then resumes the run from its ``last.pt``."""

    def __init__(self, stage: str, repo_dir: str, log: str, argv: list[str], threads: int):
        self.stage, self.repo_dir, self.log, self.argv, self.threads = stage, repo_dir, log, list(argv), threads

    def __call__(self) -> str:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", str(self.threads)))
        rc = run_to_end(self.stage, self.argv, Path(self.repo_dir), Path(self.log), env)
        if rc != 0:
            raise RuntimeError(f"stage {self.stage} failed (dvc repro exit status {rc}); its log: {self.log}")
        return self.stage


class SubmititHandle:
    def __init__(self, job, stage: str, log: Path, executor: str, folder: Path):
        self.job, self.stage, self.log = job, stage, log
        self.info = {"executor": executor, "job_id": str(job.job_id), "folder": str(folder),
                     "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        return 0 if self.job.exception() is None else 1

    def lock_contention(self) -> bool:
        return False  # retried inside the job


class SubmititExecutor:
    """One submitit job per stage (``cluster``: ``slurm`` or ``local``)."""

    cluster = "slurm"

    def __init__(self, repo_dir: Path, log_dir: Path, jobs: int, dvc: list[str] | None = None,
                 repro_args: tuple[str, ...] = (), slurm: SlurmConfig | None = None,
                 argv: dict[str, list[str]] | None = None, **_):
        import submitit

        self.repo_dir, self.log_dir, self.slurm = repo_dir.resolve(), log_dir.resolve(), slurm or SlurmConfig()
        self.argv = stage_argv(dvc, repro_args, argv)
        self.folder = self.log_dir / "submitit"
        self.threads = self.slurm.cpus_per_job if self.cluster == "slurm" else max(1, (os.cpu_count() or 1)
                                                                                 // max(1, jobs or 1))
        # two: stages with GPUs, and the CPU-only ones (whose jobs name no GPU at all)
        self.executors = {gpus: self._executor(submitit, gpus) for gpus in {self.slurm.gpus_per_job, 0}}

    def _executor(self, submitit, gpus: int):
        try:
            ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster,
                                       slurm_max_num_timeout=self.slurm.requeue)
        except RuntimeError as e:  # submitit: no srun on PATH
            raise LixError(f"--executor {self.name}: {e} (run lix sweep on a Slurm login node; "
                           f"--executor submitit-local tries the same code path on this machine)") from None
        ex.update_parameters(**submitit_parameters(self.slurm, gpus))
        return ex

    def start(self, stage: str, slot: int) -> SubmititHandle:
        gpus = 0 if any(fnmatch.fnmatchcase(stage, g) for g in self.slurm.cpu_only) else self.slurm.gpus_per_job
        executor = self.executors[gpus]
        executor.update_parameters(name=f"lix-{safe_name(stage)}")
        log = self.log_dir / f"{safe_name(stage)}.log"
        job = executor.submit(StageJob(stage, str(self.repo_dir), str(log), self.argv(stage), self.threads))
        return SubmititHandle(job, stage, log, self.name, self.folder)

    def adopt(self, stage: str, entry: dict) -> SubmititHandle | None:
        """The recorded job when Slurm still has it queued or running (``submitit-local`` jobs
        cannot be re-attached: refused as with the local executor)."""
        if entry.get("state") != "submitted" or not entry.get("job_id"):
            return None
        state = live_state(entry)
        if state not in ("queued", "running"):
            return None
        if self.cluster != "slurm":
            raise LixError(f"stage {stage} is still running as submitit job {entry['job_id']} of an earlier "
                           f"sweep; wait for it or cancel it (lix sweep --cancel --executor {self.name})")
        from submitit.slurm.slurm import SlurmJob

        job = SlurmJob(folder=Path(entry["folder"]) / "%j", job_id=entry["job_id"])
        return SubmititHandle(job, stage, Path(entry.get("log") or self.log_dir / f"{safe_name(stage)}.log"),
                              self.name, self.folder)

    def stop(self, handles: list[SubmititHandle]) -> None:
        """Cancel every job (scancel; SIGINT to a local job, whose task stops its stage's process
        group) and wait until none of them runs."""
        import time

        for h in handles:
            h.job.cancel(check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(live_state(h.info) in ("queued", "running") for h in handles):
            time.sleep(0.2)


@EXECUTORS.register("slurm")
class SlurmExecutor(SubmititExecutor):
    name = cluster = "slurm"


@EXECUTORS.register("submitit-local")
class SubmititLocalExecutor(SubmititExecutor):
    name, cluster = "submitit-local", "local"


def submitit_parameters(c: SlurmConfig, gpus: int) -> dict:
    """submitit's ``update_parameters`` for ``sweep.slurm``: one task on one node per job, with
    ``gpus`` GPUs (none named when 0); the ``slurm_*`` keys are ignored by the local cluster."""
    params = {"nodes": 1, "tasks_per_node": 1, "cpus_per_task": c.cpus_per_job, "mem_gb": c.mem_gb,
              "timeout_min": c.time_min, "slurm_setup": list(c.setup), "slurm_additional_parameters": dict(c.extra)}
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(c, key):
            params[f"slurm_{key}"] = getattr(c, key)
    return params


# --------------------------------------------------------------------------- live state
_SLURM_STATES = {"PENDING": "queued", "REQUEUED": "queued", "CONFIGURING": "queued", "REQUEUE_HOLD": "queued",
                 "RESV_DEL_HOLD": "queued", "SUSPENDED": "queued", "RUNNING": "running", "COMPLETING": "running",
                 "STAGE_OUT": "running", "SIGNALING": "running", "RESIZING": "running", "COMPLETED": "done"}


def live_state(entry: dict) -> str:
    """What the cluster (or this machine) says of a recorded job now: queued | running | done |
    failed | cancelled | ended (a local job whose process is gone) | unknown."""
    executor, job_id = entry.get("executor"), entry.get("job_id") or entry.get("pid")
    if not job_id:
        return "unknown"
    if executor == "slurm":
        from submitit.slurm.slurm import SlurmJob

        state = SlurmJob(folder=Path(entry.get("folder", ".")) / "%j", job_id=str(job_id)).watcher.get_state(
            str(job_id), mode="force").split()[0]
        if state.startswith("CANCELLED"):
            return "cancelled"
        return _SLURM_STATES.get(state, "unknown" if state == "UNKNOWN" else "failed")
    if executor == "submitit-local":
        return "running" if _alive(int(job_id)) else "ended"
    return "running" if _pid_runs_stage(int(job_id)) else "ended"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) no longer runs
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
