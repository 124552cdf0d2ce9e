"""Distillation through the real trainer: lix distill end to end on a few shard samples, the
teacher frozen and outside the checkpoint, exact resume with a distiller's trainable parts,
refusals, the pre-training cache, lix distill --list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from distill_utils import cfg

from lix.checkpoint import ConfigMismatch, load_checkpoint
from lix.distill.train import distill_fit
from lix.train import fit
from pipeline.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student(train_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    fit(train_shards, out, cfg(), dataset="kitti", role="student", progress=False)
    return out / "best.pt"


def test_kd_run_writes_a_student_and_logs_each_term(train_shards, teacher, tmp_path):
    summary = distill_fit(train_shards, tmp_path, cfg(epochs=2), dataset="kitti", method="dkd",
                          teacher_checkpoint=teacher, hyper={"beta": 4.0}, progress=False)
    assert summary["epochs"] == 2
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["role"] == "student" and ckpt["config"]["x"] is None
    d = ckpt["config"]["distill"]
    assert d["method"] == "dkd" and d["hyper"] == {"beta": 4.0} and d["teacher_x"] == "depth"
    # what the distiller used, every key: the one record the report reads (DKD's published defaults)
    assert d["resolved_hyper"] == {"alpha": 1.0, "beta": 4.0, "temperature": 4.0, "w_dkd": 1.0}
    assert len(d["teacher_sha256"]) == 64
    # the checkpoint's model is the student alone (evaluate/export need no distillation code)
    assert not any(k.endswith("_inf") or "_inf." in k for k in ckpt["model"])
    assert ckpt["extra"] == {"distiller": {}}  # dkd has no trainable parts
    live = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert {"loss", "ce", "dkd"} <= set(live["train"])
    assert live["train"]["loss"] == pytest.approx(live["train"]["ce"] + live["train"]["dkd"], rel=1e-5)


def test_the_teacher_stays_frozen_and_out_of_the_trained_module(train_shards, teacher, tmp_path):
    before = load_checkpoint(teacher)["model"]
    distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="fitnet", teacher_checkpoint=teacher,
                progress=False)
    after = load_checkpoint(teacher)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    params = ckpt["optimizer"]["param_groups"][0]["params"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_student = len([k for k in ckpt["model"] if not k.endswith(buffers)])
    assert len(params) > n_student  # the student and fitnet's regressor, nothing of the teacher
    assert ckpt["extra"]["distiller"]  # the regressor's weights


def test_exact_resume_with_a_trainable_distiller(train_shards, teacher, tmp_path):
    whole = tmp_path / "whole"
    distill_fit(train_shards, whole, cfg(epochs=2), dataset="kitti", method="vid", teacher_checkpoint=teacher,
                progress=False)
    split = tmp_path / "split"
    distill_fit(train_shards, split, cfg(epochs=1), dataset="kitti", method="vid", teacher_checkpoint=teacher,
                progress=False)
    distill_fit(train_shards, split, cfg(epochs=2), dataset="kitti", method="vid", teacher_checkpoint=teacher,
                progress=False)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(split / "last.pt")
    for part in ("model",):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k
    for k, v in a["extra"]["distiller"].items():
        assert torch.equal(v, b["extra"]["distiller"][k]), k


def test_resume_with_other_hyper_parameters_is_refused(train_shards, teacher, tmp_path):
    distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="kd", teacher_checkpoint=teacher,
                progress=False)
    with pytest.raises(ConfigMismatch, match="distill"):
        distill_fit(train_shards, tmp_path, cfg(epochs=2), dataset="kitti", method="kd",
                    teacher_checkpoint=teacher, hyper={"temperature": 4.0}, progress=False)


def test_refusals_name_what_is_wrong(train_shards, teacher, student, tmp_path):
    with pytest.raises(DataError, match="teacher checkpoint not found"):
        distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="kd",
                    teacher_checkpoint=tmp_path / "nope.pt", progress=False)
    with pytest.raises(DataError, match="'student' run; distillation needs a teacher"):
        distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="kd", teacher_checkpoint=student,
                    progress=False)
    with pytest.raises(ConfigError, match=r"distill\.hyper\.kd\.beta.*unknown hyper-parameter"):
        distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="kd", teacher_checkpoint=teacher,
                    hyper={"beta": 1.0}, progress=False)
    with pytest.raises(Exception, match="unknown distillation method 'nope'"):
        distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="nope", teacher_checkpoint=teacher,
                    progress=False)


def test_pretraining_runs_once_and_is_cached(train_shards, teacher, tmp_path, caplog):
    import logging

    hyper = {"pretrain_epochs": 2}
    distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="ft", teacher_checkpoint=teacher,
                hyper=hyper, progress=False)
    cache = tmp_path / "pretrain.pt"
    assert cache.is_file()
    first = load_checkpoint(cache, required=("key", "distiller"))["distiller"]
    with caplog.at_level(logging.INFO, logger="lix.distill.train"):
        distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="ft", teacher_checkpoint=teacher,
                    hyper=hyper, resume=False, progress=False)
    assert "pre-trained parts loaded from" in caplog.text
    again = load_checkpoint(cache, required=("key", "distiller"))["distiller"]
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_cli_list_and_distill(train_shards, teacher, tmp_path):
    from typer.testing import CliRunner

    from lix.cli import app
    from lix.distill import DISTILLERS
    runner = CliRunner()
    r = runner.invoke(app, ["distill", "--list"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for name in DISTILLERS:
        assert name in r.output
    assert len(DISTILLERS) == 20  # 17 baselines (16 of the paper + IntRA-KD), DWLD, ARFD, LIX

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["kitti"] |= {"epochs": 1, "batch_size": 2, "device": "cpu", "num_workers": 0, "crop": None}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--dataset", "kitti", "--method", "kd", "--teacher", str(teacher),
                            "--shards", str(train_shards), "--out", str(out), "--params", str(pfile),
                            "--hyper", '{"temperature": 2}', "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "kitti kd (mfnet, seed 0): 1 epochs" in r.output
    # params.yaml's entry (every default written out) under the --hyper override
    assert load_checkpoint(out / "last.pt")["config"]["distill"]["hyper"] == {"temperature": 2.0, "w_kd": 1.0}
    assert json.loads((out / "metrics.json").read_text())["role"] == "student"  # evaluated in the run dir
    # an ablation variant: the name's pairs are typed hyper-parameters on top of distill.hyper.<method>
    var = tmp_path / "variant"
    r = runner.invoke(app, ["distill", "--dataset", "kitti", "--method", "kd~temperature=3", "--teacher", str(teacher),
                            "--shards", str(train_shards), "--out", str(var), "--params", str(pfile), "--no-progress",
                            "--no-evaluate"])
    assert r.exit_code == 0, r.output
    d = load_checkpoint(var / "last.pt")["config"]["distill"]
    assert d["method"] == "kd" and d["hyper"] == {"temperature": 3.0, "w_kd": 1.0}
    assert not (var / "metrics.json").exists()
    r = runner.invoke(app, ["distill", "--dataset", "kitti", "--method", "kd", "--teacher", str(teacher),
                            "--shards", str(train_shards), "--out", str(out), "--params", str(pfile),
                            "--hyper", "{temperature: 2}", "--no-progress"])
    assert r.exit_code == 2 and "--hyper" in r.output and "Traceback" not in r.output


def test_plain_student_is_the_ce_alone_with_the_teacher_monitored(train_shards, teacher, student, tmp_path):
    """method "student": the same run as lix train --role student (same seed: same weights), plus
    the teacher-student feature CKA logged at each validation (the paper's Fig. 5)."""
    summary = distill_fit(train_shards, tmp_path, cfg(), dataset="kitti", method="student",
                          teacher_checkpoint=teacher, progress=False)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["config"]["distill"]["method"] == "student" and ckpt["extra"] == {}
    plain = load_checkpoint(student)
    for k, v in plain["model"].items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert summary["best_miou"] == pytest.approx(plain["best"]["miou"], abs=1e-12)
    live = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    cka = live["val"]["cka"]
    assert set(cka) == {"rgb4", "fused", "decoder", "mean"}
    assert all(0.0 <= v <= 1.0 for v in cka.values())
    assert cka["mean"] == pytest.approx((cka["rgb4"] + cka["fused"] + cka["decoder"]) / 3)
    assert (tmp_path / "dvclive" / "plots" / "metrics" / "val" / "cka" / "mean.tsv").is_file()
    with pytest.raises(ConfigError, match=r"distill\.hyper\.student"):
        distill_fit(train_shards, tmp_path / "bad", cfg(), dataset="kitti", method="student",
                    teacher_checkpoint=teacher, hyper={"temperature": 2}, progress=False)


DDP_DISTILL = """
import sys
from pathlib import Path
from lix.config import TrainConfig
from lix.distill.train import distill_fit

shards, out, teacher, method = sys.argv[1:5]
cfg = TrainConfig(model="mfnet", epochs=1, batch_size=1, num_workers=0, device="cpu", lr=0.01, patience=0, seed=3)
distill_fit(Path(shards), Path(out), cfg, dataset="kitti", method=method, teacher_checkpoint=Path(teacher),
            progress=False)
"""


@pytest.mark.parametrize("method", ["lix"])
def test_distillation_runs_under_torchrun_ddp(train_shards, teacher, tmp_path, method):
    """Two gloo processes: the student and the distiller's trainable parts (the DWC, the ARFD
    aligners) are one DDP module, every parameter gets its gradient each step (DDP would stop
    with 'Expected to have finished reduction' otherwise), rank 0 writes."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_distill.py"
    script.write_text(DDP_DISTILL)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(train_shards), str(tmp_path / "run"), str(teacher), method],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 3
    assert ckpt["extra"]["distiller"] and all(torch.isfinite(v).all() for v in ckpt["extra"]["distiller"].values()
                                              if v.is_floating_point())
