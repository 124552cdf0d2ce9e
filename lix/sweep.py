"""``lix sweep``: the DVC pipeline's stages in parallel, failures isolated, then the report.

DVC runs one stage at a time (``dvc repro`` has no ``-j``), but it documents running independent
stages as parallel ``dvc repro`` processes: each releases the repository lock while its command
runs (https://dvc.org/doc/command-reference/repro#parallel-stage-execution). This module is the
scheduler for that: it reads the stage graph from DVC, asks DVC once which stages are out of date
(``dvc status``), and runs those as ``dvc repro --single-item <stage>`` subprocesses, at most
``jobs`` at a time, each as soon as everything upstream of it has finished. So everything DVC
gives a single ``dvc repro`` holds per stage: finished runs are recorded in dvc.lock and cached
(an interrupted sweep resumes where it stopped, a rerun is a no-op), and a parameter change
reruns what it affects.

* **Failures are isolated**: a stage that fails is listed with its log; stages downstream of it
  are skipped; every other stage still runs (a failed run leaves ``failed.json`` in its run
  directory, so the report shows it as failed). The report stage runs last whatever failed
  (``--single-item``, over the runs that exist). The exit status is 1 when anything failed.
* **Resources**: on a CPU machine each of the ``jobs`` processes gets ``cores // jobs`` threads
  (``OMP_NUM_THREADS``; not overridden when set); with GPUs, job slot k runs on GPU k mod n
  (``CUDA_VISIBLE_DEVICES``). Several GPUs for *one* run is torchrun's job (README).
* **Lock contention**: DVC takes the repository lock briefly before and after each command; a
  process that finds it taken fails with "Unable to acquire lock" and is retried after a short,
  random wait (this is DVC's documented behaviour, not a failure of the run).
* **Stopping**: Ctrl-C, SIGTERM (a batch scheduler's stop) or SIGHUP stops every running stage
  — each ``dvc repro`` runs in its own process group, which receives SIGINT (as a terminal's
  Ctrl-C would: DVC does not record the stage, the run's command stops), then SIGKILL after one
  shared grace period (at once on a second Ctrl-C) — so no stage command outlives the sweep and
  races the next one over its outputs.
* ``--filter GLOB`` restricts the sweep to matching stages (plus what they need), e.g.
  ``'*-mfnet-*-1'`` for seed 1 — the way to spread one matrix over machines sharing a DVC
  remote; ``--pull`` (``dvc repro --pull``) then restores on one machine what the others
  pushed with ``dvc push --run-cache`` (README).

Logs: ``<repo>/data/logs/sweep/<stage>.log`` (the stage's full output; a lock retry overwrites it).
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.errors import ConfigError, LixError

LOCK_ERROR = "Unable to acquire lock"
REPORT_STAGE = "report"


@dataclass
class Plan:
    """What a sweep will do: ``order`` (topological) stage names, ``upstream`` stage -> the
    stages it needs, ``todo`` the stages to run (out of date, or downstream of one that is)."""

    order: list[str]
    upstream: dict[str, set[str]]
    todo: set[str]


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # stage -> log path
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> the failed stage upstream
    up_to_date: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def set_params(params_path: str | Path, assignments: list[str], write: bool = True) -> dict[str, object]:
    """Apply ``key.path=value`` assignments (value read as YAML, as ``dvc exp run -S``) to
    params.yaml in place, keeping its comments and layout (a ruamel round-trip at ruamel's
    default width, as DVC's own ``-S`` writes: params.yaml is laid out so that the round-trip
    changes only the assigned values; new lists and mappings in flow style like the file's own;
    written atomically). The result is validated as a whole first (lix.config and the
    registries, lix.validate), so a typo or a bad value changes nothing and raises ConfigError
    naming the key. ``write=False`` validates only (``lix sweep --dry``). Returns {key: new value}."""
    import copy
    import io

    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from lix.config import params_from_dict
    from lix.validate import check_params
    from pipeline.atomic import write_text

    parsed: dict[str, object] = {}
    for a in assignments:
        key, eq, value = a.partition("=")
        if not eq or not key.strip():
            raise ConfigError("-S", f"expected <key.path>=<value>, got {a!r}")
        parsed[key.strip()] = yaml.safe_load(value)

    def apply(tree: dict) -> None:
        for key, value in parsed.items():
            node, parts = tree, key.split(".")
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ConfigError(key, f"{'.'.join(parts[:i + 1])} is not a section of {params_path}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(key, f"no such key in {params_path}")
            node[parts[-1]] = value

    path = Path(params_path)
    if not path.is_file():
        from pipeline.errors import DataError

        raise DataError(path, "parameter file not found")
    trial = copy.deepcopy(yaml.safe_load(path.read_text()) or {})
    apply(trial)
    check_params(params_from_dict(trial))  # validate everything before touching the file
    if not write:
        return parsed

    def flow(v):
        if isinstance(v, list):
            seq = CommentedSeq(flow(x) for x in v)
            seq.fa.set_flow_style()
            return seq
        if isinstance(v, dict):
            m = CommentedMap((k, flow(x)) for k, x in v.items())
            m.fa.set_flow_style()
            return m
        return v

    rt = YAML()
    rt.preserve_quotes = True
    data = rt.load(path.read_text())
    parsed_flow = {k: flow(v) for k, v in parsed.items()}
    saved, parsed = parsed, parsed_flow
    apply(data)
    parsed = saved
    buf = io.StringIO()
    rt.dump(data, buf)
    write_text(path, buf.getvalue())
    return parsed


def stage_graph(repo_dir: str | Path = ".") -> tuple[list[str], dict[str, set[str]]]:
    """(stage names in topological order, stage -> the stages it depends on), from DVC's index."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph  # edges: dependent stage -> the stage it depends on
        names = {s: s.addressing for s in graph.nodes}
        upstream = {names[s]: {names[d] for d in graph.successors(s)} for s in graph.nodes}
        order = [names[s] for s in reversed(list(nx.topological_sort(graph)))]
    return order, upstream


