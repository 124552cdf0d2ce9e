"""Geometry quality (pipeline.geometry_quality): golden values on normals whose angles are known,
pooling over frames, and the metrics file written by `lix prepare normals --metrics`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lix.cli import app
from pipeline.geometry_quality import BIN_DEG, THRESHOLDS_DEG, angular_error_deg, frame_geometry, summarise_geometry


def _tilted(angles_deg: np.ndarray) -> np.ndarray:
    """Unit normals tilted by the given angles from (0, 0, -1), about axes that vary per pixel."""
    a = np.radians(angles_deg)
    phi = np.linspace(0, 2 * np.pi, a.size, endpoint=False).reshape(a.shape)  # tilt direction
    return np.stack([np.sin(a) * np.cos(phi), np.sin(a) * np.sin(phi), -np.cos(a)], -1)


def test_angular_error_of_known_pairs():
    ref = np.array([[0.0, 0.0, -1.0]] * 5)
    est = np.array([[0, 0, -1], [0, -1, 0], [0, 0, 1], [0, -np.sin(0.3), -np.cos(0.3)], [0, 0, -7.0]])
    np.testing.assert_allclose(angular_error_deg(est, ref), [0, 90, 180, np.degrees(0.3), 0], atol=1e-6)
    assert np.isnan(angular_error_deg(np.zeros(3), ref[0]))  # no direction: no angle


def test_golden_summary_of_known_angles_pooled_over_frames():
    rng = np.random.default_rng(0)
    # Frame 1: 6x7 pixels, frame 2: 5x4; each with some invalid estimated / reference pixels.
    angles = [rng.uniform(0, 60, (6, 7)), rng.uniform(0, 45, (5, 4))]
    ok_est = [rng.random((6, 7)) > 0.2, rng.random((5, 4)) > 0.3]
    ok_ref = [rng.random((6, 7)) > 0.1, np.ones((5, 4), bool)]
    depth_ok = [rng.random((6, 7)) > 0.25, rng.random((5, 4)) > 0.5]
    parts = []
    for ang, oe, orf, dv in zip(angles, ok_est, ok_ref, depth_ok):
        est = _tilted(ang)
        est[~oe] = 0.0
        ref = np.zeros_like(est)
        ref[...] = (0.0, 0.0, -1.0)
        ref[~orf] = 0.0
        parts.append(frame_geometry(est, oe, ref, orf, depth_valid=dv))
    s = summarise_geometry(parts)

    # The same numbers computed independently from the angles themselves.
    used = np.concatenate([a[oe & orf] for a, oe, orf in zip(angles, ok_est, ok_ref)])
    total = sum(a.size for a in angles)
    vs = s["vs_reference"]
    assert s["frames"] == 2 and vs["pixels"] == used.size
    assert vs["mean_deg"] == pytest.approx(used.mean(), abs=1e-6)
    assert vs["median_deg"] == pytest.approx(np.median(used), abs=2 * BIN_DEG)
    for t in THRESHOLDS_DEG:
        assert vs[f"within_{t:g}"] == pytest.approx((used < t).mean())
    assert s["normals_valid_share"] == pytest.approx(sum(o.sum() for o in ok_est) / total)
    assert s["depth_valid_share"] == pytest.approx(sum(d.sum() for d in depth_ok) / total)
    assert vs["reference_valid_share"] == pytest.approx(sum(o.sum() for o in ok_ref) / total)


def test_exact_thresholds_and_median_of_a_small_set():
    # Angles 0, 10, 11.25 (not within: strict <), 20, 29.9, 45, 90 -> median 20.
    angles = np.array([[0.0, 10.0, 11.25, 20.0, 29.9, 45.0, 90.0]])
    est = _tilted(angles)
    ref = np.broadcast_to(np.array([0.0, 0.0, -1.0]), est.shape)
    vs = summarise_geometry([frame_geometry(est, np.ones(angles.shape, bool), ref, np.ones(angles.shape, bool))])[
        "vs_reference"]
    assert vs["median_deg"] == pytest.approx(20.0, abs=2 * BIN_DEG)
    assert vs["mean_deg"] == pytest.approx(angles.mean(), abs=1e-6)
    assert vs["within_11.25"] == pytest.approx(2 / 7)
    assert vs["within_22.5"] == pytest.approx(4 / 7)
    assert vs["within_30"] == pytest.approx(5 / 7)


def test_without_reference_only_valid_shares():
    n = np.zeros((4, 5, 3))
    ok = np.zeros((4, 5), bool)
    ok[:2] = True
    n[ok] = (0, -1, 0)
    s = summarise_geometry([frame_geometry(n, ok, depth_valid=ok)])
    assert s["vs_reference"] is None and s["normals_valid_share"] == 0.5 and s["depth_valid_share"] == 0.5


def test_normals_stage_writes_geometry_metrics(synth_root, tmp_path, monkeypatch):
    """`lix prepare normals` writes data/metrics/geometry_<dataset>.json by default; with the
    source's own depth (backend ground_truth) the normals agree with the reference."""
    import shutil

    shutil.copytree(synth_root / "kitti", tmp_path / "data/raw/kitti")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("splits:\n  kitti: {n_images: 8, ratio: [3, 1]}\n"
                                          "depth:\n  kitti: {backend: ground_truth}\n")
    runner = CliRunner()
    for cmd in (["splits"], ["depth"], ["normals"]):
        res = runner.invoke(app, ["prepare", *cmd, "-d", "kitti", "--no-progress"])
        assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "data/metrics/geometry_kitti.json").read_text())
    vs = m["vs_reference"]
    assert m["frames"] == 8 and m["depth_backend"] == {"ground_truth": 8} and m["estimator"]
    assert 0.5 < m["normals_valid_share"] <= m["depth_valid_share"] <= 1.0
    assert vs["pixels"] > 0 and vs["median_deg"] < 1.0 and vs["within_11.25"] > 0.9
    # --metrics names another path.
    res = runner.invoke(app, ["prepare", "normals", "-d", "kitti", "--no-progress", "--metrics", "other.json"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "other.json").read_text())["vs_reference"] == vs
