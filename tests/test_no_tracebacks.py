"""Fuzz: every command fed a damaged file ends with one red line naming the file and what was
expected, exit status 2, and no traceback (issue 18, "one-line errors everywhere").

Damaged inputs: checkpoints (0 bytes, half, random bytes, JSON renamed .pt, a torch file that
is not ours, ours without its entries, a pickled object weights_only refuses), shards of the same
size with bytes flipped in the HDF5 header region or in the pixel data (uncompressed: only
``--sha256`` sees it; gzip: the read fails, also in a DataLoader worker), shard manifests, and
the JSON files ``lix report`` reads. No training: the checkpoints are built, not trained.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lix.checkpoint import load_checkpoint, load_resume_checkpoint, save_checkpoint
from lix.cli import app
from lix.data import ShardDataset
from pipeline.atomic import write_json
from pipeline.errors import DataError
from pipeline.imageio import write_image
from pipeline.shards import MANIFEST, iter_samples, read_manifest, verify_shards, write_split

ROOT = Path(__file__).resolve().parents[1]
CKPT_KINDS = ("empty", "half", "random", "json", "foreign_torch", "ours_lacking_keys", "forbidden_global",
              "wrong_types")


# --------------------------------------------------------------------------- helpers
def invoke(args: list) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def one_error_line(res, *names: str, code: int = 2) -> str:
    """The command exited with ``code`` through SystemExit (no other exception escaped), printed
    no traceback and exactly one line, an error naming each of ``names``. Returns the line."""
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def run_checkpoint(path: Path, names: list[str], role: str = "student", epoch: int = 3) -> Path:
    """A checkpoint as lix train writes it (MFNet, kitti's 19 classes; untrained weights)."""
    from lix.config import TrainConfig
    from lix.model_factory import build_model
    from lix.provenance import run_config

    cfg = TrainConfig(model="mfnet", device="cpu", num_workers=0, batch_size=2, crop=None)
    config = run_config(cfg, "kitti", role, names, 1)
    torch.manual_seed(0)
    model = build_model(cfg, len(names), config["x"])
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": epoch,
                           "step": 3 * epoch, "rng": [], "loader": {"seed": 0, "epoch": epoch}, "config": config,
                           "history": [], "best": {"miou": 0.1, "epoch": epoch}, "bad_evals": 0})
    return path


