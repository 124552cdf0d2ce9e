"""The sweep's record (``data/logs/sweep/jobs.json``): each stage of the current sweep, its
state and, once started, its job (executor, job id, log paths). Written atomically on every
change by the running sweep; read by ``lix sweep --status`` / ``--cancel`` from another shell,
and by a restarted sweep, which adopts the jobs that are still queued or running.

States: ``waiting`` (upstream not finished), ``submitted`` (started; the executor says whether it
is queued or running), ``done``, ``failed``, ``skipped`` (upstream failed), ``cancelled``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.atomic import write_text

_STATE_OF_EVENT = {"start": "submitted", "adopt": "submitted", "done": "done", "failed": "failed",
                   "skipped": "skipped", "cancelled": "cancelled"}


class SweepRecord:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict = self.read(self.path)

    @staticmethod
    def read(path: str | Path) -> dict:
        """The record at ``path`` (``{}`` when there is none or it is not a record)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {}

    def entry(self, stage: str) -> dict:
        return dict(self.data.get("stages", {}).get(stage, {}))

    def begin(self, executor: str, todo: list[str]) -> None:
        """A new sweep over ``todo``, every stage ``waiting`` (the runner reads the earlier entries
        first, to adopt jobs that are still live)."""
        self.data = {"executor": executor, "started": _now(), "stages": {s: {"state": "waiting"} for s in todo}}
        self._write()

    def set_job(self, stage: str, info: dict) -> None:
        self.data.setdefault("stages", {}).setdefault(stage, {}).update(info)

    def on_event(self, kind: str, stage: str, detail: str) -> None:
        e = self.data.setdefault("stages", {}).setdefault(stage, {})
        e["state"] = _STATE_OF_EVENT[kind]
        e["since"] = _now()
        if kind == "skipped":
            e["upstream_failed"] = detail
        else:
            e["log"] = detail
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
