"""lix.sweep.estimate: the remaining time of a profile from its ledger's own run times."""

from __future__ import annotations

import pytest

from lix.sweep.estimate import GUESSED, SAME, SCALED, UNKNOWN, estimate, run_seconds


def line(dataset, method, seconds):
    return {"dataset": dataset, "method": method, "seconds": seconds}


LEDGER = [line("a", "teacher", 100.0), line("a", "student", 50.0), line("a", "kd", 60.0), line("a", "kd", 80.0),
          line("b", "teacher", 300.0), line("b", "student", 100.0), line("a", "lix", 0)]  # 0 s: not a time


def test_each_basis():
    assert run_seconds("a", "kd", LEDGER) == (70.0, SAME)  # median of 60 and 80
    # b runs take median(300/100, 100/50) = 2.5x a's (teacher and student both ran on both)
    assert run_seconds("b", "kd", LEDGER) == (pytest.approx(70.0 * 2.5), SCALED)
    # no lix time anywhere (its 0 s is no measurement): a's student-side median, median(50, 70)
    assert run_seconds("a", "lix", LEDGER) == (pytest.approx(60.0), GUESSED)
    assert run_seconds("c", "kd", LEDGER) == (None, UNKNOWN)


def test_totals_and_wall():
    e = estimate([("a", "kd"), ("b", "kd"), ("a", "lix"), ("c", "kd")], LEDGER)
    assert e.runs == 4
    assert e.seconds == pytest.approx(70.0 + 175.0 + 60.0)
    assert e.by_basis == {SAME: 1, SCALED: 1, GUESSED: 1, UNKNOWN: 1}
    assert e.wall(2) == pytest.approx(305.0 / 2) and e.wall(0) == pytest.approx(305.0)


def test_an_empty_ledger_knows_nothing():
    e = estimate([("a", "teacher")], [])
    assert e.seconds == 0.0 and e.by_basis == {UNKNOWN: 1}
