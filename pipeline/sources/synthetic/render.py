"""Vectorised ray casting of procedural driving scenes.

World frame: X right, Y down, Z forward along the road; the ground is the plane Y = 0,
so "up" is negative Y. Camera frame: x right, y down, z forward (OpenCV). Rays are built
as d_cam = ((u - cx)/fx, (v - cy)/fy, 1), so the ray parameter t of a hit *is* the hit's
z-depth in metres. One pass per primitive, each vectorised over all pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.sources.synthetic.classes import C

_EPS = 1e-3


@dataclass
class Material:
    """Surface appearance: base albedo (RGB in 0..1) and procedural texture parameters."""

    albedo: np.ndarray
    tex_freqs: np.ndarray  # (K, 3) spatial frequencies, radians per metre
    tex_phases: np.ndarray  # (K,)
    tex_amp: float  # amplitude of the sinusoidal texture
    grain: float  # amplitude of the world-anchored per-cell grain
    grain_cell: float  # grain cell size, metres


@dataclass
class Quad:
    """Parallelogram p0 + a*u + b*v, a, b in [0, 1]."""

    p0: np.ndarray
    u: np.ndarray
    v: np.ndarray
    cls: int
    mat: Material
    obj: int = 0


@dataclass
class Box:
    """Axis-aligned box in world coordinates."""

    lo: np.ndarray
    hi: np.ndarray
    cls: int
    mat: Material
    obj: int = 0


@dataclass
class Sphere:
    centre: np.ndarray
    radius: float
    cls: int
    mat: Material
    obj: int = 0


@dataclass
class Cylinder:
    """Capped cone frustum around the segment p0 -> p1, radius r0 at p0 and r1 at p1 (either
    may be 0): limbs, wheels (a short fat axis), tubes, cones, bins."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    cls: int
    mat: Material
    obj: int = 0


@dataclass(frozen=True)
class ObjectInfo:
    """What one object id is, independent of any dataset's taxonomy (the writers map it):
    ``kind`` e.g. "car", "bus.bendy", "pedestrian.child", "bicycle", "trafficcone";
    ``state`` e.g. "moving", "parked", "standing", "with_rider" ("" when none applies)."""

    kind: str
    state: str = ""


@dataclass
class Lighting:
    sun: np.ndarray  # unit vector from surface towards the sun (world frame)
    ambient: float
    diffuse: float
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    haze_m: float  # distance at which 63 % of the colour is haze
    tint: np.ndarray


@dataclass
class Camera:
    """Pinhole camera. ``position`` in world metres, ``R_wc`` rotates camera to world axes."""

    K: np.ndarray
    width: int
    height: int
    position: np.ndarray
    R_wc: np.ndarray

    def shifted(self, dx: float) -> "Camera":
        """The same camera moved ``dx`` metres along its own x axis (a stereo partner)."""
        return Camera(self.K, self.width, self.height, self.position + self.R_wc[:, 0] * dx, self.R_wc)


@dataclass
class Scene:
    prims: list = field(default_factory=list)
    lighting: Lighting | None = None
    n_objects: int = 0
    objects: dict = field(default_factory=dict)  # object id -> ObjectInfo


@dataclass
class Render:
    """Rendered frame. depth: (H, W) float32 z-depth in metres, inf = sky.
    cls, obj: (H, W) internal class / object id (0 = none). normal: (H, W, 3) camera-frame
    unit normals facing the camera (0 for sky). rgb: (H, W, 3) uint8. objects: the scene's
    object id -> ObjectInfo."""

    rgb: np.ndarray
    depth: np.ndarray
    cls: np.ndarray
    obj: np.ndarray
    normal: np.ndarray
    objects: dict = field(default_factory=dict)


def rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation: pitch about x (positive looks down), then yaw about y."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def camera_rays(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Ray directions. Returns (d_cam, d_world), each (H*W, 3), z-component of d_cam = 1."""
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    d_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    return d_cam, d_cam @ cam.R_wc.T


def _hit_quad(q: Quad, o: np.ndarray, d: np.ndarray):
    n = np.cross(q.u, q.v)
    denom = d @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((q.p0 - o) @ n) / denom
    rel = o[None, :] + t[:, None] * d - q.p0
    a = rel @ q.u / (q.u @ q.u)
    b = rel @ q.v / (q.v @ q.v)
    ok = (t > _EPS) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & np.isfinite(t)
    t = np.where(ok, t, np.inf)
    normal = np.broadcast_to(n / np.linalg.norm(n), d.shape)
    return t, normal


def _hit_box(b: Box, o: np.ndarray, d: np.ndarray):
    # Axis-parallel rays: a tiny component keeps the slab arithmetic finite (no NaN).
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1 = (b.lo - o) * inv
    t2 = (b.hi - o) * inv
    t_small = np.minimum(t1, t2)
    t_near = t_small.max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    ok = (t_far >= t_near) & (t_near > _EPS)
    t = np.where(ok, t_near, np.inf)
    axis = t_small.argmax(axis=1)
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = 1.0
    return t, normal


