"""One stage as one ``dvc repro --single-item <stage>`` process, and how to stop it.

Each stage process runs in its own process group (its own session), so that stopping it reaches
the stage's command too: DVC's children would otherwise outlive a terminated ``dvc``. Stopping
is Ctrl-C's semantics first (SIGINT to the group: DVC does not record the stage, the trainer
stops), then SIGKILL to what is left after a grace period. DVC takes the repository lock briefly
before and after each command; a process that finds it taken fails with "Unable to acquire lock"
and is started again after a short, random wait (DVC's documented behaviour, not a failure).

Used by the local executor (many processes, one per job slot) and, inside a submitted job, by
the submitit executors (:func:`run_to_end`: one process, lock retries, stopped on SIGINT).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

LOCK_ERROR = "Unable to acquire lock"

_POSIX = os.name == "posix"
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: a CPU machine
        return 0


def slot_env(slot: int, jobs: int, base: dict[str, str] | None = None, gpus: int | None = None) -> dict[str, str]:
    """The environment of job slot ``slot``: its GPU (round-robin) or its share of the CPU threads."""
    env = dict(os.environ if base is None else base)
    gpus = _gpu_count() if gpus is None else gpus
    if gpus > 0 and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    return env


def safe_name(stage: str) -> str:
    """``stage`` as a file name (``student@vkitti2-mfnet-lix-0`` stays as it is)."""
    return "".join(c if c.isalnum() or c in "-_.=~," else "_" for c in stage)


def _sigint_ignored() -> bool:
    return _POSIX and signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _default_sigint() -> None:
    # A sweep started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so would
    # its stages: restore the default in the child so that stopping them with SIGINT works.
    # (preexec_fn, so only then: it is not safe beside threads such as rich's refresher, whose
    # only work in the child would be this one call.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class StageProcess:
    """``argv`` (a ``dvc repro ... <stage>``) in ``cwd``, its own process group, output to ``log``."""

    def __init__(self, stage: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str]):
        self.stage, self.log = stage, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=_POSIX,
                                     preexec_fn=_default_sigint if _sigint_ignored() else None)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None:
            self._fh.close()
        return rc

    def lock_contention(self) -> bool:
        return LOCK_ERROR in self.log.read_text(encoding="utf-8", errors="replace")

    def _signal_group(self, sig: int) -> None:
        """``sig`` to the process group (POSIX); elsewhere SIGINT/SIGKILL become
        terminate()/kill() of the dvc process (there are no process groups to reach)."""
        try:
            if _POSIX:
                os.killpg(self.proc.pid, sig)
            elif sig == signal.SIGINT:
                self.proc.terminate()
            else:
                self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    def group_alive(self) -> bool:
        """Whether anything of the process group is still running (its leader reaped)."""
        if self.proc.poll() is None:
            return True
        if not _POSIX:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def interrupt(self) -> None:
        """SIGINT to the process group (Ctrl-C's semantics, which DVC and the trainer handle)."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to what is left of the group; reap the leader; close the log."""
        self._signal_group(_SIGKILL)
        self.proc.wait()
        self._fh.close()


def stop_processes(procs: list[StageProcess], grace_s: float = 30.0, poll_s: float = 0.1) -> None:
    """Stop ``procs`` and everything they started: SIGINT to every group at once, one shared
    grace period for the groups to end (a stage command may outlive its dvc process), then
    SIGKILL to what is left. A second Ctrl-C (or SIGTERM) during the grace skips to SIGKILL."""
    try:
        for p in procs:
            p.interrupt()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.group_alive() for p in procs):
            time.sleep(poll_s)
    finally:
        for p in procs:
            p.kill()


class StopOnSignals:
    """While active, SIGTERM (a batch scheduler's stop) and SIGHUP (the terminal or SSH session
    closed: the stages run in their own sessions and would not get it) raise KeyboardInterrupt,
    so the runner stops its jobs as on Ctrl-C; signals the process ignores stay ignored. The
    previous handlers are restored on exit. A no-op outside the main thread."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __enter__(self):
        self._old: dict[int, object] = {}
        for sig in self.SIGNALS:
            try:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._raise)
            except ValueError:  # not the main thread
                pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def run_to_end(stage: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str], *, lock_retries: int = 120,
               grace_s: float = 0.5, poll_s: float = 0.2) -> int:
    """Run one stage process to its end, starting it again on lock contention (at most
    ``lock_retries`` times); its exit status. Used inside a submitted job: on KeyboardInterrupt
    (the job cancelled) the process group gets SIGINT, then SIGKILL after ``grace_s``, and the
    interrupt propagates. The grace is short because submitit's local executor kills a
    cancelled job's task one second after interrupting it; on Slurm the job's cgroup ends it all."""
    for attempt in range(lock_retries + 1):
        proc = StageProcess(stage, argv, cwd, log, env)
        try:
            while (rc := proc.poll()) is None:
                time.sleep(poll_s)
        except BaseException:
            stop_processes([proc], grace_s=grace_s)
            raise
        if rc == 0 or not proc.lock_contention() or attempt == lock_retries:
            return rc
        time.sleep(random.uniform(0.5, 2.0))
    return rc  # pragma: no cover - the loop always returns
