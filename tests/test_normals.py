"""SNE normals on analytic surfaces, invalid handling, and numpy/torch parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.normals import surface_normals, surface_normals_torch

K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])
H, W = 120, 160


def _rays():
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)


def _plane_depth(n, d):
    """z-depth of the plane n . P + d = 0 (0 where the ray misses it in front)."""
    denom = _rays() @ n
    with np.errstate(divide="ignore"):
        z = -d / denom
    return np.where((z > 0) & np.isfinite(z), z, 0.0)


def _angle_deg(a, b):
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


@pytest.mark.parametrize("n_true,d", [
    ((0.0, -1.0, 0.0), 1.65),  # flat ground 1.65 m below the camera (y down)
    ((0.0, 0.0, -1.0), 10.0),  # fronto-parallel wall 10 m ahead
    ((-0.5, -0.3, -0.81), 6.0),  # a tilted plane
])
def test_planes(n_true, d):
    n_true = np.array(n_true) / np.linalg.norm(n_true)
    depth = _plane_depth(n_true, d)
    normals, ok = surface_normals(depth, K, return_mask=True)
    assert ok.sum() > 0.3 * H * W
    assert _angle_deg(normals[ok], n_true).max() < 1.0
    assert (normals[~ok] == 0).all()


def test_sphere():
    c, r = np.array([0.3, -0.2, 6.0]), 2.0
    rays = _rays()
    b = rays @ c
    a = (rays * rays).sum(-1)
    disc = b * b - a * (c @ c - r * r)
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    depth = np.where(disc > 0, t, 0.0)
    P = rays * t[..., None]
    n_true = (P - c) / r
    normals, ok = surface_normals(depth, K, return_mask=True)
    # Away from the silhouette (where the surface turns away from the camera).
    inner = ok & (disc > 0.05 * disc.max())
    assert inner.sum() > 1000
    assert _angle_deg(normals[inner], n_true[inner]).max() < 1.0


def test_invalid_pixels_are_masked():
    depth = _plane_depth(np.array([0.0, 0.0, -1.0]), 10.0)
    depth[40:50, 60:70] = 0.0
    depth[10, 10] = np.nan
    depth[90:95, 20:30] = np.inf
    normals, ok = surface_normals(depth, K, return_mask=True)
    for sl in [(slice(40, 50), slice(60, 70)), (10, 10), (slice(90, 95), slice(20, 30))]:
        assert not ok[sl].any()
        assert (normals[sl] == 0).all()
    assert ok[20:30, 100:110].all()
    assert np.isfinite(normals).all()
    np.testing.assert_allclose(np.linalg.norm(normals[ok], axis=-1), 1.0, atol=1e-5)


def test_torch_matches_numpy_on_synthetic_depth(synth_root):
    from pipeline.sources import create_reader

    r = create_reader("kitti", synth_root / "kitti")
    frames = [r.frame(i) for i in r.ids()[:3]]
    depth = torch.tensor(np.stack([f.depth for f in frames]))
    Ks = torch.tensor(np.stack([f.K for f in frames]))
    nt, okt = surface_normals_torch(depth, Ks)
    for i, f in enumerate(frames):
        n, ok = surface_normals(f.depth, f.K, return_mask=True)
        np.testing.assert_array_equal(okt[i].numpy(), ok)
        np.testing.assert_allclose(nt[i].permute(1, 2, 0).numpy(), n, atol=5e-4)  # float32 op order