def _hit_sphere(s: Sphere, o: np.ndarray, d: np.ndarray):
    oc = o - s.centre
    a = np.einsum("ij,ij->i", d, d)
    b = d @ oc
    c = oc @ oc - s.radius**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    ok = (disc >= 0) & (t > _EPS)
    t = np.where(ok, t, np.inf)
    p = o + np.where(ok, t, 0.0)[:, None] * d
    return t, (p - s.centre) / s.radius


def _hit_cylinder(c: Cylinder, o: np.ndarray, d: np.ndarray):
    """Side: |w|^2 = r(s)^2 with s the coordinate along the axis, w the offset across it and
    r(s) = r0 + k s; a quadratic in t. Caps: the planes s = 0 and s = L inside their radius."""
    axis = c.p1 - c.p0
    length = float(np.linalg.norm(axis))
    e = axis / length
    k = (c.r1 - c.r0) / length
    q = o - c.p0
    qs = float(q @ e)
    q_perp = q - qs * e
    ds = d @ e
    rq = c.r0 + k * qs  # r(s) at t = 0
    a = np.einsum("ij,ij->i", d, d) - ds * ds - (k * ds) ** 2
    b = 2.0 * (d @ q_perp - k * ds * rq)
    cc = float(q_perp @ q_perp) - rq * rq
    disc = b * b - 4.0 * a * cc
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(disc)
        cands = [(-b - root) / (2.0 * a), (-b + root) / (2.0 * a)]
        side_ok = []
        for t in cands:
            s = qs + t * ds
            side_ok.append((disc >= 0) & (np.abs(a) > 1e-12) & (s >= 0) & (s <= length))
        caps = []
        for s_cap, r_cap in ((0.0, c.r0), (length, c.r1)):
            t = (s_cap - qs) / ds
            w = q_perp[None, :] + t[:, None] * (d - ds[:, None] * e)
            caps.append((t, (r_cap > 0) & (np.einsum("ij,ij->i", w, w) <= r_cap * r_cap)))
    ts = np.stack([np.where(ok & (t > _EPS), t, np.inf) for t, ok in zip(cands, side_ok)]
                  + [np.where(ok & (t > _EPS), t, np.inf) for t, ok in caps], axis=1)
    which = ts.argmin(axis=1)
    t = ts[np.arange(len(d)), which]
    hit = np.isfinite(t)
    tt = np.where(hit, t, 0.0)
    w = q_perp[None, :] + tt[:, None] * (d - ds[:, None] * e)
    r = rq + k * ds * tt
    normal = w - (k * r)[:, None] * e
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    cap = which >= 2
    normal[cap] = e
    return t, normal


_HIT = {Quad: _hit_quad, Box: _hit_box, Sphere: _hit_sphere, Cylinder: _hit_cylinder}