def stages_reading(keys: list[str], repo_dir: str | Path = ".") -> set[str]:
    """Stage names whose ``params:`` include one of the dotted ``keys`` (the key itself, a
    section above it, or a key below it): what a change of those keys makes out of date."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    def overlaps(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    hit = set()
    with Repo(str(repo_dir)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency) and any(
                        not dep.params or overlaps(k, p) for k in keys for p in (dep.params or [""])):
                    hit.add(stage.addressing)
    return hit


def out_of_date(repo_dir: str | Path = ".") -> set[str]:
    """Stage names ``dvc status`` reports as changed (missing outputs, changed deps/params/cmd)."""
    res = subprocess.run(["dvc", "status", "--json"], cwd=repo_dir, capture_output=True, text=True)
    if res.returncode != 0:
        raise LixError(f"dvc status failed in {repo_dir}: {res.stderr.strip() or res.stdout.strip()}")
    try:
        status = json.loads(res.stdout or "{}")
    except json.JSONDecodeError:
        raise LixError(f"dvc status printed no JSON: {res.stdout[:200]!r}") from None
    return {name for name in status if not name.endswith(".dvc")}


def plan(order: list[str], upstream: dict[str, set[str]], changed: set[str], filters: list[str] | None = None,
         report: bool = True) -> Plan:
    """The stages to run: the changed ones and everything downstream of them, restricted to the
    stages matching ``filters`` (glob patterns on stage names) plus what those need; the report
    stage only when ``report``."""
    def closure(names: set[str]) -> set[str]:
        seen, stack = set(), list(names)
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(upstream.get(s, ()))
        return seen

    if filters:
        chosen = {s for s in order if any(fnmatch.fnmatchcase(s, f) for f in filters)}
        if not chosen:
            raise ConfigError("--filter", f"no stage matches {filters}; stages: {order}")
        scope = closure(chosen)
        if report and REPORT_STAGE in order:
            scope.add(REPORT_STAGE)
    else:
        scope = set(order)
    if not report:
        scope.discard(REPORT_STAGE)
    todo = set()
    for s in order:  # topological: a stage's upstream is decided before it
        if s in scope and (s in changed or any(u in todo for u in upstream.get(s, ()))):
            todo.add(s)
    sub_order = [s for s in order if s in scope]
    return Plan(sub_order, {s: upstream.get(s, set()) & scope for s in sub_order}, todo)


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


def _safe_name(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=~," else "_" for c in stage)


_POSIX = os.name == "posix"
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


class _Job:
    def __init__(self, stage: str, slot: int, repo_dir: Path, log_dir: Path, jobs: int, argv: list[str]):
        self.stage, self.slot = stage, slot
        self.log = log_dir / f"{_safe_name(stage)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "w", encoding="utf-8")
        # its own process group, so that stopping it reaches the stage's command too (dvc's
        # children would otherwise outlive a terminated dvc)
        self.proc = subprocess.Popen(argv, cwd=repo_dir, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env=slot_env(slot, jobs), start_new_session=_POSIX,
                                     preexec_fn=_default_sigint if _sigint_ignored() else None)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None:
            self._fh.close()
        return rc

    def lock_contention(self) -> bool:
        return LOCK_ERROR in self.log.read_text(encoding="utf-8", errors="replace")

    def _signal_group(self, sig: int) -> None:
        """``sig`` to the job's process group (POSIX); elsewhere SIGINT/SIGKILL become
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
        """Whether anything of the job's process group is still running (its leader reaped)."""
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
        """SIGINT to the job's process group (Ctrl-C's semantics, which DVC and the trainer handle)."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to what is left of the group; reap the leader; close the log."""
        self._signal_group(_SIGKILL)
        self.proc.wait()
        self._fh.close()


def stop_jobs(jobs: list[_Job], grace_s: float = 30.0, poll_s: float = 0.1) -> None:
    """Stop ``jobs`` and everything they started: SIGINT to every group at once, one shared
    grace period for the groups to end (a stage command may outlive its dvc process), then
    SIGKILL to what is left. A second Ctrl-C (or SIGTERM) during the grace skips to SIGKILL."""
    try:
        for job in jobs:
            job.interrupt()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(job.group_alive() for job in jobs):
            time.sleep(poll_s)
    finally:
        for job in jobs:
            job.kill()


