"""A run's life as a user meets it: refused before anything is touched, resumed or restarted
by what changed (the DVC stages' --fresh-if-changed), one line per epoch and on resume without
progress bars, Ctrl-C acknowledged, no stale failed.json, DVC's metrics file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml
from distill_utils import cfg

from lix.checkpoint import load_checkpoint
from lix.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, edit=None) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["kitti"] |= {"epochs": 1, "batch_size": 2, "device": "cpu", "num_workers": 0, "crop": None}
    if edit:
        edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _invoke(args):
    from typer.testing import CliRunner

    from lix.cli import app

    return CliRunner().invoke(app, args)


def test_a_bad_parameter_is_refused_in_one_line_before_a_file_is_touched(train_shards, teacher, tmp_path):
    """The previous run's files stay as they were (DVC keeps persisted outputs, the trainer must
    not remove them before the config is known to be good)."""
    run = tmp_path / "run"
    common = ["distill", "--dataset", "kitti", "--teacher", str(teacher), "--shards", str(train_shards),
              "--out", str(run), "--no-progress"]
    r = _invoke([*common, "--method", "kd", "--params", str(_params(tmp_path))])
    assert r.exit_code == 0, r.output
    before = _snapshot(run)
    cases = [
        (["--method", "kd", "--hyper", '{"w_kd": "abc"}'], None, "--hyper.w_kd"),
        (["--method", "kd"], lambda p: p["distill"]["hyper"].update(kd={"temperature": "hot"}),
         "distill.hyper.kd.temperature"),
        (["--method", "kdd"], None, "unknown distillation method 'kdd'"),
        (["--method", "../escape"], None, "not a safe name"),
        (["--method", "kd", "--model", "mfnett"], None, "unknown model 'mfnett'"),
        # a value only the method itself can judge: refused when the method is built, still before
        # any file of the previous run is removed (a failed.json records the attempt)
        (["--method", "lix~dwc_training=bogus"], None, "distill.hyper.lix"),
    ]
    for extra, edit, needle in cases:
        r = _invoke([*common, *extra, "--params", str(_params(tmp_path, edit))])
        assert r.exit_code == 2, (extra, r.output)
        assert needle in r.output and "Traceback" not in r.output, (extra, r.output)
        after = _snapshot(run)
        after.pop("failed.json", None)
        assert after == before, extra
    assert not (tmp_path / "escape").exists()


def test_fresh_if_changed_resumes_the_same_run_and_restarts_a_changed_one(train_shards, tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="lix")
    fit(train_shards, out, cfg(), dataset="kitti", role="student", progress=False, resume="if_same")
    # more epochs: the same run, extended (epochs is a resumable key)
    s = fit(train_shards, out, cfg(epochs=2), dataset="kitti", role="student", progress=False, resume="if_same")
    # (that the resumed weights equal an uninterrupted run's: tests/test_train.py, and under DVC
    # tests/test_runs_under_dvc.py)
    assert s["epochs"] == 2 and "resuming student" in caplog.text and "at epoch 1 of 2" in caplog.text
    # another lr: a different run, started afresh (not refused), equal to a fresh run of that config
    caplog.clear()
    s = fit(train_shards, out, cfg(epochs=2, lr=0.02), dataset="kitti", role="student", progress=False,
            resume="if_same")
    assert "starting afresh" in caplog.text and "train.lr" in caplog.text
    assert [h["epoch"] for h in load_checkpoint(out / "last.pt")["history"]] == [1, 2]
    fresh = tmp_path / "fresh"
    fit(train_shards, fresh, cfg(epochs=2, lr=0.02), dataset="kitti", role="student", progress=False, resume=False)
    for k, v in load_checkpoint(fresh / "last.pt")["model"].items():
        assert torch.equal(v, load_checkpoint(out / "last.pt")["model"][k]), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == {"train": 6, "val": 2}
    assert len(summary["provenance"]["run_digest"]) == 64 and "commit" in summary["provenance"]


def test_a_resume_with_the_same_teacher_by_another_path_is_accepted(train_shards, teacher, tmp_path, monkeypatch):
    from lix.distill.train import distill_fit

    out = tmp_path / "run"
    monkeypatch.chdir(teacher.parent)
    distill_fit(train_shards, out, cfg(), dataset="kitti", method="kd", teacher_checkpoint=Path(teacher.name),
                progress=False)
    s = distill_fit(train_shards, out, cfg(epochs=2), dataset="kitti", method="kd",
                    teacher_checkpoint=teacher.resolve(), progress=False)
    assert s["epochs"] == 2


def test_without_progress_bars_each_epoch_and_the_resume_say_one_line(train_shards, tmp_path):
    """What DVC shows (--no-progress, no logging configured by anyone): a line per epoch, the
    resume, and DVC's metrics file."""
    out, metrics = tmp_path / "run", tmp_path / "metrics" / "run.json"
    argv = [sys.executable, "-m", "lix.cli", "train", "--dataset", "kitti", "--role", "student", "--shards",
            str(train_shards), "--out", str(out), "--no-progress", "--metrics", str(metrics)]
    first = subprocess.run([*argv, "--params", str(_params(tmp_path))], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1" in first.stderr and "val mIoU" in first.stderr
    m = json.loads(metrics.read_text())
    assert set(m) >= {"miou", "mfsc", "fwiou", "fwfsc", "best_epoch", "epochs", "last_miou"}
    assert m["miou"] == pytest.approx(json.loads((out / "metrics.json").read_text())["miou"], abs=1e-6)
    again = subprocess.run([*argv, "--params", str(_params(tmp_path, lambda p: p["train"]["kitti"].update(epochs=2)))],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming student" in again.stderr and "at epoch 1 of 2" in again.stderr and "epoch 2/2" in again.stderr


def test_ctrl_c_is_acknowledged_and_a_success_clears_an_old_failure(tmp_path, capsys):
    from lix.cli.common import run_outcome

    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(typer.Exit) as e:
        with run_outcome(tmp_path):
            raise KeyboardInterrupt
    assert e.value.exit_code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "failed.json").exists()  # nothing failed
    with pytest.raises(RuntimeError):
        with run_outcome(tmp_path):
            raise RuntimeError("boom")
    assert json.loads((tmp_path / "failed.json").read_text())["error"] == "boom"
    with run_outcome(tmp_path):
        pass
    assert not (tmp_path / "failed.json").exists()
