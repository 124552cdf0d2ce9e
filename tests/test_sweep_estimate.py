"""lix.sweep.estimate: the remaining time of a profile from its ledger's own run times."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lix.sweep.estimate import GUESSED, SAME, SCALED, UNKNOWN, describe, estimate, progress, run_seconds

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_progress_line_counts_the_matrix_and_estimates_what_this_sweep_has_left():
    left = [("a", "m", "kd"), ("b", "m", "kd")]  # 70 s and 140 s (see test_each_basis)
    text = progress(5, 140, left, LEDGER, jobs=2)
    assert text.startswith("5 of 140 runs of the matrix in the ledger; this sweep: 2 left")
    assert f"≈ {(70.0 + 140.0) / 2 / 3600:.1f} h at -j 2" in text
    assert progress(140, 140, [], LEDGER, jobs=2).endswith("this sweep: none left")
    # Slurm without a cap (jobs 0): the run time; a dataset with no run yet: said, not counted
    assert progress(5, 140, left + [("c", "m", "kd")], LEDGER, jobs=0).endswith(
        f"3 left ≈ {(70.0 + 140.0) / 3600:.1f} h of run time (1 of them not counted: no run of their dataset yet)")


def test_a_profile_sweep_prints_the_progress_after_each_finished_run(tmp_path, monkeypatch):
    """The CLI's wiring: the dry plan gives what is left, each 'done' adds one to the ledger's
    count and prints the estimate for the rest (run_profile is a stand-in: no run starts)."""
    import json

    import yaml
    from typer.testing import CliRunner

    import lix.sweep.profile_run as profile_run
    from lix.cli import app
    from lix.sweep.runner import Outcome

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"datasets": ["vkitti2"], "models": ["mfnet"], "methods": ["student", "kd"], "seeds": [0, 1],
         "folder": "data/tiny"}))
    ledger = tmp_path / "data/tiny/ledger.jsonl"
    todo = ["student@vkitti2-mfnet-kd-1", "student@vkitti2-mfnet-student-1"]

    def fake_run_profile(profile, repo, jobs, *, dry=False, on_event=None, **_):
        if dry:
            return profile_run.ProfileOutcome(None, list(todo), in_ledger=4)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        on_event("start", todo[0], "")
        with ledger.open("a") as f:
            f.write(json.dumps({"digest": "d", "dataset": "vkitti2", "model": "mfnet", "method": "kd",
                                "seconds": 7200.0}) + "\n")
        on_event("done", todo[0], "")
        on_event("start", todo[1], "")
        on_event("done", todo[1], "")  # finished, but its ledger line could not be written
        return profile_run.ProfileOutcome(Outcome(ran=list(todo)), list(todo), recorded=todo[:1],
                                          errors={todo[1]: "disk full"}, in_ledger=4)

    monkeypatch.setattr(profile_run, "run_profile", fake_run_profile)
    res = CliRunner().invoke(app, ["sweep", "--profile", str(tmp_path / "tiny.yaml"), "--repo", str(tmp_path),
                                   "-j", "2", "--no-report"])
    text = " ".join(res.output.split())  # the console wraps long lines
    # the matrix: 2 teachers + 2 seeds x 2 methods = 6 runs; 4 were in the ledger, one more recorded; the
    # one still left is estimated from the ledger (the kd run's 2 h at -j 2); the run that finished
    # without its ledger line is not counted
    assert "5 of 6 runs of the matrix in the ledger; this sweep: 1 left ≈ 1.0 h at -j 2" in text, text
    assert "5 of 6 runs of the matrix in the ledger; this sweep: none left" in text, text