def damage_checkpoint(kind: str, path: Path, good: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "half":
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "json":
        path.write_text(json.dumps({"miou": 0.5, "model": "mfnet"}))
    elif kind == "foreign_torch":
        torch.save({"state_dict": {"conv.weight": torch.zeros(2, 3)}}, path)
    elif kind == "ours_lacking_keys":
        torch.save({"format": "lix-checkpoint", "version": 1, "model": {}}, path)
    elif kind == "forbidden_global":
        torch.save({"format": "lix-checkpoint", "version": 1, "path": pathlib.PurePosixPath("x")}, path)
    elif kind == "wrong_types":
        ckpt = torch.load(good, weights_only=True)
        torch.save(ckpt | {"config": "mfnet", "epoch": "3"}, path)
    else:
        raise ValueError(kind)
    return path


def flip(path: Path, offset: int, n: int = 1) -> None:
    """XOR ``n`` bytes at ``offset`` with 0xFF: same size, other content."""
    b = bytearray(path.read_bytes())
    for k in range(offset, offset + n):
        b[k] ^= 0xFF
    path.write_bytes(bytes(b))


def rgb_chunk(path: Path, sample: int = 0) -> tuple[int, int]:
    """(byte offset, size) of the stored chunk of ``rgb[sample]``."""
    with h5py.File(path, "r") as f:
        info = f["rgb"].id.get_chunk_info(sample)
    return info.byte_offset, info.size


def read_everything(shards: Path, split: str) -> None:
    """What a run does with a split: the default check, then every item."""
    ds = ShardDataset(shards, split, verify="none")
    try:
        verify_shards(shards, split)
        for i in range(len(ds)):
            ds[i]
    finally:  # close the handles: HDF5 would reuse an open file's cached header for the next damage
        for f in ds._files.values():
            f["_file"].close()


def gzip_shards(src: Path, dst: Path) -> Path:
    """A copy of the shards ``src`` written with gzip (a damaged chunk then fails to decompress)."""
    m = read_manifest(src)
    dst.mkdir(parents=True)
    splits = {}
    for split in m["splits"]:
        samples = itertools.chain.from_iterable(iter_samples(p) for p in verify_shards(src, split))
        splits[split] = write_split(dst, m["dataset"], split, samples, 4, "gzip")
    write_json(dst / MANIFEST, m | {"splits": {k: {"count": sum(e["count"] for e in v), "shards": v}
                                               for k, v in splits.items()}})
    return dst


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(train_shards, tmp_path_factory):
    """Shards (kitti, 6 train / 2 val at 160x48), params for a quick CPU run, a student
    checkpoint (best.pt, epoch 3), a folder with one image."""
    d = tmp_path_factory.mktemp("fuzz")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["kitti"] |= {"epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu", "crop": None}
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    (d / "images").mkdir()
    write_image(d / "images" / "a.png", np.full((48, 160, 3), 90, np.uint8))
    names = read_manifest(train_shards)["class_names"]
    return {"shards": train_shards, "params": d / "params.yaml", "images": d / "images",
            "student": run_checkpoint(d / "student" / "best.pt", names)}


# --------------------------------------------------------------------------- checkpoints
def test_load_checkpoint_refuses_every_damage_naming_the_file(env, tmp_path):
    for kind in CKPT_KINDS:
        p = damage_checkpoint(kind, tmp_path / kind / "best.pt", env["student"])
        with pytest.raises(DataError) as e:
            load_checkpoint(p)
        assert e.value.path == p and e.value.problem and "\n" not in str(e.value), (kind, str(e.value))
    assert load_checkpoint(env["student"])["epoch"] == 3


def _checkpoint_args(command: str, ck: Path, env: dict, out: Path) -> list:
    common = ["--no-progress"]
    if command == "evaluate":
        return ["evaluate", "--checkpoint", ck, "-d", "kitti", "--out", out, "--shards", env["shards"],
                "--device", "cpu", *common]
    if command == "predict":
        return ["predict", "--checkpoint", ck, "--input", env["images"], "--output", out, "--device", "cpu", *common]
    if command == "cross-evaluate":
        return ["cross-evaluate", "--checkpoint", ck, "-d", "vkitti2", "--shards", env["shards"], "--out", out,
                "--device", "cpu", *common]
    if command == "distill":
        return ["distill", "-d", "kitti", "-m", "kd", "--teacher", ck, "--out", out, "--shards", env["shards"],
                "--params", env["params"], "--no-evaluate", *common]
    raise ValueError(command)


@pytest.mark.parametrize("kind", CKPT_KINDS)
@pytest.mark.parametrize("command", ["evaluate", "predict", "cross-evaluate", "distill"])
def test_damaged_checkpoint_one_line(env, tmp_path, command, kind):
    ck = damage_checkpoint(kind, tmp_path / f"{kind}-{command}" / "best.pt", env["student"])
    res = invoke(_checkpoint_args(command, ck, env, tmp_path / "out"))
    one_error_line(res, str(ck))


@pytest.mark.parametrize("kind", ["empty", "half", "random", "foreign_torch", "ours_lacking_keys"])
def test_train_resume_from_damaged_last_pt_one_line(env, tmp_path, kind):
    run = tmp_path / "run"
    damage_checkpoint(kind, run / "last.pt", env["student"])
    shutil.copy(env["student"], run / "best.pt")
    res = invoke(["train", "-d", "kitti", "--role", "student", "--out", run, "--shards", env["shards"],
                  "--params", env["params"], "--no-evaluate", "--no-progress"])
    one_error_line(res, str(run / "last.pt"))
    assert json.loads((run / "failed.json").read_text())["type"] == "DataError"


def test_train_resume_message_names_no_resume_and_the_intact_best_pt(env, tmp_path):
    """lix/train.py resumes through lix.checkpoint.load_resume_checkpoint(last, best)."""
    run = tmp_path / "run"
    damage_checkpoint("half", run / "last.pt", env["student"])
    shutil.copy(env["student"], run / "best.pt")
    res = invoke(["train", "-d", "kitti", "--role", "student", "--out", run, "--shards", env["shards"],
                  "--params", env["params"], "--no-evaluate", "--no-progress"])
    one_error_line(res, str(run / "last.pt"), "--no-resume", str(run / "best.pt"), "epoch 3")


def test_load_resume_checkpoint(env, tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    shutil.copy(env["student"], last)
    assert load_resume_checkpoint(last, best)["epoch"] == 3  # intact: just loads
    damage_checkpoint("half", last, env["student"])
    with pytest.raises(DataError) as e:  # no best.pt
        load_resume_checkpoint(last, best)
    assert e.value.path == last and "corrupt" in e.value.problem and "--no-resume" in e.value.problem
    assert "best.pt" not in e.value.problem
    shutil.copy(env["student"], best)
    with pytest.raises(DataError) as e:  # best.pt intact: named, with its epoch
        load_resume_checkpoint(last, best)
    assert "--no-resume" in str(e.value) and f"{best} (epoch 3), which is intact: copy it to {last}" in str(e.value)
    assert "\n" not in str(e.value)
    damage_checkpoint("empty", best, env["student"])
    with pytest.raises(DataError) as e:  # best.pt damaged too: not offered
        load_resume_checkpoint(last, best)
    assert "--no-resume" in e.value.problem and "intact" not in e.value.problem


# --------------------------------------------------------------------------- shards
@pytest.fixture
def shard_copy(env, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(env["shards"], dst)
    return dst


def test_header_fuzz_python(shard_copy):
    """Every byte flip in the first 2 KiB of a shard (superblock, root group, object headers):
    the default check plus reading every item either passes or raises one DataError naming the
    shard; never KeyError, OSError, RuntimeError, TypeError..."""
    p = shard_copy / "val-00000.h5"
    whole = p.read_bytes()
    refused = 0
    for off in range(0, 2048, 8):
        p.write_bytes(whole)
        flip(p, off)
        try:
            read_everything(shard_copy, "val")
        except DataError as e:
            refused += 1
            assert e.path == p and "\n" not in str(e), (off, str(e))
    assert refused > 20  # the flips do reach the header


def _first_refused_header_offset(shards: Path, p: Path) -> int:
    whole = p.read_bytes()
    for off in range(64, 2048, 8):
        flip(p, off)
        try:
            verify_shards(shards, "val")
        except DataError:
            return off
        p.write_bytes(whole)
    raise AssertionError("no header flip refused")


def test_header_flip_cli(env, shard_copy, tmp_path):
    p = shard_copy / "val-00000.h5"
    _first_refused_header_offset(shard_copy, p)
    one_error_line(invoke(["prepare", "verify-shards", "--shards", shard_copy, "--no-progress"]), str(p))
    one_error_line(invoke(["prepare", "verify-shards", "--shards", shard_copy, "--sha256", "--split", "val",
                           "--no-progress"]), str(p), "checksum")
    res = invoke(["prepare", "verify-shards", "--shards", shard_copy, "--split", "train", "--no-progress"])
    assert res.exit_code == 0 and "kitti train: 2 shards, 6 samples, ok" in res.output, res.output
    one_error_line(invoke(["evaluate", "--checkpoint", env["student"], "-d", "kitti", "--out", tmp_path / "ev",
                           "--shards", shard_copy, "--device", "cpu", "--no-progress"]), str(p))


def test_pixel_flip_uncompressed_only_sha256_sees_it(shard_copy):
    """Uncompressed pixels changed in place read back as other pixels: the size check (and so a
    plain `lix train`) cannot tell; `lix prepare verify-shards --sha256` and
    ShardDataset(verify="sha256") (lix.train.fit(verify="sha256")) refuse the shard."""
    p = shard_copy / "val-00000.h5"
    offset, size = rgb_chunk(p)
    flip(p, offset + size // 2, 16)
    res = invoke(["prepare", "verify-shards", "--shards", shard_copy, "--no-progress"])
    assert res.exit_code == 0 and "kitti val: 1 shard, 2 samples, ok" in res.output, res.output
    one_error_line(invoke(["prepare", "verify-shards", "--shards", shard_copy, "--sha256", "--no-progress"]),
                   str(p), "checksum does not match the manifest")
    with pytest.raises(DataError, match="val-00000.h5: checksum does not match"):
        ShardDataset(shard_copy, "val", verify="sha256")


@pytest.fixture(scope="module")
def gz(env, tmp_path_factory):
    return gzip_shards(env["shards"], tmp_path_factory.mktemp("gz") / "shards")


def test_pixel_flip_compressed_fails_the_read_in_a_worker_as_one_error(gz, tmp_path):
    from torch.utils.data import DataLoader

    shards = tmp_path / "shards"
    shutil.copytree(gz, shards)
    p = shards / "val-00000.h5"
    offset, size = rgb_chunk(p, 1)
    flip(p, offset + size // 2, 16)
    ds = ShardDataset(shards, "val")  # the default check passes: same size, intact header
    for workers in (0, 1):
        with pytest.raises(DataError) as e:
            list(DataLoader(ds, batch_size=1, num_workers=workers))
        assert e.value.path == p and "\n" not in str(e.value)
        assert e.value.problem.startswith("sample 1, dataset 'rgb': cannot be read (OSError"), e.value.problem
    one_error_line(invoke(["prepare", "verify-shards", "--shards", shards, "--sha256", "--no-progress"]), str(p))


def test_pixel_flip_compressed_cli_evaluate_and_train(env, gz, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(gz, shards)
    val, train = shards / "val-00000.h5", shards / "train-00000.h5"
    flip(val, sum(rgb_chunk(val, 0)) - 40, 16)
    line = one_error_line(invoke(["evaluate", "--checkpoint", env["student"], "-d", "kitti", "--out", tmp_path / "ev",
                                  "--shards", shards, "--device", "cpu", "--no-progress"]), str(val))
    assert "sample 0, dataset 'rgb'" in line and "verify-shards --sha256" in line
    shutil.copy(gz / val.name, val)
    flip(train, sum(rgb_chunk(train, 2)) - 40, 16)
    params = yaml.safe_load(env["params"].read_text())
    params["train"]["kitti"] |= {"num_workers": 1, "batch_size": 6}  # the damaged item is read by a worker
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_error_line(invoke(["train", "-d", "kitti", "--role", "student", "--out", tmp_path / "run",
                                  "--shards", shards, "--params", tmp_path / "params.yaml", "--no-evaluate",
                                  "--no-progress"]), str(train))
    assert "sample 2, dataset 'rgb'" in line


@pytest.mark.parametrize("damage, expected", [
    ("{", "not valid JSON"),
    ("[]", "not a shard manifest"),
    ('{"schema_version": 1, "dataset": "kitti", "class_names": ["a"], "splits": []}', "'splits'"),
    ('{"schema_version": 1, "dataset": "kitti", "class_names": ["a"], "splits": {"val": {"shards": [{}]}}}',
     "splits.val.shards[0].file"),
    ('{"schema_version": 1, "dataset": "kitti", "class_names": ["a"], '
     '"splits": {"val": {"shards": [{"file": "val-00000.h5", "count": "2", "sha256": "0"}]}}}',
     "splits.val.shards[0].count"),
])
def test_damaged_manifest_one_line(env, shard_copy, tmp_path, damage, expected):
    (shard_copy / MANIFEST).write_text(damage)
    one_error_line(invoke(["prepare", "verify-shards", "--shards", shard_copy, "--no-progress"]),
                   str(shard_copy / MANIFEST), expected)
    one_error_line(invoke(["evaluate", "--checkpoint", env["student"], "-d", "kitti", "--out", tmp_path / "ev",
                           "--shards", shard_copy, "--device", "cpu", "--no-progress"]), str(shard_copy / MANIFEST))


def test_verify_shards_command(env):
    res = invoke(["prepare", "verify-shards", "--shards", env["shards"], "--sha256", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        f"kitti train: 2 shards, 6 samples, ok (every byte) in {env['shards']}",
        f"kitti val: 1 shard, 2 samples, ok (every byte) in {env['shards']}"]
    one_error_line(invoke(["prepare", "verify-shards", "--no-progress"]), "--shards/--dataset")
    one_error_line(invoke(["prepare", "verify-shards", "--shards", env["shards"].parent / "nope", "--no-progress"]),
                   "manifest.json", "not found")


# --------------------------------------------------------------------------- lix report
# name: (file of seed1 damaged, its text, whether the report counts seed1 as failed: a
# metrics.json without a finite miou is a failed run; config.json / summary.json are optional
# detail; None: either way, lix/report's choice, as long as it ends cleanly)
REPORT_DAMAGE = {
    "metrics_empty_object": ("metrics.json", "{}", True),
    "metrics_invalid_json": ("metrics.json", '{"miou": 0.5,', True),
    "metrics_zero_bytes": ("metrics.json", "", True),
    "metrics_miou_string": ("metrics.json", json.dumps({"miou": "high"}), True),
    "metrics_list": ("metrics.json", "[1, 2]", True),
    "metrics_per_class_string": ("metrics.json", json.dumps({"miou": 0.5, "mfsc": 0.4, "per_class_iou": "road"}),
                                 None),
    "metrics_scalars_wrong_types": ("metrics.json", json.dumps({"miou": 0.5, "mfsc": [1], "fwiou": {"a": 1},
                                                                "per_class_iou": {"road": "x"}}), None),
    "summary_invalid_json": ("summary.json", "{", False),
    "summary_wrong_types": ("summary.json", json.dumps({"epochs": "two", "history": 3, "last": [1]}), False),
    "config_invalid_json": ("config.json", "not json", False),
    "config_wrong_types": ("config.json", json.dumps({"distill": {"hyper": [1, 2]}, "train": 3}), False),
}


@pytest.mark.parametrize("name", sorted(REPORT_DAMAGE))
def test_report_on_damaged_run_files(tmp_path, name):
    """lix report documents an unreadable metrics.json as a failed run (with why) and
    config.json / summary.json as optional detail (ignored with a note): exit 0, no traceback,
    the counts in the one line it prints; or a one-line error naming the file."""
    file, text, failed = REPORT_DAMAGE[name]
    good = {"miou": 0.6, "mfsc": 0.7, "fwfsc": 0.7, "fwiou": 0.6, "pixel_acc": 0.8, "dataset": "kitti",
            "model": "mfnet", "role": "student", "per_class_iou": {"road": 0.9, "car": 0.3},
            "per_class_f1": {"road": 0.9, "car": 0.4}}
    runs = tmp_path / "runs"
    for seed in (0, 1):
        d = runs / "kitti" / "mfnet" / "student" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(good | {"miou": 0.6 + seed / 100}))
    (runs / "kitti" / "mfnet" / "student" / "seed1" / file).write_text(text)
    res = invoke(["report", "--runs", runs, "--out", tmp_path / "report", "--no-plots", "--no-paper",
                  "--no-progress"])
    if res.exit_code != 0:
        one_error_line(res, file)
        return
    assert "Traceback" not in res.output and res.exception is None, res.output
    counts = {True: ["1 finished, 1 failed"], False: ["2 finished, 0 failed"],
              None: ["1 finished, 1 failed", "2 finished, 0 failed"]}[failed]
    assert any(c in res.output for c in counts), res.output
    if failed:
        assert "metrics.json" in (tmp_path / "report" / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- params.yaml
PARAMS_DAMAGE = {
    # name: (edit of the parsed params, or raw text, what the error line names)
    "not_yaml": ("train: {kitti: [unclosed\n", "params.yaml"),
    "not_a_mapping": ("- just\n- a list\n", "expected a mapping"),
    "unknown_key": (lambda p: p["train"]["kitti"].update(epoch=3), "train.kitti.epoch"),
    "wrong_type": (lambda p: p["train"]["kitti"].update(lr="fast"), "train.kitti.lr"),
    "out_of_range": (lambda p: p["train"]["kitti"].update(batch_size=0), "train.kitti.batch_size"),
    "unknown_method": (lambda p: p["sweep"].update(methods=["student", "lixx"]), "sweep.methods"),
    "unknown_model": (lambda p: p["sweep"].update(models=["mfnett"]), "sweep.models"),
    "hyper_type": (lambda p: p["distill"]["hyper"]["kd"].update(temperature="hot"), "distill.hyper.kd.temperature"),
    "hyper_key": (lambda p: p["distill"]["hyper"]["kd"].update(temprature=2.0), "distill.hyper.kd.temprature"),
    "unsafe_name": (lambda p: p["sweep"].update(methods=["student", "../../x"]), "sweep.methods"),
}


def _damaged_params(env, tmp_path: Path, name: str) -> Path:
    damage, _ = PARAMS_DAMAGE[name]
    path = tmp_path / "params.yaml"
    if isinstance(damage, str):
        path.write_text(damage)
    else:
        params = yaml.safe_load(env["params"].read_text())
        damage(params)
        path.write_text(yaml.safe_dump(params))
    return path


# lix train checks the models and training recipes only: a teacher does not depend on the methods
_METHODS_ONLY = ("unknown_method", "hyper_type", "hyper_key", "unsafe_name")


@pytest.mark.parametrize("command, name", [(c, n) for c in ("check-params", "train", "distill")
                                           for n in sorted(PARAMS_DAMAGE) if not (c == "train" and n in _METHODS_ONLY)])
def test_damaged_params_one_line(env, tmp_path, command, name):
    """Every command that reads params.yaml refuses a damaged one in one line naming the key
    (or the file), before it touches anything: the run directory is not even created."""
    path = _damaged_params(env, tmp_path, name)
    out = tmp_path / "run"
    args = {"check-params": ["prepare", "check-params", "--params", path],
            "train": ["train", "-d", "kitti", "--role", "student", "--out", out, "--shards", env["shards"],
                      "--params", path, "--no-progress"],
            "distill": ["distill", "-d", "kitti", "-m", "kd", "--teacher", env["student"], "--out", out,
                        "--shards", env["shards"], "--params", path, "--no-progress"]}[command]
    res = invoke(args)
    one_error_line(res, PARAMS_DAMAGE[name][1])
    assert not out.exists()