def _corners(prim) -> np.ndarray:
    """World-space points whose convex hull contains the primitive. (N, 3)"""
    if isinstance(prim, Quad):
        return np.stack([prim.p0, prim.p0 + prim.u, prim.p0 + prim.v, prim.p0 + prim.u + prim.v])
    if isinstance(prim, Cylinder):  # the end discs reach r * sqrt(1 - e_j^2) along axis j
        e = (prim.p1 - prim.p0) / np.linalg.norm(prim.p1 - prim.p0)
        reach = np.sqrt(np.clip(1.0 - e * e, 0.0, 1.0))
        ends = np.stack([prim.p0 - prim.r0 * reach, prim.p0 + prim.r0 * reach, prim.p1 - prim.r1 * reach,
                         prim.p1 + prim.r1 * reach])
        lo, hi = ends.min(0), ends.max(0)
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    lo, hi = (prim.lo, prim.hi) if isinstance(prim, Box) else (prim.centre - prim.radius, prim.centre + prim.radius)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _screen_window(prim, cam: "Camera") -> tuple[slice, slice] | None:
    """Pixel rows/cols that can see ``prim``; None when it is behind the camera.

    Primitives straddling the image plane (the ground) get the whole image.
    """
    pc = (_corners(prim) - cam.position) @ cam.R_wc  # world -> camera
    z = pc[:, 2]
    if (z <= _EPS).all():
        return None
    if (z <= _EPS).any():
        return slice(0, cam.height), slice(0, cam.width)
    u = cam.K[0, 0] * pc[:, 0] / z + cam.K[0, 2]
    v = cam.K[1, 1] * pc[:, 1] / z + cam.K[1, 2]
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, cam.width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, cam.height)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def _grain(p: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """World-anchored value noise in [-0.5, 0.5], constant over cells of ``cell`` metres
    (per point). Anchored to the world (not the image) so a stereo partner sees the same
    texture."""
    level = np.log2(cell).round().astype(np.int64).astype(np.uint64)
    i = np.floor(p / cell[:, None]).astype(np.int64).astype(np.uint64)
    h = i[:, 0] * np.uint64(73856093) ^ i[:, 1] * np.uint64(19349663) ^ i[:, 2] * np.uint64(83492791)
    h ^= level * np.uint64(2654435761)
    h ^= h >> np.uint64(13)
    h *= np.uint64(1274126177)
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 65535.0 - 0.5


def _mip_cell(base: float, footprint: np.ndarray) -> np.ndarray:
    """Grain cell size per point: the material's cell, doubled until it spans at least two
    pixels' footprints, like a mipmap level. Point-sampling finer texture would alias
    differently in the two views of a stereo pair."""
    levels = np.maximum(0.0, np.ceil(np.log2(np.maximum(2.0 * footprint / base, 1e-9))))
    return base * 2.0**levels


def render(scene: Scene, cam: Camera, noise_rng: np.random.Generator | None = None) -> Render:
    """Ray-cast ``scene`` from ``cam``; see :class:`Render` for the outputs."""
    h, w = cam.height, cam.width
    _, d = camera_rays(cam)
    d_img = d.reshape(h, w, 3)
    o = cam.position.astype(np.float64)
    best = np.full((h, w), np.inf)
    idx = np.full((h, w), -1, dtype=np.int64)
    normal = np.zeros((h, w, 3))
    for k, prim in enumerate(scene.prims):
        win = _screen_window(prim, cam)
        if win is None:
            continue
        sub = d_img[win]
        t, nrm = _HIT[type(prim)](prim, o, sub.reshape(-1, 3))
        t = t.reshape(sub.shape[:2])
        closer = t < best[win]
        if not closer.any():
            continue
        best[win][closer] = t[closer]
        idx[win][closer] = k
        normal[win][closer] = np.asarray(nrm).reshape(sub.shape)[closer]
    best, idx, normal = best.reshape(-1), idx.reshape(-1), normal.reshape(-1, 3)
    n_px = h * w

    hit = idx >= 0
    # Normals face the camera.
    flip = np.einsum("ij,ij->i", normal, d) > 0
    normal[flip] *= -1.0
    cls = np.full(n_px, int(C.SKY), dtype=np.uint8)
    obj = np.zeros(n_px, dtype=np.int32)
    rgb = np.zeros((n_px, 3))
    lt = scene.lighting
    p = o + np.where(hit, best, 0.0)[:, None] * d
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    # Shade the pixels of one primitive at a time (index groups from one sort, not a mask per
    # primitive: scenes with people and bicycles hold hundreds of small primitives).
    hit_px = np.flatnonzero(hit)
    order = hit_px[np.argsort(idx[hit_px], kind="stable")]
    firsts, starts = np.unique(idx[order], return_index=True)
    for k, m in zip(firsts, np.split(order, starts[1:])):
        prim = scene.prims[k]
        cls[m] = prim.cls
        obj[m] = prim.obj
        mat = prim.mat
        pk = p[m]
        # Footprint of one pixel on the surface (m); texture finer than that is filtered out.
        footprint = best[m] / cam.K[0, 0] / np.maximum(np.abs(np.einsum("ij,ij->i", normal[m], dn[m])), 0.2)
        fade = np.clip(1.0 - np.linalg.norm(mat.tex_freqs, axis=1)[None, :] * footprint[:, None] / np.pi, 0, 1)
        tex = 1.0 + mat.tex_amp * (fade * np.sin(pk @ mat.tex_freqs.T + mat.tex_phases)).mean(axis=1)
        tex += mat.grain * _grain(pk, _mip_cell(mat.grain_cell, footprint))
        shade = lt.ambient + lt.diffuse * np.clip(normal[m] @ lt.sun, 0.0, None)
        rgb[m] = mat.albedo[None, :] * (tex * shade)[:, None]

    # Sky gradient by ray elevation; haze blends distant surfaces into the horizon colour.
    elev = np.clip(-dn[:, 1], 0.0, 1.0) ** 0.5
    sky = lt.sky_horizon[None, :] * (1 - elev[:, None]) + lt.sky_zenith[None, :] * elev[:, None]
    dist = np.where(hit, best * np.linalg.norm(d, axis=1), np.inf)
    haze = 1.0 - np.exp(-dist / lt.haze_m)
    rgb = rgb * (1 - haze[:, None]) + lt.sky_horizon[None, :] * haze[:, None]
    rgb[~hit] = sky[~hit]
    rgb *= lt.tint[None, :]
    if noise_rng is not None:
        rgb += noise_rng.normal(0.0, 0.012, size=rgb.shape)

    normal_cam = normal @ cam.R_wc  # world -> camera: R_wc^T n, written row-wise
    normal_cam[~hit] = 0.0
    return Render(
        rgb=(np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3),
        depth=np.where(hit, best, np.inf).astype(np.float32).reshape(h, w),
        cls=cls.reshape(h, w),
        obj=obj.reshape(h, w),
        normal=normal_cam.astype(np.float32).reshape(h, w, 3),
        objects=dict(scene.objects),
    )
