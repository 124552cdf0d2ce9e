"""How long a profile's missing runs will take, from the times its own ledger recorded
(``lix sweep --profile NAME --dry`` prints it): a plan for the next sitting of work, not a
promise. Pure functions over ledger lines (lix.sweep.ledger: ``dataset``, ``method``,
``seconds``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

# how an estimate was made, from the best basis to the worst
SAME = "same method and dataset"
SCALED = "same method on another dataset, scaled"
GUESSED = "the dataset's median (no run of the method yet)"
UNKNOWN = "no run of the dataset yet"
BASES = (SAME, SCALED, GUESSED, UNKNOWN)


@dataclass(frozen=True)
class Estimate:
    seconds: float  # the runs' summed run time (each run's recorded seconds), unknown ones excluded
    runs: int
    by_basis: dict[str, int]  # basis -> how many runs were estimated so

    def wall(self, jobs: int) -> float:
        """Seconds of wall time with ``jobs`` runs side by side (the slots never idle: a lower bound)."""
        return self.seconds / max(1, jobs)


Key = tuple[str, str, str]  # (dataset, model, method)


def _medians(lines: list[dict]) -> dict[Key, float]:
    times: dict[Key, list[float]] = {}
    for ln in lines:
        if isinstance(ln.get("seconds"), (int, float)) and ln["seconds"] > 0:
            times.setdefault((ln["dataset"], ln.get("model", ""), ln["method"]), []).append(float(ln["seconds"]))
    return {k: statistics.median(v) for k, v in times.items()}


def _scale(med: dict[Key, float], dataset: str, other: str, model: str, method: str) -> float | None:
    """How much longer a run of ``method`` takes on ``dataset`` than on ``other``: the median ratio
    over the methods both have run, of the same side (teacher or student) when they share one
    (a teacher reads RGB + X and trains without a teacher: its ratio is not a student's); None
    when they share none."""
    shared = [m for (d, mo, m) in med if d == dataset and mo == model and (other, model, m) in med]
    side = [m for m in shared if (m == "teacher") == (method == "teacher")]
    pick = side or shared
    return statistics.median(med[(dataset, model, m)] / med[(other, model, m)] for m in pick) if pick else None


def run_seconds(dataset: str, method: str, lines: list[dict], model: str = "") -> tuple[float | None, str]:
    """(seconds, basis) of one run of ``method`` on ``dataset`` (``model``: as the ledger names
    it, "" for lines without one): the median of the ledger's runs of the same triple; else the
    median of the method on another dataset times that dataset pair's ratio (:func:`_scale`); else
    the dataset's median over its student-side runs (the teacher's when none); else (None, UNKNOWN)."""
    return _run_seconds(_medians(lines), dataset, model, method)


def _run_seconds(med: dict[Key, float], dataset: str, model: str, method: str) -> tuple[float | None, str]:
    """:func:`run_seconds` on the ledger's medians (:func:`_medians`, computed once per estimate)."""
    if (dataset, model, method) in med:
        return med[(dataset, model, method)], SAME
    scaled = [med[(o, mo, m)] * s for (o, mo, m) in med if m == method and mo == model and o != dataset
              and (s := _scale(med, dataset, o, model, method)) is not None]
    if scaled:
        return statistics.median(scaled), SCALED
    students = [v for (d, mo, m), v in med.items() if d == dataset and mo == model and m != "teacher"]
    anything = [v for (d, mo, _m), v in med.items() if d == dataset and mo == model]
    if students or anything:
        return statistics.median(students or anything), GUESSED
    return None, UNKNOWN


def estimate(todo: list[tuple[str, str, str]], lines: list[dict]) -> Estimate:
    """The summed run time of the ``todo`` runs, (dataset, model, method) each; runs of unknown
    length add nothing (their count is under UNKNOWN)."""
    med, total, by = _medians(lines), 0.0, dict.fromkeys(BASES, 0)
    for dataset, model, method in todo:
        s, basis = _run_seconds(med, dataset, model, method)
        by[basis] += 1
        total += s or 0.0
    return Estimate(total, len(todo), {k: v for k, v in by.items() if v})


def describe(e: Estimate, jobs: int) -> str:
    """One line: 'N runs ≈ X h of run time ≈ Y h at -j J (…bases…)'."""
    bases = ", ".join(f"{n} by {b}" if b != UNKNOWN else f"{n} not counted ({b})" for b, n in e.by_basis.items())
    return (f"{e.runs} run(s) ≈ {e.seconds / 3600:.1f} h of run time ≈ {e.wall(jobs) / 3600:.1f} h of wall time "
            f"at -j {max(1, jobs)}, from the ledger's own run times ({bases})")


def progress(in_ledger: int, total: int, left: list[Key], lines: list[dict], jobs: int) -> str:
    """The line a profile sweep prints after each finished run: how much of the matrix the ledger
    holds, and how many runs this sweep (its ``--filter`` applied) still has, with their time
    estimated from ``lines`` as ``--dry`` does ('22 of 140 runs of the matrix in the ledger; this
    sweep: 118 left ≈ 15.9 h at -j 2'); ``jobs`` 0 (Slurm without a cap): the run time instead.
    Runs under way count as whole runs."""
    rest = "none left"
    if left:
        e = estimate(left, lines)
        rest = f"{len(left)} left ≈ " + (f"{e.wall(jobs) / 3600:.1f} h at -j {jobs}" if jobs > 0 else
                                         f"{e.seconds / 3600:.1f} h of run time")
        if e.by_basis.get(UNKNOWN):
            rest += f" ({e.by_basis[UNKNOWN]} of them not counted: no run of their dataset yet)"
    return f"{in_ledger} of {total} runs of the matrix in the ledger; this sweep: {rest}"