def _sigint_ignored() -> bool:
    return _POSIX and signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _default_sigint() -> None:
    # A sweep started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so would
    # its stages: restore the default in the child so that stopping them with SIGINT works.
    # (preexec_fn, so only then: it is not safe beside threads such as rich's refresher, whose
    # only work in the child would be this one call.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _StopOnSignals:
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


def run_plan(p: Plan, repo_dir: str | Path = ".", jobs: int = 1, *, log_dir: str | Path | None = None,
             dvc: list[str] | None = None, on_event: Callable[[str, str, str], None] | None = None,
             lock_retries: int = 120, poll_s: float = 0.2, repro_args: tuple[str, ...] = ()) -> Outcome:
    """Run the stages of ``p.todo`` in dependency order, ``jobs`` at a time (see the module
    docstring). ``on_event(kind, stage, detail)`` with kind start | done | failed | skipped.
    Ctrl-C, SIGTERM or SIGHUP stops every running job (its whole process group) and re-raises.
    ``repro_args`` go to every ``dvc repro`` (e.g. ``("--pull",)``)."""
    if jobs < 1:
        raise ConfigError("--jobs", f"must be >= 1, got {jobs}")
    repo_dir = Path(repo_dir)
    log_dir = Path(log_dir) if log_dir else repo_dir / "data" / "logs" / "sweep"
    running: dict[int, _Job] = {}
    with _StopOnSignals():  # also while stopping: a second SIGTERM then skips the grace period
        try:
            return _run(p, repo_dir, jobs, log_dir, [*(dvc or ["dvc"]), "repro", *repro_args],
                        on_event or (lambda *_: None), lock_retries, poll_s, running)
        except BaseException:
            stop_jobs(list(running.values()))
            raise


def _run(p: Plan, repo_dir: Path, jobs: int, log_dir: Path, repro: list[str], event: Callable[[str, str, str], None],
         lock_retries: int, poll_s: float, running: dict[int, _Job]) -> Outcome:
    """run_plan's loop; ``repro`` the ``dvc repro`` argv a stage name completes; ``running``
    (slot -> job) is the caller's, so that it can stop them."""
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
    while pending or running:
        for slot, job in list(running.items()):
            rc = job.poll()
            if rc is None:
                continue
            del running[slot]
            if rc != 0 and job.lock_contention() and retries.get(job.stage, 0) < lock_retries:
                retries[job.stage] = retries.get(job.stage, 0) + 1
                not_before[job.stage] = time.monotonic() + random.uniform(0.5, 2.0)
                pending.insert(0, job.stage)
            elif rc != 0:
                out.failed[job.stage] = str(job.log)
                event("failed", job.stage, str(job.log))
            else:
                finished.add(job.stage)
                out.ran.append(job.stage)
                event("done", job.stage, str(job.log))
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
        free = [k for k in range(jobs) if k not in running]
        for s in list(pending):
            if not free:
                break
            if not_before.get(s, 0.0) > now or not p.upstream.get(s, set()) <= finished:
                continue
            pending.remove(s)
            slot = free.pop(0)
            running[slot] = _Job(s, slot, repo_dir, log_dir, jobs, [*repro, "--single-item", s])
            event("start", s, str(running[slot].log))
        if running or pending:
            time.sleep(poll_s)
    if report_last:
        running[0] = job = _Job(REPORT_STAGE, 0, repo_dir, log_dir, 1, [*repro, "--single-item", REPORT_STAGE])
        event("start", REPORT_STAGE, str(job.log))
        while job.poll() is None:
            time.sleep(poll_s)
        del running[0]
        if job.proc.returncode == 0:
            out.ran.append(REPORT_STAGE)
            event("done", REPORT_STAGE, str(job.log))
        else:
            out.failed[REPORT_STAGE] = str(job.log)
            event("failed", REPORT_STAGE, str(job.log))
    return out


def sweep(repo_dir: str | Path = ".", jobs: int = 1, filters: list[str] | None = None, report: bool = True,
          dry: bool = False, on_event: Callable[[str, str, str], None] | None = None,
          pull: bool = False, would_change: list[str] | None = None) -> tuple[Plan, Outcome | None]:
    """Plan and (unless ``dry``) run the pipeline of ``repo_dir``: see the module docstring.
    ``pull``: ``dvc repro --pull``, so that a run finished on another machine and pushed with
    its run cache is restored from the default remote instead of run again. ``would_change``:
    params keys a dry run treats as changed (``--dry -S``, which leaves params.yaml alone)."""
    order, upstream = stage_graph(repo_dir)
    changed = out_of_date(repo_dir)
    if would_change:
        changed |= stages_reading(would_change, repo_dir)
    p = plan(order, upstream, changed, filters, report)
    if dry:
        return p, None
    return p, run_plan(p, repo_dir, jobs, on_event=on_event, dvc=[sys.executable, "-m", "dvc"],
                       repro_args=("--pull",) if pull else ())
