"""Procedural layout of a straight street seen from a car.

Appearance is drawn from distributions shared *across* classes that look alike in real
data: road, sidewalk, curb and terrain share one palette and one texture distribution;
building, wall and fence share another. What separates them is 3-D shape: the sidewalk
is raised by a curb, terrain is an embankment that tilts away from the road, buildings
are tall and set back, walls are low and run along the road, fences are low and oblique.
An RGB-only model therefore has to infer geometry from shading and context, while an
RGB+depth/normals model sees it directly - the premise of the LIX teacher/student split.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.render import Box, Camera, Lighting, Material, Quad, Scene, Sphere, rotation

Z_NEAR, Z_FAR = -10.0, 260.0
X_FAR = 260.0


@dataclass(frozen=True)
class CameraStyle:
    """Where the camera sits: height above the road (m), pitch/yaw jitter (rad)."""

    height: tuple[float, float]
    pitch: tuple[float, float]
    yaw: tuple[float, float]


KITTI_STYLE = CameraStyle(height=(1.60, 1.70), pitch=(-0.04, 0.01), yaw=(-0.08, 0.08))
NUIMAGES_STYLE = CameraStyle(height=(1.45, 1.60), pitch=(-0.04, 0.01), yaw=(-0.10, 0.10))

from pipeline.sources.vkitti2 import VARIATIONS  # noqa: E402,F401  (the dataset's own names)


def _vec(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


class _Palette:
    """Material samplers. One sampler per *look-alike group*, never per class."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def _material(self, albedo: np.ndarray, tex_amp=(0.04, 0.16), grain=(0.08, 0.25)) -> Material:
        r = self.rng
        k = 3
        dirs = r.normal(size=(k, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = dirs * r.uniform(1.0, 12.0, size=(k, 1))
        return Material(
            albedo=np.clip(albedo, 0.02, 1.0),
            tex_freqs=freqs,
            tex_phases=r.uniform(0, 2 * np.pi, size=k),
            tex_amp=float(r.uniform(*tex_amp)),
            grain=float(r.uniform(*grain)),
            grain_cell=float(r.uniform(0.03, 0.12)),
        )

    def ground(self) -> Material:
        """Road, sidewalk, curb and terrain: muted greys, browns, olives."""
        r = self.rng
        return self._material(_hsv(r.uniform(0.05, 0.30), r.uniform(0.0, 0.35), r.uniform(0.25, 0.65)))

    def structure(self) -> Material:
        """Building, wall and fence: any muted hue."""
        r = self.rng
        return self._material(_hsv(r.uniform(0, 1), r.uniform(0.0, 0.40), r.uniform(0.30, 0.85)))

    def vegetation(self) -> Material:
        r = self.rng
        return self._material(_hsv(r.uniform(0.12, 0.40), r.uniform(0.25, 0.7), r.uniform(0.2, 0.6)),
                              tex_amp=(0.1, 0.3), grain=(0.3, 0.6))

    def vehicle(self) -> Material:
        r = self.rng
        if r.random() < 0.5:
            albedo = np.full(3, r.uniform(0.1, 0.9))
        else:
            albedo = _hsv(r.uniform(0, 1), r.uniform(0.3, 0.9), r.uniform(0.3, 0.9))
        return self._material(albedo, tex_amp=(0.0, 0.05), grain=(0.02, 0.08))

    def metal(self) -> Material:
        return self._material(np.full(3, self.rng.uniform(0.3, 0.7)), tex_amp=(0.0, 0.05), grain=(0.02, 0.1))

    def sign(self) -> Material:
        r = self.rng
        return self._material(_hsv(r.choice([0.0, 0.6, 0.15]), r.uniform(0.5, 0.9), r.uniform(0.5, 0.95)),
                              tex_amp=(0.0, 0.05), grain=(0.02, 0.05))

    def marking(self) -> Material:
        return self._material(np.full(3, self.rng.uniform(0.75, 0.95)), tex_amp=(0.0, 0.05), grain=(0.05, 0.15))


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.pal = _Palette(rng)
        self.prims: list = []
        self.n_objects = 0

    def quad(self, p0, u, v, cls, mat, obj=0):
        self.prims.append(Quad(_vec(*p0), _vec(*u), _vec(*v), int(cls), mat, obj))

    def box(self, lo, hi, cls, mat, obj=0):
        self.prims.append(Box(_vec(*lo), _vec(*hi), int(cls), mat, obj))

    def sphere(self, c, r, cls, mat, obj=0):
        self.prims.append(Sphere(_vec(*c), float(r), int(cls), mat, obj))

    def new_object(self) -> int:
        self.n_objects += 1
        return self.n_objects


def _street_side(b: _Builder, s: int, road_half: float) -> None:
    """Sidewalk, terrain and structures on side ``s`` (-1 left, +1 right)."""
    r = b.rng
    zlen = Z_FAR - Z_NEAR
    x, y = road_half, 0.0
    if r.random() < 0.7:  # raised sidewalk behind a curb
        w_s, curb = r.uniform(1.5, 4.0), r.uniform(0.10, 0.22)
        mat = b.pal.ground()
        b.quad((s * x, 0.0, Z_NEAR), (0, -curb, 0), (0, 0, zlen), C.CURB, mat)
        b.quad((s * x, -curb, Z_NEAR), (s * w_s, 0, 0), (0, 0, zlen), C.SIDEWALK, b.pal.ground())
        x, y = x + w_s, -curb
    pole_x = road_half + 0.4
    # Terrain: usually an embankment tilting away from the street, then flat ground.
    if r.random() < 0.75:
        w_t = r.uniform(2.0, 9.0)
        slope = np.tan(np.radians(r.uniform(10.0, 35.0))) * (1 if r.random() < 0.8 else -0.5)
        mat = b.pal.ground()
        b.quad((s * x, y, Z_NEAR), (s * w_t, -w_t * slope, 0), (0, 0, zlen), C.TERRAIN, mat)
        x, y = x + w_t, y - w_t * slope
    b.quad((s * x, y, Z_NEAR), (s * (X_FAR - x), 0, 0), (0, 0, zlen), C.TERRAIN, b.pal.ground())

    # Structures in segments along the street.
    z = Z_NEAR + r.uniform(0, 8)
    while z < 150.0:
        seg = r.uniform(6.0, 25.0)
        kind = r.choice(["building", "wall", "fence", "open"], p=[0.45, 0.2, 0.2, 0.15])
        if kind == "building":
            xb = x + r.uniform(0.0, 8.0)
            height, depth = r.uniform(6.0, 25.0), r.uniform(8.0, 15.0)
            mat = b.pal.structure()
            b.quad((s * xb, y + 3.0, z), (0, -(height + 3.0), 0), (0, 0, seg), C.BUILDING, mat)
            b.quad((s * xb, y + 3.0, z), (0, -(height + 3.0), 0), (s * depth, 0, 0), C.BUILDING, mat)
        elif kind == "wall":
            xw = x + r.uniform(0.0, 1.0)
            b.quad((s * xw, y + 1.0, z), (0, -(r.uniform(1.0, 3.0) + 1.0), 0), (0, 0, seg), C.WALL,
                   b.pal.structure())
        elif kind == "fence":
            theta = np.radians(r.uniform(20.0, 70.0))
            xf = x + r.uniform(0.0, 2.0)
            b.quad((s * xf, y + 1.0, z), (0, -(r.uniform(0.8, 2.0) + 1.0), 0),
                   (s * seg * np.sin(theta), 0, seg * np.cos(theta)), C.FENCE, b.pal.structure())
        else:  # open ground with trees and bushes
            for _ in range(r.integers(1, 4)):
                tx, tz = x + r.uniform(0.5, 6.0), z + r.uniform(0, seg)
                trunk = r.uniform(1.5, 3.5)
                crown = r.uniform(1.2, 3.0)
                b.box((s * tx - 0.15, y - trunk, tz - 0.15), (s * tx + 0.15, y + 0.5, tz + 0.15), C.TREE,
                      b.pal.vegetation())
                b.sphere((s * tx, y - trunk - crown * 0.8, tz), crown, C.TREE, b.pal.vegetation())
            for _ in range(r.integers(0, 4)):
                rad = r.uniform(0.4, 1.2)
                b.sphere((s * (x + r.uniform(0.3, 5.0)), y + 0.3 * rad, z + r.uniform(0, seg)), rad,
                         C.VEGETATION, b.pal.vegetation())
        z += seg

    # Poles with signs and lights near the kerb.
    z = Z_NEAR + r.uniform(5, 20)
    while z < 120.0:
        w = r.uniform(0.10, 0.25)
        ph = r.uniform(4.0, 9.0)
        top = -0.15 - ph
        b.box((s * pole_x - w / 2, top, z - w / 2), (s * pole_x + w / 2, 0.5, z + w / 2), C.POLE, b.pal.metal())
        u = r.random()
        if u < 0.4:
            size = r.uniform(0.5, 0.9)
            yc = -r.uniform(2.0, 3.0)
            b.box((s * pole_x - size / 2, yc - size / 2, z - w / 2 - 0.05),
                  (s * pole_x + size / 2, yc + size / 2, z - w / 2), C.TRAFFIC_SIGN, b.pal.sign())
        elif u < 0.6:
            b.box((s * pole_x - s * 0.4 - 0.15, top, z - w / 2 - 0.35),
                  (s * pole_x - s * 0.4 + 0.15, top + 0.9, z - w / 2 - 0.05), C.TRAFFIC_LIGHT,
                  b.pal.metal())
        z += r.uniform(12.0, 35.0)


_VEHICLES = {  # class: (width, height, length) means, metres
    C.CAR: (1.8, 1.5, 4.3),
    C.VAN: (2.0, 2.2, 5.0),
    C.TRUCK: (2.5, 3.4, 8.0),
}


def _vehicles(b: _Builder, road_half: float, cam_x: float, n_max: int) -> None:
    r = b.rng
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(r.integers(0, n_max + 1)):
        cls = C(r.choice([C.CAR, C.VAN, C.TRUCK], p=[0.65, 0.2, 0.15]))
        w, h, l = (m * r.uniform(0.92, 1.08) for m in _VEHICLES[cls])
        xc = r.uniform(-road_half + w / 2 + 0.2, road_half - w / 2 - 0.2)
        z0 = r.uniform(3.0, 60.0)
        if abs(xc - cam_x) < (w / 2 + 1.2) and z0 < 6.0:
            continue
        if any(abs(xc - px) < (w + pw) / 2 + 0.3 and z0 < pz1 + 1.0 and pz0 < z0 + l + 1.0
               for px, pw, pz0, pz1 in placed):
            continue
        placed.append((xc, w, z0, z0 + l))
        obj = b.new_object()
        mat = b.pal.vehicle()
        if cls == C.CAR:
            body = h * 0.55
            b.box((xc - w / 2, -body, z0), (xc + w / 2, -0.15, z0 + l), cls, mat, obj)
            b.box((xc - w / 2 + 0.1, -h, z0 + 0.25 * l), (xc + w / 2 - 0.1, -body, z0 + 0.8 * l), cls,
                  b.pal.vehicle(), obj)
        elif cls == C.TRUCK:
            b.box((xc - w / 2, -h * 0.8, z0), (xc + w / 2, -0.3, z0 + 0.25 * l), cls, mat, obj)
            b.box((xc - w / 2, -h, z0 + 0.3 * l), (xc + w / 2, -0.5, z0 + l), cls, b.pal.vehicle(), obj)
        else:
            b.box((xc - w / 2, -h, z0), (xc + w / 2, -0.2, z0 + l), cls, mat, obj)


def lighting(rng: np.random.Generator, variation: str = "clone") -> Lighting:
    """Sun, sky and haze; the vKITTI2 variation names pick a weather/time-of-day look."""
    az = rng.uniform(0, 2 * np.pi)
    el = np.radians(rng.uniform(20, 70))
    ambient, diffuse = rng.uniform(0.35, 0.55), rng.uniform(0.5, 0.8)
    zenith = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.3, 0.6), rng.uniform(0.75, 0.95))
    horizon = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.98))
    haze = rng.uniform(250.0, 700.0)
    tint = np.ones(3)
    if variation == "fog":
        haze, horizon = rng.uniform(25.0, 60.0), np.full(3, 0.8)
        zenith = horizon
    elif variation in ("sunset", "morning"):
        el = np.radians(rng.uniform(5, 15))
        tint = np.array([1.0, 0.85, 0.7]) if variation == "sunset" else np.array([1.0, 0.95, 0.88])
    elif variation in ("overcast", "rain"):
        ambient, diffuse = rng.uniform(0.7, 0.85), rng.uniform(0.05, 0.2)
        zenith = horizon = np.full(3, rng.uniform(0.6, 0.8))
        tint = np.full(3, 0.8 if variation == "rain" else 0.95)
    sun = np.array([np.cos(el) * np.cos(az), -np.sin(el), np.cos(el) * np.sin(az)])
    return Lighting(sun=sun, ambient=ambient, diffuse=diffuse, sky_zenith=zenith, sky_horizon=horizon,
                    haze_m=haze, tint=tint)


