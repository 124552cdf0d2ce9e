"""The trainer: input encodings, exact resume, refusals, NaN stop, DDP equivalence, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lix.checkpoint import ConfigMismatch, load_checkpoint, rng_state, set_rng_state
from lix.config import TrainConfig
from lix.inputs import encode_depth, encode_normals, encode_rgb, model_inputs
from lix.models.registry import MODELS, register_model
from lix.train import NonFiniteLoss, fit
from pipeline.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- tiny models
class TinySeg(nn.Module):
    """conv -> GroupNorm -> ReLU -> Dropout2d -> 1x1 conv. GroupNorm has no batch statistics, so
    the DDP test compares like with like; the dropout makes exact resume depend on the RNG state."""

    P_DROP = 0.2
    NAN_AT: int | None = None  # return NaN logits at this training forward call (0-based = step)

    def __init__(self, n_classes: int, x_channels: int = 0):
        super().__init__()
        self.x_channels = x_channels
        self.conv = nn.Conv2d(3 + x_channels, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.drop = nn.Dropout2d(self.P_DROP)
        self.head = nn.Conv2d(8, n_classes, 1)
        self.feature_taps = {"body": "conv"}
        self.calls = 0

    def forward(self, rgb, x=None):
        h = torch.cat([rgb, x], 1) if self.x_channels else rgb
        out = self.head(self.drop(torch.relu(self.norm(self.conv(h)))))
        if self.training:
            if self.calls == self.NAN_AT:
                out = out * float("nan")
            self.calls += 1
        return out


class TinyNaN(TinySeg):
    NAN_AT = 4  # epoch 1 (3 steps per epoch), its second step


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """Register the test models for this module only (other modules may enumerate MODELS)."""
    added = [name for name, cls in (("tiny_seg", TinySeg), ("tiny_nan", TinyNaN))
             if name not in MODELS and register_model(name)(cls)]
    yield
    for name in added:
        MODELS.entries.pop(name, None)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(model="tiny_seg", epochs=2, batch_size=2, num_workers=0, device="cpu", lr=0.05, patience=0, seed=7)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def shards(train_shards) -> Path:
    """kitti, 8 images at 160x48: 6 train (3 steps of batch 2) / 2 val (conftest.py)."""
    return train_shards


# --------------------------------------------------------------------------- inputs
def test_depth_encodings_against_hand_computed_values():
    depth = torch.tensor([0.0, 1.5, 3.0, 6.0, 30.0, 100.0, 300.0]).view(1, 1, 1, 7)
    valid = torch.tensor([True, True, True, True, True, True, False]).view(1, 1, 7)  # 300 m flagged invalid
    # inverse: min(1, 3 / d); invalid (0 m, or the mask) -> 0
    inv = encode_depth(depth, valid, "inverse", near=3.0)
    np.testing.assert_allclose(inv.flatten().numpy(), [0, 1, 1, 0.5, 0.1, 0.03, 0], rtol=1e-6)
    # log: log(100 / d) / log(100 / 3), clamped to [0, 1]
    lg = encode_depth(depth, valid, "log", near=3.0, far=100.0)
    ln = math.log
    np.testing.assert_allclose(lg.flatten().numpy(),
                               [0, 1, 1, ln(100 / 6) / ln(100 / 3), ln(100 / 30) / ln(100 / 3), 0, 0], rtol=1e-6)
    # official: metres * 256 / 65535 (the 16-bit PNG value / 65535)
    off = encode_depth(depth, valid, "official")
    np.testing.assert_allclose(off.flatten().numpy(),
                               [0, 384 / 65535, 768 / 65535, 1536 / 65535, 7680 / 65535, 25600 / 65535, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="x_encoding='disparity'"):
        encode_depth(depth, valid, "disparity")


def test_rgb_and_normals_inputs():
    rgb = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    rgb[..., 1] = torch.tensor([0.714, 0.680, 0.631]).view(1, 3, 1)  # mean + 1 std
    assert torch.equal(encode_rgb(rgb, "none"), rgb)
    np.testing.assert_allclose(encode_rgb(rgb, "imagenet")[0, :, 0, :].numpy(), [[0, 1]] * 3, atol=1e-5)
    normals = torch.tensor([[0.0, -1.0, 0.0], [0.6, 0.0, -0.8]]).T.reshape(1, 3, 1, 2).half()
    valid = torch.tensor([[[True, False]]])
    out = encode_normals(normals, valid)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out[0, :, 0, 0].numpy(), [0, -1, 0])
    np.testing.assert_array_equal(out[0, :, 0, 1].numpy(), [0, 0, 0])  # invalid -> 0
    batch = {"rgb": rgb, "depth": torch.full((1, 1, 1, 2), 6.0), "depth_valid": torch.ones(1, 1, 2, dtype=torch.bool),
             "normals": normals.float(), "normal_valid": valid}
    assert model_inputs(batch, None)[1] is None
    np.testing.assert_allclose(model_inputs(batch, "depth")[1].flatten().numpy(), [0.5, 0.5])
    assert model_inputs(batch, "normals")[1].shape == (1, 3, 1, 2)


# --------------------------------------------------------------------------- checkpoints
def test_rng_state_round_trip_and_weights_only(tmp_path):
    import random

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))  # plain types and tensors only
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_exact_resume_is_bit_identical(shards, tmp_path):
    whole = fit(shards, tmp_path / "whole", tiny_cfg(epochs=4), dataset="kitti", role="teacher", progress=False)
    first = fit(shards, tmp_path / "split", tiny_cfg(epochs=2), dataset="kitti", role="teacher", progress=False)
    assert first["epochs"] == 2 and whole["epochs"] == 4
    rest = fit(shards, tmp_path / "split", tiny_cfg(epochs=4), dataset="kitti", role="teacher", progress=False)
    assert rest["epochs"] == 4 and rest["steps"] == 12
    a, b = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = load_checkpoint(tmp_path / "whole" / "last.pt")["history"]
    hb = load_checkpoint(tmp_path / "split" / "last.pt")["history"]
    drop = ("train/seconds", "train/samples_per_s", "val/seconds")
    assert [{k: v for k, v in h.items() if k not in drop} for h in ha] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hb]
    # The dropout draws from the restored RNG: resuming without set_rng_state moves the weights by
    # ~1e-2 (checked by hand), so the equality above depends on the RNG states in the checkpoint.
    c = load_checkpoint(tmp_path / "split" / "last.pt")
    assert c["loader"] == {"seed": 7, "epoch": 4} and len(c["rng"]) == 1
    # The weights export reads back with no pickle.
    from safetensors.torch import load_file

    best = load_checkpoint(tmp_path / "whole" / "best.pt")
    st = load_file(tmp_path / "whole" / "model.safetensors")
    assert st.keys() == best["model"].keys() and all(torch.equal(st[k], best["model"][k]) for k in st)


def test_resume_with_another_config_is_refused(shards, tmp_path):
    fit(shards, tmp_path / "run", tiny_cfg(epochs=1), dataset="kitti", role="teacher", progress=False)
    with pytest.raises(ConfigMismatch) as e:
        fit(shards, tmp_path / "run", tiny_cfg(epochs=2, lr=0.1, batch_size=3), dataset="kitti", role="teacher",
            progress=False)
    assert e.value.keys == ["train.batch_size", "train.lr"]
    assert "train.lr: checkpoint 0.05, now 0.1" in str(e.value) and "--no-resume" in str(e.value)
    with pytest.raises(ConfigMismatch) as e:  # the role (and with it X) is part of the run
        fit(shards, tmp_path / "run", tiny_cfg(epochs=2), dataset="kitti", role="student", progress=False)
    assert e.value.keys == ["role", "x", "x_channels"]
    # --no-resume starts afresh; epochs may change on resume.
    fit(shards, tmp_path / "run", tiny_cfg(epochs=1, lr=0.1), dataset="kitti", role="teacher", resume=False,
        progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["lr"] == 0.1


def test_corrupt_checkpoint_is_a_data_error(shards, tmp_path):
    fit(shards, tmp_path / "run", tiny_cfg(epochs=1), dataset="kitti", role="student", progress=False)
    last = tmp_path / "run" / "last.pt"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"last\.pt: not a readable checkpoint") as e:
        fit(shards, tmp_path / "run", tiny_cfg(epochs=2), dataset="kitti", role="student", progress=False)
    assert e.value.path == last
    last.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"last\.pt: not a readable checkpoint"):
        load_checkpoint(last)
    torch.save({"model": {}}, last)
    with pytest.raises(DataError, match=r"last\.pt: not a lix-checkpoint file"):
        load_checkpoint(last)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    with pytest.raises(NonFiniteLoss) as e:
        fit(shards, tmp_path / "run", tiny_cfg(model="tiny_nan", epochs=3), dataset="kitti", role="teacher",
            progress=False)
    assert (e.value.epoch, e.value.step) == (1, 4)
    assert math.isnan(e.value.terms["ce"])
    msg = str(e.value)
    assert msg.startswith("non-finite loss at epoch 1 step 4: ce = nan;") and "last.pt is kept" in msg
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import sys
import torch
from torch import nn
from lix.config import TrainConfig
from lix.models.registry import register_model
from lix.train import fit

@register_model("tiny_ddp")
class TinyDDP(nn.Module):  # no dropout, no batch statistics: the same function on any split of a batch
    def __init__(self, n_classes, x_channels=0):
        super().__init__()
        self.conv = nn.Conv2d(3 + x_channels, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(8, n_classes, 1)
    def forward(self, rgb, x=None):
        return self.head(torch.relu(self.norm(self.conv(torch.cat([rgb, x], 1)))))

torch.set_num_threads(1)
cfg = TrainConfig(model="tiny_ddp", epochs=2, batch_size=int(sys.argv[3]), num_workers=0, device="cpu",
                  lr=0.1, patience=0, seed=3)
fit(sys.argv[1], sys.argv[2], cfg, dataset="kitti", role="teacher", progress=False)
"""


