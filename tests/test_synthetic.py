"""The renderer is exact on analytic scenes, and the writers are deterministic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.sources.synthetic import generate
from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.render import Camera, Lighting, Material, Quad, Scene, render, rotation


def _mat():
    return Material(np.full(3, 0.5), np.zeros((1, 3)), np.zeros(1), 0.0, 0.0, 1.0)


def _light():
    return Lighting(np.array([0, -1.0, 0]), 0.5, 0.5, np.ones(3), np.ones(3), 1e9, np.ones(3))


K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])


def _cam(h=1.65):
    return Camera(K, 64, 48, np.array([0.0, -h, 0.0]), rotation(0.0, 0.0))


def test_ground_plane_depth_and_normal():
    ground = Quad(np.array([-500.0, 0, -1]), np.array([1000.0, 0, 0]), np.array([0, 0, 1000.0]), C.ROAD, _mat())
    out = render(Scene([ground], _light()), _cam(1.65))
    v = np.arange(48)
    below = v > K[1, 2]
    expected = 1.65 * K[1, 1] / (v[below] - K[1, 2])  # z = h * fy / (v - cy)
    np.testing.assert_allclose(out.depth[below][:, 10], expected, rtol=1e-6)  # float32 output
    assert np.isinf(out.depth[~below]).all() and (out.cls[~below] == C.SKY).all()
    np.testing.assert_allclose(out.normal[below], np.broadcast_to([0, -1, 0], out.normal[below].shape), atol=1e-9)


def test_wall_and_stereo_disparity():
    wall = Quad(np.array([-50.0, -50, 10]), np.array([100.0, 0, 0]), np.array([0, 100.0, 0]), C.WALL, _mat())
    scene = Scene([wall], _light())
    cam = _cam()
    left = render(scene, cam)
    np.testing.assert_allclose(left.depth, 10.0)
    np.testing.assert_allclose(left.normal, np.broadcast_to([0, 0, -1], left.normal.shape), atol=1e-9)
    # A box edge seen by both cameras moves by fx * B / Z pixels.
    post = Quad(np.array([0.0, -50, 10 - 1e-3]), np.array([0.5, 0, 0]), np.array([0, 100.0, 0]), C.POLE, _mat())
    scene = Scene([wall, post], _light())
    B = 0.5
    l_cols = np.flatnonzero((render(scene, cam).cls == C.POLE).any(0))
    r_cols = np.flatnonzero((render(scene, cam.shifted(B)).cls == C.POLE).any(0))
    assert l_cols[0] - r_cols[0] == pytest.approx(K[0, 0] * B / 10.0, abs=1)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["kitti", "vkitti2", "nuimages"])
def test_deterministic_whatever_the_workers(tmp_path, name):
    kw = dict(n_images=4, width=96, height=48, seed=9)
    a = generate(name, tmp_path / "a", workers=1, progress=False, **kw)
    b = generate(name, tmp_path / "b", workers=2, progress=False, **kw)
    assert _digest(a) == _digest(b)
    c = generate(name, tmp_path / "c", workers=1, progress=False, **{**kw, "seed": 10})
    assert _digest(c) != _digest(a)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    import pipeline.sources.synthetic.kitti as sk

    calls = {"n": 0}
    real = sk.render_frame

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(sk, "render_frame", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate("kitti", tmp_path / "kitti", n_images=5, width=64, height=32, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []
