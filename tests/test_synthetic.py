"""The renderer is exact on analytic scenes, and the writers are deterministic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.sources.synthetic import generate
from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.render import (
    Box,
    Camera,
    Cylinder,
    Lighting,
    Material,
    Quad,
    Scene,
    Sphere,
    render,
    rotation,
)


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


def test_cylinder_depth_and_normals_are_exact():
    """An upright cylinder (r = 0.5 m, axis 5 m ahead): each column's depth solves
    (a t)^2 + (t - 5)^2 = r^2 with a = (u - cx) / fx; the normal is the radial direction."""
    R, Z = 0.5, 5.0
    post = Cylinder(np.array([0.0, 0.0, Z]), np.array([0.0, -3.0, Z]), R, R, C.POLE, _mat())
    out = render(Scene([post], _light()), _cam(1.65))
    a = (np.arange(64) - K[0, 2]) / K[0, 0]
    disc = Z**2 - (1 + a**2) * (Z**2 - R**2)
    inside = disc >= 0
    t = (Z - np.sqrt(np.where(inside, disc, 0))) / (1 + a**2)
    assert 18 <= inside.sum() <= 22  # |u - cx| <= fx * r / sqrt(Z^2 - r^2) = 10.05 px
    np.testing.assert_allclose(out.depth[:, inside], np.broadcast_to(t[inside], (48, inside.sum())), rtol=1e-6)
    assert (out.cls[:, ~inside] == C.SKY).all() and (out.cls[:, inside] == C.POLE).all()
    expected = np.stack([a * t, np.zeros_like(t), t - Z], -1) / R
    np.testing.assert_allclose(out.normal[:, inside], np.broadcast_to(expected[inside], (48, inside.sum(), 3)),
                               atol=1e-5)


def test_cone_frustum_normal_tilts_up_and_cap_faces_the_camera():
    """A frustum narrowing upwards (r 0.6 -> 0.2 over 3 m): on the column through its axis the
    surface sits at z = Z - r(height) and its normal is (0, k, -1) / |.| with k = dr/ds < 0
    (tilted towards -Y, up). A cylinder seen along its axis shows its cap: depth 6, normal -z."""
    Kc = np.array([[100.0, 0, 32.0], [0, 100.0, 23.5], [0, 0, 1]])
    cam = Camera(Kc, 64, 48, np.array([0.0, -1.65, 0.0]), rotation(0.0, 0.0))
    Z, r0, r1, L = 5.0, 0.6, 0.2, 3.0
    cone = Cylinder(np.array([0.0, 0.0, Z]), np.array([0.0, -L, Z]), r0, r1, C.TRAFFIC_CONE, _mat())
    out = render(Scene([cone], _light()), cam)
    k = (r1 - r0) / L
    b = (np.arange(48) - Kc[1, 2]) / Kc[1, 1]
    t = (Z - r0 - 1.65 * k) / (1 - k * b)  # z = Z - (r0 + k * (1.65 - b t)) on the axis column
    height = 1.65 - b * t
    rows = (height > 0.05) & (height < L - 0.05)
    np.testing.assert_allclose(out.depth[rows, 32], t[rows], rtol=1e-6)
    np.testing.assert_allclose(out.normal[rows, 32], np.broadcast_to(np.array([0, k, -1]) / np.hypot(1, k),
                                                                      (rows.sum(), 3)), atol=1e-6)
    tube = Cylinder(np.array([0.0, -1.65, 6.0]), np.array([0.0, -1.65, 9.0]), 1.0, 1.0, C.BUS, _mat())
    end = render(Scene([tube], _light()), cam)
    centre = (slice(20, 28), slice(28, 37))
    np.testing.assert_allclose(end.depth[centre], 6.0, rtol=1e-6)
    np.testing.assert_allclose(end.normal[centre], np.broadcast_to([0, 0, -1.0], (8, 9, 3)), atol=1e-9)


def _extent(prim):
    """Exact world bounding box (a frustum's end discs reach r * sqrt(1 - e_j^2) along axis j)."""
    if isinstance(prim, Box):
        return prim.lo, prim.hi
    if isinstance(prim, Sphere):
        return prim.centre - prim.radius, prim.centre + prim.radius
    e = (prim.p1 - prim.p0) / np.linalg.norm(prim.p1 - prim.p0)
    reach = np.sqrt(np.clip(1 - e**2, 0, 1))
    ends = [prim.p0 - prim.r0 * reach, prim.p0 + prim.r0 * reach, prim.p1 - prim.r1 * reach, prim.p1 + prim.r1 * reach]
    return np.min(ends, 0), np.max(ends, 0)


def _object_boxes(scene):
    """Object id -> (lo, hi) world bounding box of its primitives."""
    boxes = {}
    for prim in scene.prims:
        if prim.obj:
            lo, hi = _extent(prim)
            if prim.obj in boxes:
                lo, hi = np.minimum(lo, boxes[prim.obj][0]), np.maximum(hi, boxes[prim.obj][1])
            boxes[prim.obj] = (lo, hi)
    return boxes


@pytest.mark.parametrize("name", ["kitti", "nuimages"])
def test_people_and_things_stand_where_they_belong(name):
    """Over 40 scenes: pedestrians are 0.9-2.0 m tall and stand on the road (Y = 0) or a
    sidewalk (raised 0.10-0.22 m); ridden two-wheelers touch the road itself; cones, barriers,
    bins and racks stand on a surface; no two objects' footprints overlap; every object has
    an identity the writers can map."""
    from pipeline.sources.synthetic.common import frame_rng
    from pipeline.sources.synthetic.scene import KITTI_POPULATION, NUIMAGES_POPULATION, sample_scene

    pop = {"kitti": KITTI_POPULATION, "nuimages": NUIMAGES_POPULATION}[name]
    kinds = set()
    for i in range(40):
        scene, _ = sample_scene(frame_rng(123, "placement", i), population=pop)
        boxes = _object_boxes(scene)
        assert set(boxes) <= set(scene.objects) and len(scene.objects) == scene.n_objects
        for obj, (lo, hi) in boxes.items():
            info = scene.objects[obj]
            kinds.add(info.kind)
            bottom, top = hi[1], lo[1]  # Y points down
            if info.kind.startswith("pedestrian."):
                assert 0.9 <= bottom - top <= 2.0, info
                assert -0.22 - 1e-9 <= bottom <= 0.02, info  # a striding foot dips < 2 cm
                assert info.state in ("moving", "standing")
            elif info.kind in ("bicycle", "motorcycle") and info.state == "with_rider":
                assert bottom == pytest.approx(0.0, abs=1e-9), info
            elif info.kind in ("trafficcone", "barrier", "pushable_pullable", "bicycle_rack"):
                assert -0.22 - 1e-9 <= bottom <= 1e-9, info
        ids = sorted(boxes)
        for j, a in enumerate(ids):
            for b in ids[j + 1:]:
                (la, ha), (lb, hb) = boxes[a], boxes[b]
                overlap = (la[0] < hb[0]) and (lb[0] < ha[0]) and (la[2] < hb[2]) and (lb[2] < ha[2])
                assert not overlap, (scene.objects[a], scene.objects[b])
    expected = {"pedestrian.adult", "bicycle", "motorcycle", "barrier", "trafficcone", "debris",
                "pushable_pullable", "car", "truck"}
    assert expected <= kinds
    assert ("tram" in kinds) == (name == "kitti")  # nuImages streets have no trams


def test_vkitti2_streets_hold_only_its_own_classes():
    """vKITTI2 scenes are sampled without a population: cars, vans and trucks only, and its
    colors.txt is the official one (no invented classes)."""
    from pipeline.labels import VKITTI2_COLORS
    from pipeline.sources.synthetic.vkitti2 import VKittiJob, colors_text, render_views

    for f in range(3):
        for _, out in render_views(VKittiJob("", 0, "clone", f, 96, 32, 0)):
            assert out.cls.max() <= C.TRUCK
            assert {o.kind for o in out.objects.values()} <= {"car", "van", "truck"}
    assert colors_text().splitlines()[1:] == [f"{k} {r} {g} {b}" for k, (r, g, b) in VKITTI2_COLORS.items()]
    assert len(VKITTI2_COLORS) == 15


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
