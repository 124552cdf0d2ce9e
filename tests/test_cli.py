"""The lix CLI end to end on a tiny configuration: download (synthesise) then splits."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lix.cli import app


def test_prepare_download_and_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "synthetic:\n  nuimages: {n_images: 10, width: 96, height: 54}\n"
        "splits:\n  nuimages: {n_images: 10, ratio: [7, 3], seed: 1}\n")
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "download", "-d", "nuimages", "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "data/raw/nuimages/v1.0-train/sample.json").is_file()
    res = runner.invoke(app, ["prepare", "splits", "-d", "nuimages", "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "data/splits/nuimages.json").read_text())
    assert m["counts"] == {"train": 7, "val": 3}
    assert m["class_names"][:2] == ["background", "driveable_surface"]


def test_help_on_every_option():
    res = CliRunner().invoke(app, ["prepare", "download", "--help"])
    assert res.exit_code == 0
    for opt in ("--dataset", "--root", "--params", "--cache", "--workers", "--progress"):
        assert opt in res.output
