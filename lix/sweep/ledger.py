"""A profile's ledger (``<profile folder>/ledger.jsonl``, tracked by git): one JSON line per
finished run, appended by the sweep as each run ends, never edited but by ``lix sweep --rekey``
(lix.sweep.rekey: a line's digest replaced when it provably still names the same run). What a
line holds is what the profile's report needs (:func:`run_record`), so the report is built from the ledger alone:

``digest`` (lix.sweep.profile.run_digest: a run whose code or parameters changed has another),
``profile``, ``dataset``, ``model``, ``method``, ``seed``, ``teacher_digest``; ``metrics`` (the
best checkpoint's val figures with per-class IoU); ``best_epoch``, ``epochs``, ``stopped``
(``early_stopping``, or ``max_epochs``: the cap was hit); ``curve`` (val mIoU per evaluation),
``curve_epochs`` (the epoch of each of them; lines written before it was added lack it) and
``cka`` (the teacher-student feature CKA per evaluation, students); ``last`` (the last epoch's
per-term training losses and the DWC's weight statistics); ``seconds`` (the run's own time over
all its epochs, a resumed run's earlier part included), ``wall`` (what the sweep that finished it
waited), ``threads`` (the CPU threads it had); ``machine``, ``torch``, ``commit``, ``code_digest``, ``date``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.errors import DataError


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lines: list[dict] = self.read(self.path)

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The lines of ``path`` (none when it does not exist); DataError naming a broken line."""
        if not path.is_file():
            return []
        out = []
        for i, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {i} is not JSON ({e.msg}); the ledger is appended to, never edited: "
                                      f"restore it from git") from None
            if not isinstance(line, dict) or "digest" not in line:
                raise DataError(path, f"line {i} is not a ledger record (no digest)")
            out.append(line)
        return out

    def digests(self) -> set[str]:
        return {line["digest"] for line in self.lines}

    def append(self, line: dict) -> None:
        """Add ``line`` (atomically: the file is never half-written); a digest already present is kept once."""
        if line["digest"] in self.digests():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text() if self.path.is_file() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        write_text(self.path, text + _json_line(line))
        self.lines.append(line)

    def replace(self, lines: list[dict]) -> None:
        """Write ``lines`` as the whole ledger (atomically); ValueError when two share a digest."""
        if len({line["digest"] for line in lines}) != len(lines):
            raise ValueError("two ledger lines would share a digest")
        write_text(self.path, "".join(_json_line(line) for line in lines))
        self.lines = list(lines)


def run_key(line: dict) -> tuple:
    """(dataset, model, method, seed) of a ledger line: which run of a matrix it records, whatever
    its digest (the order of lix.sweep.profile.Run's fields)."""
    return line.get("dataset"), line.get("model"), line.get("method"), line.get("seed")


def _json_line(line: dict) -> str:
    return json.dumps(line, sort_keys=True, allow_nan=False, default=_plain) + "\n"


def _plain(x):
    return float(x) if hasattr(x, "__float__") else str(x)


def _tsv_rows(path: Path) -> list[tuple[int, float]]:
    """(step, value) of a dvclive plot file (a header, then step<TAB>value lines), in step order;
    dvclive's step is the epoch in our runs."""
    if not path.is_file():
        return []
    rows = [ln.split("\t") for ln in path.read_text().splitlines()[1:] if ln.strip()]
    return sorted((int(s), round(float(v), 6)) for s, v in rows)


def _tsv(path: Path) -> list[float]:
    """The values column of a dvclive plot file, in step order."""
    return [v for _, v in _tsv_rows(path)]


def run_record(run_dir: Path, *, digest: str, profile: str, run: dict, teacher_digest: str | None,
               seconds: float, code: str, threads: int | None = None) -> dict:
    """The ledger line of the finished run in ``run_dir`` (its summary.json, metrics.json and
    dvclive curves); DataError naming the file when one is missing, or when the run's own
    summary records a training-code digest other than ``code`` (the code changed mid-sweep)."""
    files = {}
    for name in ("summary.json", "metrics.json"):
        f = run_dir / name
        if not f.is_file():
            raise DataError(f, "a finished run has it; the run did not finish or its directory was changed")
        files[name] = json.loads(f.read_text())
    s, m = files["summary.json"], files["metrics.json"]
    ran = (s.get("provenance") or {}).get("code_digest")
    if ran is not None and ran != code:  # the sweep keys the run on the code it saw when it started
        raise DataError(run_dir / "summary.json", f"the run executed training code {ran[:12]}, the sweep planned it "
                                                  f"with {code[:12]}: the training code changed while the sweep ran; "
                                                  f"not recorded (run the sweep again)")
    metrics = {k: m[k] for k in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc") if k in m}
    metrics["per_class_iou"] = m.get("per_class_iou", {})
    last = {k: v for k, v in (s.get("last") or {}).items() if k.startswith(("train/", "val/cka/"))}
    metrics_dir = run_dir / "dvclive" / "plots" / "metrics"
    plots = metrics_dir / "val"
    return {"digest": digest, "profile": profile, **run, "teacher_digest": teacher_digest, "metrics": metrics,
            "best_epoch": s.get("best_epoch"), "epochs": s.get("epochs"), "stopped": s.get("stopped"),
            "seconds_per_epoch": s.get("seconds_per_epoch"), "curve": _tsv(plots / "miou.tsv"),
            "curve_epochs": [step for step, _ in _tsv_rows(plots / "miou.tsv")],
            "cka": _tsv(plots / "cka" / "mean.tsv"), "last": last,
            "seconds": round(_run_seconds(metrics_dir, seconds), 1), "wall": round(seconds, 1), "threads": threads,
            **machine(), "code_digest": code, "commit": commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _run_seconds(metrics_dir: Path, wall: float) -> float:
    """The run's own time over all its epochs, a resumed run's earlier part included: the sum of
    its per-epoch training and validation seconds (dvclive's history); the sweep's wall time when
    the run logged none."""
    total = sum(_tsv(metrics_dir / "train" / "seconds.tsv")) + sum(_tsv(metrics_dir / "val" / "seconds.tsv"))
    return total if total > 0 else wall


def machine() -> dict:
    """Where a run ran: the CPU model and core count, the host, torch's version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": f"{cpu}, {os.cpu_count()} cores", "host": platform.node(), "torch": torch.__version__}


def commit() -> str:
    """The checkout's commit (``+dirty`` when its lix/ or pipeline/ differ), or ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        # dirty: the code differs from the commit (the ledgers and params.yaml may: a sweep writes them)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lix", "pipeline"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
