"""The sweep's scheduler: the stages of a plan in dependency order, each started as soon as
everything upstream of it has finished, at most ``jobs`` at a time, on an executor (a local
process per stage, or a submitit job per stage: ``lix.sweep.executors``).

* **Failures are isolated**: a stage that fails is listed with its log; stages downstream of it
  are skipped; every other stage still runs. The report stage runs last whatever failed (over
  the runs that exist).
* **Lock contention** (a local ``dvc repro`` that found the repository lock taken) starts the
  stage again after a short, random wait; a submitted job retries inside itself.
* **Stopping**: Ctrl-C, SIGTERM or SIGHUP stops (cancels) every running stage through the
  executor, records it, and re-raises.
* **The record** (``record``, a :class:`~lix.sweep.record.SweepRecord`): every stage's state as
  it changes (waiting, submitted with its job id, done, failed, skipped, cancelled), so that
  ``lix sweep --status`` can list them from another shell, and a restarted sweep can adopt the
  jobs that are still queued or running on a cluster instead of submitting them twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from lix.sweep.plan import REPORT_STAGE, Plan
from lix.sweep.processes import StopOnSignals
from pipeline.errors import ConfigError


class Handle(Protocol):
    """One started stage: ``stage``, ``log`` (its output), ``info`` (what the record keeps:
    job id, executor, paths)."""

    stage: str
    log: Path
    info: dict

    def poll(self) -> int | None:
        """The stage's exit status once it has finished (0 = done), else None."""

    def lock_contention(self) -> bool:
        """Whether a failure was DVC's repository lock taken (start it again)."""


class Executor(Protocol):
    name: str

    def start(self, stage: str, slot: int) -> Handle:
        """Start ``stage`` in job slot ``slot`` (0 <= slot < jobs, or any int when unlimited)."""

    def adopt(self, stage: str, entry: dict) -> Handle | None:
        """A handle on the job an earlier sweep recorded for ``stage`` when it is still queued or
        running (so it is not started twice), else None."""

    def stop(self, handles: list[Handle]) -> None:
        """Stop (cancel) ``handles`` and wait until nothing of them runs."""


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # stage -> log path
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> the failed stage upstream
    up_to_date: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # stages whose job an earlier sweep had started

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def execute(p: Plan, executor: Executor, jobs: int = 1, *, on_event: Callable[[str, str, str], None] | None = None,
            record=None, lock_retries: int = 120, poll_s: float = 0.2) -> Outcome:
    """Run the stages of ``p.todo`` on ``executor`` (see the module docstring), ``jobs`` at a time
    (0: no limit, for a cluster's queue). ``on_event(kind, stage, detail)`` with kind start |
    adopt | done | failed | skipped | cancelled. Ctrl-C, SIGTERM or SIGHUP stops every running
    stage and re-raises."""
    if jobs < 0:
        raise ConfigError("--jobs", f"must be >= 0 (0: no limit), got {jobs}")
    events = [f for f in (on_event, record.on_event if record is not None else None) if f]

    def event(kind: str, stage: str, detail: str, handle: Handle | None = None) -> None:
        if record is not None and handle is not None:
            record.set_job(stage, handle.info)
        for f in events:
            f(kind, stage, detail)

    running: dict[int, Handle] = {}
    with StopOnSignals():  # also while stopping: a second SIGTERM then skips the grace period
        try:
            return _loop(p, executor, jobs, event, record, lock_retries, poll_s, running)
        except BaseException:
            stopping = list(running.values())
            executor.stop(stopping)
            for h in stopping:
                event("cancelled", h.stage, str(h.log))
            raise


def _loop(p: Plan, executor: Executor, jobs: int, event, record, lock_retries: int, poll_s: float,
          running: dict[int, Handle]) -> Outcome:
    """execute's loop; ``running`` (slot -> handle) is the caller's, so that it can stop them."""
    out = Outcome(up_to_date=[s for s in p.order if s not in p.todo])
    pending = [s for s in p.order if s in p.todo]
    # the report runs last, over whatever finished, even when something upstream failed
    report_last = REPORT_STAGE in pending
    if report_last:
        pending.remove(REPORT_STAGE)
    finished: set[str] = set(out.up_to_date)
    blocked_by: dict[str, str] = {}
    retries: dict[str, int] = {}
    not_before: dict[str, float] = {}
    slots = iter(range(10**9))  # unlimited jobs: every start its own slot number

    adopted: dict[str, Handle] = {}  # jobs an earlier sweep started that are still queued or running
    for s in pending if record is not None else ():
        entry = record.entry(s)
        if entry.get("executor") == executor.name and (handle := executor.adopt(s, entry)) is not None:
            adopted[s] = handle
    if record is not None:
        record.begin(executor.name, [*pending, *([REPORT_STAGE] if report_last else [])])
    for i, (s, handle) in enumerate(adopted.items()):
        pending.remove(s)
        running[-1 - i] = handle  # outside the slots: they count towards -j, but take no slot's GPU
        out.adopted.append(s)
        event("adopt", s, str(handle.log), handle)

    while pending or running:
        for slot, h in list(running.items()):
            rc = h.poll()
            if rc is None:
                continue
            del running[slot]
            if rc != 0 and h.lock_contention() and retries.get(h.stage, 0) < lock_retries:
                retries[h.stage] = retries.get(h.stage, 0) + 1
                not_before[h.stage] = time.monotonic() + random.uniform(0.5, 2.0)
                pending.insert(0, h.stage)
            elif rc != 0:
                out.failed[h.stage] = str(h.log)
                event("failed", h.stage, str(h.log), h)
            else:
                finished.add(h.stage)
                out.ran.append(h.stage)
                event("done", h.stage, str(h.log), h)
        # anything downstream of a failure is skipped
        for s in list(pending):
            bad = next((u for u in p.upstream.get(s, ()) if u in out.failed or u in out.skipped), None)
            if bad is not None:
                pending.remove(s)
                root = blocked_by.get(bad, bad)
                blocked_by[s] = root
                out.skipped[s] = root
                event("skipped", s, root)
        now = time.monotonic()
        for s in list(pending):
            if jobs and len(running) >= jobs:
                break
            if not_before.get(s, 0.0) > now or not p.upstream.get(s, set()) <= finished:
                continue
            pending.remove(s)
            slot = next(k for k in range(jobs) if k not in running) if jobs else next(slots)
            running[slot] = h = executor.start(s, slot)
            event("start", s, str(h.log), h)
        if running or pending:
            time.sleep(poll_s)
    if report_last:
        running[0] = h = executor.start(REPORT_STAGE, 0)
        event("start", REPORT_STAGE, str(h.log), h)
        while (rc := h.poll()) is None:
            time.sleep(poll_s)
        del running[0]
        if rc == 0:
            out.ran.append(REPORT_STAGE)
            event("done", REPORT_STAGE, str(h.log), h)
        else:
            out.failed[REPORT_STAGE] = str(h.log)
            event("failed", REPORT_STAGE, str(h.log), h)
    return out