def test_ddp_two_processes_match_one_with_the_same_global_batch(shards, tmp_path):
    """2 gloo processes x batch 1 == 1 process x batch 2. The loss divides by the labelled pixels
    of the global batch, so the ranks' different shares of ignored pixels do not matter; the
    model has no BatchNorm (its batch statistics would differ per rank: SyncBN is CUDA-only)."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    one = subprocess.run([sys.executable, str(script), str(shards), str(tmp_path / "one"), "2"], **run)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(shards), str(tmp_path / "two"), "1"], **run)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["config"]["world_size"] == 1 and b["config"]["world_size"] == 2 and len(b["rng"]) == 2
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)  # sums in another order
    for ha, hb in zip(a["history"], b["history"]):  # the logged loss is the global batch's mean, as is val
        assert ha["train/ce"] == pytest.approx(hb["train/ce"], rel=1e-5)
        assert ha["val/miou"] == pytest.approx(hb["val/miou"], abs=1e-9)


# --------------------------------------------------------------------------- CLI
def test_cli_train_then_evaluate(shards, tmp_path):
    from typer.testing import CliRunner

    from lix.cli import app

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["kitti"] |= {"epochs": 2, "batch_size": 2, "num_workers": 0, "device": "cpu", "lr": 0.05,
                                 "crop": None}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    runner = CliRunner()
    run = tmp_path / "student"
    r = runner.invoke(app, ["train", "--dataset", "kitti", "--role", "student", "--model", "tiny_seg",
                            "--out", str(run), "--shards", str(shards), "--params", str(pfile), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "kitti student (tiny_seg, seed 0): 2 epochs, stopped: max_epochs" in r.output
    # --evaluate (the default): best.pt evaluated into the run directory
    for f in ("last.pt", "best.pt", "model.safetensors", "config.json", "summary.json", "metrics.json",
              "confusion.png", "predictions.png"):
        assert (run / f).is_file(), f
    live = json.loads((run / "dvclive" / "metrics.json").read_text())
    assert live["step"] == 2 and {"miou", "mfsc", "pixel_acc"} <= set(live["val"])
    assert {"loss", "ce", "samples_per_s"} <= set(live["train"]) and live["lr"] == pytest.approx(0.05 * 0.95)
    tsv = (run / "dvclive" / "plots" / "metrics" / "val" / "miou.tsv").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in tsv] == ["step", "1", "2"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["stopped"] == "max_epochs"
    assert json.loads((run / "metrics.json").read_text())["miou"] == pytest.approx(summary["best_miou"], abs=1e-12)
    assert not (run / "failed.json").exists()

    ev = tmp_path / "eval"
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", "kitti", "--out", str(ev),
                            "--shards", str(shards), "--rows", "2", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    m = json.loads((ev / "metrics.json").read_text())
    assert m["miou"] == pytest.approx(summary["best_miou"], abs=1e-12)  # best.pt is the best evaluation
    # the run's own metrics.json reused the trainer's pass over best.pt's weights: the same matrix
    # as evaluating the checkpoint afresh
    assert json.loads((run / "metrics.json").read_text())["matrix"] == m["matrix"]
    assert len(m["per_class_iou"]) == 19 and len(m["matrix"]) == 19
    from pipeline.imageio import read_rgb
    from pipeline.preview import LEGEND_GAP, class_legend, class_palette

    # 2 rows of RGB | ground truth | prediction, then the class legend (issue 18: every label picture)
    img, names = read_rgb(ev / "predictions.png"), list(m["per_class_iou"])
    legend = class_legend(names, class_palette(names), 3 * 160 + 4)
    assert img.shape == (2 * 48 + 2 + LEGEND_GAP + legend.shape[0], 3 * 160 + 4, 3)
    np.testing.assert_array_equal(img[2 * 48 + 2 + LEGEND_GAP:], legend)
    assert (ev / "confusion.png").stat().st_size > 0
    # the exported weights evaluate alike, without pickle
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--dataset", "kitti",
                            "--out", str(tmp_path / "eval_st"), "--shards", str(shards), "--device", "cpu",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval_st" / "metrics.json").read_text())["miou"] == m["miou"]
    # a corrupt checkpoint: one red line naming the file, exit status 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(bad), "--dataset", "kitti", "--out", str(ev),
                            "--shards", str(shards), "--no-progress"])
    assert r.exit_code == 2 and "bad.pt: not a readable checkpoint" in r.output and "Traceback" not in r.output


def test_a_failed_run_leaves_failed_json_naming_the_problem(tmp_path):
    """What a sweep's report shows for a run that failed: its run directory holds failed.json
    with the error (and no metrics); the command exits non-zero with one red line."""
    from typer.testing import CliRunner

    from lix.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--dataset", "kitti", "--role", "teacher", "--out", str(run), "--shards",
                                 str(tmp_path / "no_shards"), "--params", str(ROOT / "params.yaml"), "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    failed = json.loads((run / "failed.json").read_text())
    assert "no_shards" in failed["error"] and failed["type"] == "DataError"
    assert not (run / "metrics.json").exists()


def test_early_stopping_on_val_miou(shards, tmp_path):
    """lr 1e-12 leaves the float32 weights as they are, so val mIoU never improves after the first
    evaluation: with patience 1 the run stops after epoch 2 of 5."""
    s = fit(shards, tmp_path / "run", tiny_cfg(epochs=5, patience=1, lr=1e-12, schedule="constant"),
            dataset="kitti", role="student", progress=False)
    assert (s["epochs"], s["best_epoch"], s["stopped"]) == (2, 1, "early_stopping")
    # A rerun finds the run finished and trains nothing more.
    again = fit(shards, tmp_path / "run", tiny_cfg(epochs=5, patience=1, lr=1e-12, schedule="constant"),
                dataset="kitti", role="student", progress=False)
    assert (again["epochs"], again["steps"]) == (2, s["steps"])


@pytest.mark.parametrize("text,key,problem", [
    ("train:\n  kitti: {x_encoding: disparity}\n", "train.kitti.x_encoding", "one of 'inverse', 'log', 'official'"),
    ("train:\n  kitti: {schedule: cosine}\n", "train.kitti.schedule", "one of 'mfnet', 'sne_roadseg', 'constant'"),
    ("train:\n  kitti: {x: thermal}\n", "train.kitti.x", "one of 'depth', 'normals'"),
    ("train:\n  kitti: {momentum: 1.0}\n", "train.kitti.momentum", "must be in [0, 1)"),
    ("train:\n  kitti: {depth_near: 5.0, depth_far: 4.0}\n", "train.kitti.depth_far", "must be > depth_near"),
    ("train:\n  kitti: {device: tpu}\n", "train.kitti.device", "expected auto, cpu or cuda"),
    ("train:\n  kitti: {crop: [96]}\n", "train.kitti.crop", "expected tuple[int, int] or null"),
])
def test_train_config_refusals_name_the_key(tmp_path, text, key, problem):
    from lix.config import load_params
    from pipeline.errors import ConfigError

    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert e.value.key == key and problem in e.value.problem


def test_model_choices_fail_fast(shards, tmp_path):
    from lix.model_factory import build_model
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'unet'; expected one of .*'mfnet'"):
        build_model(tiny_cfg(model="unet"), 19, "depth")
    with pytest.raises(ConfigError, match="model 'mfnet' takes no pretrained encoder weights") as e:
        build_model(tiny_cfg(model="mfnet", pretrained="resnet.pth"), 19, "depth")
    assert e.value.key == "train.pretrained"
    with pytest.raises(ConfigError, match=r"train.batch_size: 7 per process is more than the 6 training samples"):
        fit(shards, tmp_path / "run", tiny_cfg(batch_size=7), dataset="kitti", role="teacher", progress=False)


def test_normals_teacher_takes_three_x_channels(shards, tmp_path):
    fit(shards, tmp_path / "run", tiny_cfg(epochs=1, x="normals"), dataset="kitti", role="teacher", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["config"]["x"], ckpt["config"]["x_channels"]) == ("normals", 3)
    assert ckpt["model"]["conv.weight"].shape == (8, 3 + 3, 3, 3)
