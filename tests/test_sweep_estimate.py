"""lix.sweep.estimate: the remaining time of a profile from its ledger's own run times."""

from __future__ import annotations

import pytest

from lix.sweep.estimate import GUESSED, SAME, SCALED, UNKNOWN, describe, estimate, run_seconds


def line(dataset, method, seconds, model="m"):
    return {"dataset": dataset, "model": model, "method": method, "seconds": seconds}


# b's teacher takes 3x a's, b's plain student 2x a's: students scale by 2, teachers by 3
LEDGER = [line("a", "teacher", 100.0), line("a", "student", 50.0), line("a", "kd", 60.0), line("a", "kd", 80.0),
          line("b", "teacher", 300.0), line("b", "student", 100.0), line("a", "lix", 0),  # 0 s: not a time
          line("a", "kd", 1000.0, model="other")]  # another model's run: not mixed in


def test_each_basis():
    assert run_seconds("a", "kd", LEDGER, "m") == (70.0, SAME)  # median of 60 and 80
    assert run_seconds("b", "kd", LEDGER, "m") == (pytest.approx(70.0 * 2), SCALED)  # the students' ratio
    # no lix time anywhere (its 0 s is no measurement): a's student-side median, median(50, 70)
    assert run_seconds("a", "lix", LEDGER, "m") == (pytest.approx(60.0), GUESSED)
    assert run_seconds("c", "kd", LEDGER, "m") == (None, UNKNOWN)


def test_a_teacher_scales_by_the_teachers_ratio_and_a_student_by_a_teacher_only_when_alone():
    ledger = [line("a", "teacher", 100.0), line("b", "teacher", 300.0), line("a", "kd", 60.0)]
    assert run_seconds("b", "kd", ledger, "m") == (pytest.approx(180.0), SCALED)  # no student pair: 3x
    ledger += [line("a", "student", 50.0), line("b", "student", 100.0)]
    assert run_seconds("b", "kd", ledger, "m") == (pytest.approx(120.0), SCALED)  # a student pair: 2x
    ledger2 = [line("a", "teacher", 100.0), line("a", "student", 50.0), line("b", "student", 100.0)]
    assert run_seconds("b", "teacher", ledger2, "m") == (pytest.approx(200.0), SCALED)  # no teacher pair: 2x


def test_totals_and_wall():
    e = estimate([("a", "m", "kd"), ("b", "m", "kd"), ("a", "m", "lix"), ("c", "m", "kd")], LEDGER)
    assert e.runs == 4
    assert e.seconds == pytest.approx(70.0 + 140.0 + 60.0)
    assert e.by_basis == {SAME: 1, SCALED: 1, GUESSED: 1, UNKNOWN: 1}
    assert e.wall(2) == pytest.approx(270.0 / 2) and e.wall(0) == pytest.approx(270.0)
    text = describe(e, 2)
    assert text.startswith("4 run(s) ≈ 0.1 h of run time ≈ 0.0 h of wall time at -j 2")
    assert "1 not counted (no run of the dataset yet)" in text


def test_an_empty_ledger_knows_nothing():
    e = estimate([("a", "m", "teacher")], [])
    assert e.seconds == 0.0 and e.by_basis == {UNKNOWN: 1}