def sample_scene(rng: np.random.Generator, variation: str = "clone", n_vehicles: int = 8) -> tuple[Scene, float]:
    """A random street. Returns the scene and a lateral camera position inside the road (m)."""
    b = _Builder(rng)
    road_half = rng.uniform(3.0, 7.5)
    cam_x = rng.uniform(-road_half + 1.8, road_half - 1.8) if road_half > 1.8 else 0.0
    b.quad((-road_half, 0.0, Z_NEAR), (2 * road_half, 0, 0), (0, 0, Z_FAR - Z_NEAR), C.ROAD, b.pal.ground())
    if rng.random() < 0.8:  # dashed lane markings, part of the road class as in Cityscapes
        mat = b.pal.marking()
        for lx in np.arange(-road_half + 3.5, road_half - 1.0, 3.5):
            for z in np.arange(Z_NEAR + rng.uniform(0, 6), 120.0, 9.0):
                b.quad((lx - 0.07, -0.002, z), (0.14, 0, 0), (0, 0, 3.0), C.LANE_MARKING, mat)
    for s in (-1, 1):
        _street_side(b, s, road_half)
    if rng.random() < 0.35:  # a cross street's building closing the view
        zb, hb = rng.uniform(70.0, 160.0), rng.uniform(8.0, 30.0)
        b.quad((-X_FAR, 3.0, zb), (2 * X_FAR, 0, 0), (0, -(hb + 3.0), 0), C.BUILDING, b.pal.structure())
    _vehicles(b, road_half, cam_x, n_vehicles)
    return Scene(prims=b.prims, lighting=lighting(rng, variation), n_objects=b.n_objects), cam_x


def make_camera(rng: np.random.Generator, K: np.ndarray, width: int, height: int, cam_x: float,
                style: CameraStyle, yaw_offset: float = 0.0) -> Camera:
    h = rng.uniform(*style.height)
    return Camera(K=K, width=width, height=height, position=_vec(cam_x, -h, 0.0),
                  R_wc=rotation(rng.uniform(*style.yaw) + yaw_offset, rng.uniform(*style.pitch)))


def scaled_intrinsics(fx: float, fy: float, cx: float, cy: float, scale_x: float, scale_y: float) -> np.ndarray:
    """K of a full-size camera resampled to a smaller image (pixel-centre convention)."""
    return np.array([[fx * scale_x, 0, (cx + 0.5) * scale_x - 0.5],
                     [0, fy * scale_y, (cy + 0.5) * scale_y - 0.5],
                     [0, 0, 1.0]])
