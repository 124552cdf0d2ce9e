"""A one-node stand-in for Slurm's commands, enough for submitit's Slurm executor: ``sbatch``
(runs the batch script in the background, a job id per submission), ``srun`` (runs its command
with the task's output files), ``sacct`` (the states), ``scancel`` (stops the job and every
process it started, as Slurm's cgroup does, whatever sessions they made). State lives in
``$FAKE_SLURM_DIR``. :func:`install` writes the executables into a directory for PATH.

Real Slurm differs in what the tests do not rely on: no queue (a job runs at once, after a
``PENDING`` of ``$FAKE_SLURM_PENDING_S`` seconds), no resources, one node."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel", "scontrol")


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the commands into ``bin_dir``; the environment variables that put them first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    # job ids unique across installs, as a cluster's are (submitit caches finished jobs' states by id)
    (state_dir / "counter").write_text(str(random.randrange(10**5, 10**6) * 1000))
    for cmd in COMMANDS:
        exe = bin_dir / cmd
        exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {cmd} \"$@\"\n")
        exe.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}


def _dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _state(job: str, value: str | None = None) -> str:
    f = _dir() / f"{job}.state"
    if value is not None:
        tmp = f.with_suffix(".tmp")
        tmp.write_text(value)
        os.replace(tmp, f)
    return f.read_text() if f.exists() else ""


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    counter = _dir() / "counter"
    job = str(int(counter.read_text()) + 1)
    counter.write_text(job)
    _state(job, "PENDING")
    subprocess.Popen([sys.executable, __file__, "_run", job, str(script)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job}")
    return 0


def _run(job: str, script: str) -> int:
    """The job: its batch script under bash with Slurm's environment; the final state after."""
    (_dir() / f"{job}.pid").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FAKE_SLURM_PENDING_S", "0.2")))
    if _state(job) != "PENDING":  # cancelled while pending
        return 0
    text = Path(script).read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, flags=re.M))
    env = {**os.environ, "SLURM_JOB_ID": job, "SLURM_JOBID": job, "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_CPUS_PER_TASK": opts.get("cpus-per-task", "1"), "SLURM_JOB_NAME": opts.get("job-name", "")}
    out = opts.get("output", os.devnull).replace("%j", job)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    requeue = _dir() / f"{job}.requeue"
    while True:  # a requeued job (scontrol requeue) runs again, with the same id
        _state(job, "RUNNING")
        with open(out, "a") as fh:
            rc = subprocess.call(["bash", script], env=env, stdout=fh, stderr=subprocess.STDOUT)
        if not requeue.exists() or _state(job).startswith("CANCELLED"):
            break
        requeue.unlink()
        _state(job, "REQUEUED")
    if not _state(job).startswith("CANCELLED"):
        _state(job, "COMPLETED" if rc == 0 else "FAILED")
    return 0


def srun(args: list[str]) -> int:
    files, i = {}, 0
    while i < len(args) and args[i].startswith("--"):
        if args[i] in ("--output", "--error"):
            files[args[i][2:]] = args[i + 1].replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0")
            i += 2
        else:
            i += 1
    out = open(files.get("output", os.devnull), "a")
    err = open(files.get("error", os.devnull), "a")
    task = subprocess.Popen(args[i:], stdout=out, stderr=err)
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):  # srun forwards signals to its tasks
        signal.signal(sig, lambda signum, _frame: task.send_signal(signum))
    return task.wait()


def sacct(args: list[str]) -> int:
    jobs = [args[k + 1] for k, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        if _state(job):
            print(f"{job}|{_state(job)}|localhost")
    return 0


def scontrol(args: list[str]) -> int:
    """``scontrol show hostnames <list>``: the one node; ``scontrol requeue <job>``: the job runs
    again once its batch script has ended (submitit's job exits right after asking)."""
    if args[:2] == ["show", "hostnames"]:
        print("localhost")
        return 0
    if args[:1] == ["requeue"]:
        (_dir() / f"{args[1]}.requeue").write_text("x")
        return 0
    return 1


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            ppid = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, stack = [], [root]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, ()))
    return found


def scancel(args: list[str]) -> int:
    job = next(a for a in args if not a.startswith("-") and not a.startswith("SIG") and not a.isupper())
    if "--signal" in args:  # a signal to the job's task (the submitit process), e.g. USR2: preemption
        sig = args[args.index("--signal") + 1]
        for p in _descendants(int((_dir() / f"{job}.pid").read_text())):
            try:
                cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
                if b"submitit.core._submit" in cmdline and b"fake_slurm" not in cmdline:
                    os.kill(p, getattr(signal, sig if sig.startswith("SIG") else f"SIG{sig}"))
            except (OSError, AttributeError):
                pass
        return 0
    state = _state(job)
    if not state or state in ("COMPLETED", "FAILED") or state.startswith("CANCELLED"):
        return 0
    _state(job, "CANCELLED by 0")
    pid_file = _dir() / f"{job}.pid"
    if not pid_file.exists():
        return 0
    procs = _descendants(int(pid_file.read_text()))
    for sig in (signal.SIGTERM, signal.SIGKILL):  # Slurm: SIGTERM, then SIGKILL after KillWait
        for p in procs:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    name, rest = sys.argv[1], sys.argv[2:]
    sys.exit(_run(*rest) if name == "_run" else globals()[name](rest))
