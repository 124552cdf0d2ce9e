"""What a sweep runs: DVC's stage graph, what ``dvc status`` says is out of date, and the
stages to run (the changed ones, everything downstream, restricted by ``--filter``)."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, LixError

REPORT_STAGE = "report"


@dataclass
class Plan:
    """What a sweep will do: ``order`` (topological) stage names, ``upstream`` stage -> the
    stages it needs, ``todo`` the stages to run (out of date, or downstream of one that is)."""

    order: list[str]
    upstream: dict[str, set[str]]
    todo: set[str]


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
