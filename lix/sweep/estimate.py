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


def _medians(lines: list[dict]) -> dict[tuple[str, str], float]:
    times: dict[tuple[str, str], list[float]] = {}
    for ln in lines:
        if isinstance(ln.get("seconds"), (int, float)) and ln["seconds"] > 0:
            times.setdefault((ln["dataset"], ln["method"]), []).append(float(ln["seconds"]))
    return {k: statistics.median(v) for k, v in times.items()}


def _scale(med: dict[tuple[str, str], float], dataset: str, other: str) -> float | None:
    """How much longer a run takes on ``dataset`` than on ``other``: the median ratio over the
    methods both have run (None when they share none)."""
    shared = [m for (d, m) in med if d == dataset and (other, m) in med]
    return statistics.median(med[(dataset, m)] / med[(other, m)] for m in shared) if shared else None


def run_seconds(dataset: str, method: str, lines: list[dict]) -> tuple[float | None, str]:
    """(seconds, basis) of one run of ``method`` on ``dataset``: the median of the ledger's runs
    of the same pair; else the median of the method on another dataset times that dataset pair's
    ratio; else the dataset's median over its student-side runs (the teacher's when none); else
    (None, UNKNOWN)."""
    med = _medians(lines)
    if (dataset, method) in med:
        return med[(dataset, method)], SAME
    scaled = [med[(o, method)] * s for (o, m) in med if m == method and o != dataset
              and (s := _scale(med, dataset, o)) is not None]
    if scaled:
        return statistics.median(scaled), SCALED
    students = [v for (d, m), v in med.items() if d == dataset and m != "teacher"]
    anything = [v for (d, _m), v in med.items() if d == dataset]
    if students or anything:
        return statistics.median(students or anything), GUESSED
    return None, UNKNOWN


def estimate(todo: list[tuple[str, str]], lines: list[dict]) -> Estimate:
    """The summed run time of the ``todo`` runs, (dataset, method) each."""
    total, by = 0.0, dict.fromkeys(BASES, 0)
    for dataset, method in todo:
        s, basis = run_seconds(dataset, method, lines)
        by[basis] += 1
        total += s or 0.0
    return Estimate(total, len(todo), {k: v for k, v in by.items() if v})


def describe(e: Estimate, jobs: int) -> str:
    """One line: 'N runs ≈ X h of run time ≈ Y h at -j J (…bases…)'."""
    bases = ", ".join(f"{n} by {b}" for b, n in e.by_basis.items())
    return (f"{e.runs} run(s) ≈ {e.seconds / 3600:.1f} h of run time ≈ {e.wall(jobs) / 3600:.1f} h of wall time "
            f"at -j {max(1, jobs)}, from the ledger's own run times ({bases})")
