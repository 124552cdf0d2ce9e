"""Procedural layout of a straight street seen from a car.

Appearance is drawn from distributions shared *across* classes that look alike in real
data: road, sidewalk, curb and terrain share one palette and one texture distribution;
building, wall and fence share another. What separates them is 3-D shape: the sidewalk
is raised by a curb, terrain is an embankment that tilts away from the road, buildings
are tall and set back, walls are low and run along the road, fences are low and oblique.
An RGB-only model therefore has to infer geometry from shading and context, while an
RGB+depth/normals model sees it directly - the premise of the LIX teacher/student split.

Road users and street clutter follow the same rule (see ``Population``): pedestrians and
riders wear clothes from one distribution, which is also the paint of poles, light housings,
racks and bins (neutral or muted, as in real streets); buses, trams, motorcycles and bicycle
frames take the vehicle paint of cars and trucks; cones and barrier boards take the signal
colours of traffic signs, concrete barriers the material of walls. Shape, size and where a
thing stands (sidewalk, kerb, lane, rails) carry the distinction.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from pipeline.sources.synthetic.classes import C
from pipeline.sources.synthetic.render import (
    Box,
    Camera,
    Cylinder,
    Lighting,
    Material,
    ObjectInfo,
    Quad,
    Scene,
    Sphere,
    rotation,
)

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

    def painted(self) -> Material:
        """Poles, light housings, racks, bins *and clothes*: black, greys, white or a muted
        hue. One distribution, so a pedestrian's colours never name the class."""
        r = self.rng
        if r.random() < 0.5:
            albedo = np.full(3, r.uniform(0.08, 0.85))
        else:
            albedo = _hsv(r.uniform(0, 1), r.uniform(0.1, 0.5), r.uniform(0.15, 0.8))
        return self._material(albedo, tex_amp=(0.0, 0.08), grain=(0.02, 0.12))

    metal = painted
    clothing = painted

    def skin(self) -> Material:
        r = self.rng
        return self._material(_hsv(r.uniform(0.02, 0.11), r.uniform(0.2, 0.6), r.uniform(0.25, 0.9)),
                              tex_amp=(0.0, 0.05), grain=(0.02, 0.06))

    def rubber(self) -> Material:
        return self._material(np.full(3, self.rng.uniform(0.03, 0.15)), tex_amp=(0.0, 0.05), grain=(0.02, 0.08))

    def signal(self) -> Material:
        """Signs, traffic cones, barrier boards, some bins: red, orange, yellow, blue or white."""
        r = self.rng
        if r.random() < 0.2:
            albedo = np.full(3, r.uniform(0.8, 0.95))
        else:
            albedo = _hsv(r.choice([0.0, 0.05, 0.15, 0.6]), r.uniform(0.5, 0.9), r.uniform(0.5, 0.95))
        return self._material(albedo, tex_amp=(0.0, 0.05), grain=(0.02, 0.05))

    sign = signal

    def marking(self) -> Material:
        return self._material(np.full(3, self.rng.uniform(0.75, 0.95)), tex_amp=(0.0, 0.05), grain=(0.05, 0.15))


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.pal = _Palette(rng)
        self.prims: list = []
        self.n_objects = 0
        self.objects: dict[int, ObjectInfo] = {}
        self.occupied: list[tuple[float, float, float, float]] = []  # (x0, x1, z0, z1) footprints

    def quad(self, p0, u, v, cls, mat, obj=0):
        self.prims.append(Quad(_vec(*p0), _vec(*u), _vec(*v), int(cls), mat, obj))

    def box(self, lo, hi, cls, mat, obj=0):
        self.prims.append(Box(_vec(*lo), _vec(*hi), int(cls), mat, obj))

    def sphere(self, c, r, cls, mat, obj=0):
        self.prims.append(Sphere(_vec(*c), float(r), int(cls), mat, obj))

    def cylinder(self, p0, p1, r0, r1, cls, mat, obj=0):
        self.prims.append(Cylinder(_vec(*p0), _vec(*p1), float(r0), float(r1), int(cls), mat, obj))

    def new_object(self, kind: str = "", state: str = "") -> int:
        self.n_objects += 1
        if kind:
            self.objects[self.n_objects] = ObjectInfo(kind, state)
        return self.n_objects

    def free(self, x0, x1, z0, z1, margin_x=0.3, margin_z=1.0) -> bool:
        """No claimed footprint within the margins of [x0, x1] x [z0, z1]."""
        return not any(x0 < px1 + margin_x and px0 < x1 + margin_x and z0 < pz1 + margin_z and pz0 < z1 + margin_z
                       for px0, px1, pz0, pz1 in self.occupied)

    def claim(self, x0, x1, z0, z1) -> None:
        self.occupied.append((min(x0, x1), max(x0, x1), min(z0, z1), max(z0, z1)))


@dataclass(frozen=True)
class _Side:
    """Where things can stand on one side: the sidewalk's |x| span and surface height (Y)."""

    s: int
    sidewalk: tuple[float, float] | None
    y: float


def _street_side(b: _Builder, s: int, road_half: float) -> _Side:
    """Sidewalk, terrain and structures on side ``s`` (-1 left, +1 right)."""
    r = b.rng
    zlen = Z_FAR - Z_NEAR
    x, y = road_half, 0.0
    side = _Side(s, None, 0.0)
    if r.random() < 0.7:  # raised sidewalk behind a curb
        w_s, curb = r.uniform(1.5, 4.0), r.uniform(0.10, 0.22)
        mat = b.pal.ground()
        b.quad((s * x, 0.0, Z_NEAR), (0, -curb, 0), (0, 0, zlen), C.CURB, mat)
        b.quad((s * x, -curb, Z_NEAR), (s * w_s, 0, 0), (0, 0, zlen), C.SIDEWALK, b.pal.ground())
        side = _Side(s, (x, x + w_s), -curb)
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
        b.claim(s * pole_x - w / 2, s * pole_x + w / 2, z - w / 2, z + w / 2)
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
    return side


_VEHICLES = {  # class: (width, height, length) means, metres
    C.CAR: (1.8, 1.5, 4.3),
    C.VAN: (2.0, 2.2, 5.0),
    C.TRUCK: (2.5, 3.4, 8.0),
}


def _lane_state(xc: float, w: float, road_half: float, moving: str = "moving") -> str:
    """Parked at the kerb (within 0.5 m of the road edge), else ``moving``."""
    return "parked" if road_half - (abs(xc) + w / 2) < 0.5 else moving


def _vehicles(b: _Builder, road_half: float, cam_x: float, n_max: int) -> None:
    r = b.rng
    for _ in range(r.integers(0, n_max + 1)):
        cls = C(r.choice([C.CAR, C.VAN, C.TRUCK], p=[0.65, 0.2, 0.15]))
        w, h, length = (m * r.uniform(0.92, 1.08) for m in _VEHICLES[cls])
        xc = r.uniform(-road_half + w / 2 + 0.2, road_half - w / 2 - 0.2)
        z0 = r.uniform(3.0, 60.0)
        if abs(xc - cam_x) < (w / 2 + 1.2) and z0 < 6.0:
            continue
        if not b.free(xc - w / 2, xc + w / 2, z0, z0 + length):
            continue
        b.claim(xc - w / 2, xc + w / 2, z0, z0 + length)
        obj = b.new_object(cls.name.lower(), _lane_state(xc, w, road_half))
        mat = b.pal.vehicle()
        if cls == C.CAR:
            body = h * 0.55
            b.box((xc - w / 2, -body, z0), (xc + w / 2, -0.15, z0 + length), cls, mat, obj)
            b.box((xc - w / 2 + 0.1, -h, z0 + 0.25 * length), (xc + w / 2 - 0.1, -body, z0 + 0.8 * length), cls,
                  b.pal.vehicle(), obj)
        elif cls == C.TRUCK:
            b.box((xc - w / 2, -h * 0.8, z0), (xc + w / 2, -0.3, z0 + 0.25 * length), cls, mat, obj)
            b.box((xc - w / 2, -h, z0 + 0.3 * length), (xc + w / 2, -0.5, z0 + length), cls, b.pal.vehicle(), obj)
        else:
            b.box((xc - w / 2, -h, z0), (xc + w / 2, -0.2, z0 + length), cls, mat, obj)


# ---------------------------------------------------------------------------------------------
# Road users and street clutter.


@dataclass(frozen=True)
class Population:
    """How many road users and street objects a scene holds beyond cars, vans and trucks.

    Counts are Poisson means per scene; ``*_p`` are probabilities per scene. Rare classes
    stay rare in pixels (a few per mille) but appear in a stated share of frames (see
    tests/test_classes_present.py for what the default rates give).
    """

    pedestrians: float  # on the sidewalks, walking or standing
    child_share: float  # of pedestrians
    crossing_p: float  # 1-3 pedestrians crossing the road
    cyclists: float  # bicycle + rider on the road near the kerb
    motorcyclists: float  # motorcycle + rider in a lane
    parked_bicycles: float
    parked_motorcycles: float
    bus_p: float
    bendy_share: float  # articulated buses among buses
    rails_p: float  # tram rails in a street wide enough (road half-width >= 4.5 m)
    tram_p: float  # a tram on the rails
    construction_p: float  # a lane or sidewalk closure: a row of barriers and a taper of cones
    cones: float  # loose cones
    debris: float  # trash cans and bags
    pushables: float  # wheeled bins
    bicycle_rack_p: float


# Karlsruhe-like streets (KITTI): trams, cyclists, few motorcycles.
KITTI_POPULATION = Population(
    pedestrians=2.5, child_share=0.12, crossing_p=0.15, cyclists=0.8, motorcyclists=0.4, parked_bicycles=0.5,
    parked_motorcycles=0.3, bus_p=0.35, bendy_share=0.15, rails_p=0.75, tram_p=0.8, construction_p=0.25,
    cones=0.3, debris=0.6, pushables=0.4, bicycle_rack_p=0.08)
# Boston / Singapore (nuImages): more pedestrians, motorcycles, buses and construction; no trams.
NUIMAGES_POPULATION = Population(
    pedestrians=3.5, child_share=0.1, crossing_p=0.25, cyclists=0.4, motorcyclists=0.8, parked_bicycles=0.3,
    parked_motorcycles=0.5, bus_p=0.35, bendy_share=0.25, rails_p=0.0, tram_p=0.0, construction_p=0.4,
    cones=0.6, debris=1.0, pushables=0.6, bicycle_rack_p=0.12)

_UP = np.array([0.0, -1.0, 0.0])
_HEADINGS = (np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]),
             np.array([-1.0, 0.0, 0.0]))


class _Local:
    """Object coordinates (a: right of the heading, u: up, f: forward) -> world, for an object
    standing at (x, y, z) and facing one of the four street directions (0: +Z, 1: +X, ...)."""

    def __init__(self, b: _Builder, x: float, y: float, z: float, heading: int, obj: int):
        self.b, self.obj = b, obj
        self.o = _vec(x, y, z)
        self.f = _HEADINGS[heading % 4]
        self.a = np.cross(self.f, _UP)

    def p(self, a: float, u: float, f: float) -> np.ndarray:
        return self.o + a * self.a + u * _UP + f * self.f

    def box(self, lo, hi, cls, mat) -> None:
        c0, c1 = self.p(*lo), self.p(*hi)
        self.b.box(np.minimum(c0, c1), np.maximum(c0, c1), cls, mat, self.obj)

    def cyl(self, p0, p1, r0, r1, cls, mat) -> None:
        self.b.cylinder(self.p(*p0), self.p(*p1), r0, r1, cls, mat, self.obj)

    def sphere(self, c, radius, cls, mat) -> None:
        self.b.sphere(self.p(*c), radius, cls, mat, self.obj)


def _knee(hip: np.ndarray, foot: np.ndarray, length: float, forward: float) -> np.ndarray:
    """Knee of a two-segment leg (thigh = shin = ``length``) from hip to foot in the (u, f)
    plane, bent towards +f (``forward`` = 1) or -f."""
    d = foot - hip
    dist = float(np.linalg.norm(d))
    mid = (hip + foot) / 2
    if dist >= 2 * length:
        return mid
    perp = np.array([d[1], -d[0]]) / max(dist, 1e-9)  # (u, f) rotated
    if perp[1] * forward < 0:
        perp = -perp
    return mid + perp * np.sqrt(length**2 - (dist / 2) ** 2)


def _figure(L: _Local, H: float, cls, clothes: tuple[Material, Material], skin: Material, head: Material,
            hip: tuple[float, float], lean: float, hands, feet, child: bool = False) -> None:
    """A human of height ``H`` (standing equivalent): torso from the hip (u, f) leaning
    forward by ``lean`` rad, neck, head, arms to ``hands`` and legs to ``feet`` (lists of
    (a, u, f)); legs bend at the knee when the foot is nearer than the leg's length."""
    upper, lower = clothes
    torso = (0.28 if child else 0.30) * H
    head_r = (0.075 if child else 0.064) * H
    r_hip, r_sh = 0.085 * H, 0.095 * H
    du, df = np.cos(lean), np.sin(lean)
    hu, hf = hip
    su, sf = hu + torso * du, hf + torso * df
    L.cyl((0, hu - 0.03 * H, hf), (0, su, sf), r_hip, r_sh, cls, upper)
    nu, nf = su + 0.06 * H * du, sf + 0.06 * H * df
    L.cyl((0, su - 0.01 * H, sf), (0, nu, nf), 0.035 * H, 0.035 * H, cls, skin)
    L.sphere((0, nu + head_r * 0.9 * du, nf + head_r * 0.9 * df), head_r, cls, head)
    for side, hand in zip((-1, 1), hands):
        L.cyl((side * (r_sh + 0.02 * H), su - 0.03 * H, sf), hand, 0.028 * H, 0.025 * H, cls, upper)
    leg = (0.49 if child else 0.53) * H
    for side, foot in zip((-1, 1), feet):
        h3 = np.array([side * 0.045 * H, hu, hf])
        f3 = np.asarray(foot, dtype=np.float64)
        k = _knee(h3[1:], f3[1:], leg / 2, 1.0)
        knee = (f3[0] * 0.5 + h3[0] * 0.5, k[0], k[1])
        L.cyl(tuple(h3), knee, 0.042 * H, 0.036 * H, cls, lower)
        L.cyl(knee, tuple(f3), 0.036 * H, 0.03 * H, cls, lower)


def _pedestrian(b: _Builder, x: float, y: float, z: float, heading: int, walking: bool, child: bool) -> None:
    r = b.rng
    H = r.uniform(0.95, 1.45) if child else r.uniform(1.55, 1.95)
    obj = b.new_object("pedestrian.child" if child else "pedestrian.adult", "moving" if walking else "standing")
    L = _Local(b, x, y, z, heading, obj)
    skin = b.pal.skin()
    head = skin if r.random() < 0.7 else b.pal.clothing()  # hair, hat or hood
    hip = (0.49 if child else 0.53) * H
    stride = r.uniform(0.2, 0.35) if walking else 0.0
    reach = hip * np.tan(stride)
    # Soles on the surface (a striding leg's tilted end disc dips < 2 cm into it).
    spread = 0.05 if walking else 0.06
    feet = [(-spread * H, 0.0, reach), (spread * H, 0.0, -reach)]
    r_sh = 0.095 * H
    hands = [(s * (r_sh + 0.035 * H), 0.45 * H, -s * 0.6 * reach) for s in (-1, 1)]
    _figure(L, H, C.PERSON, (b.pal.clothing(), b.pal.clothing()), skin, head, (hip, 0.0), r.uniform(0.0, 0.08),
            hands, feet, child)


def _wheel(L: _Local, f: float, radius: float, width: float, mat: Material, cls) -> None:
    L.cyl((-width / 2, radius, f), (width / 2, radius, f), radius, radius, cls, mat)


def _bicycle(b: _Builder, x: float, y: float, z: float, heading: int, rider: bool, obj: int | None = None) -> None:
    """A bicycle (class BICYCLE) and, with ``rider``, a seated cyclist (class RIDER), one object."""
    r = b.rng
    if obj is None:
        obj = b.new_object("bicycle", "with_rider" if rider else "without_rider")
    L = _Local(b, x, y, z, heading, obj)
    wb, rw = r.uniform(1.0, 1.1), r.uniform(0.33, 0.36)
    frame, tyre = b.pal.vehicle(), b.pal.rubber()
    for f in (-wb / 2, wb / 2):
        _wheel(L, f, rw, 0.05, tyre, C.BICYCLE)
    bb, seat = (0.3, -0.08), (0.9, -0.3)
    head, bars = (0.9, wb / 2 - 0.14), (1.02, wb / 2 - 0.18)
    tube = 0.025
    for (u0, f0), (u1, f1) in ((bb, seat), (seat, head), (bb, head), (bb, (rw, -wb / 2)), (seat, (rw, -wb / 2)),
                               (head, (rw, wb / 2)), (head, bars)):
        L.cyl((0, u0, f0), (0, u1, f1), tube, tube, C.BICYCLE, frame)
    L.cyl((-0.28, bars[0], bars[1]), (0.28, bars[0], bars[1]), 0.02, 0.02, C.BICYCLE, frame)
    L.box((-0.07, seat[0], seat[1] - 0.1), (0.07, seat[0] + 0.05, seat[1] + 0.12), C.BICYCLE, tyre)
    if rider:
        H = r.uniform(1.6, 1.9)
        crank = r.uniform(0, 2 * np.pi)
        feet = [(s * 0.1, bb[0] + s * 0.17 * np.sin(crank), bb[1] + s * 0.17 * np.cos(crank)) for s in (-1, 1)]
        hands = [(s * 0.24, bars[0], bars[1]) for s in (-1, 1)]
        skin = b.pal.skin()
        head_mat = b.pal.clothing() if r.random() < 0.5 else skin  # helmet or none
        _figure(L, H, C.RIDER, (b.pal.clothing(), b.pal.clothing()), skin, head_mat, (seat[0] + 0.06, seat[1]),
                r.uniform(0.35, 0.7), hands, feet)


def _motorcycle(b: _Builder, x: float, y: float, z: float, heading: int, rider: bool) -> None:
    """A motorcycle (class MOTORCYCLE) and, with ``rider``, a helmeted rider (class RIDER)."""
    r = b.rng
    obj = b.new_object("motorcycle", "with_rider" if rider else "without_rider")
    L = _Local(b, x, y, z, heading, obj)
    wb, rw = r.uniform(1.3, 1.5), r.uniform(0.29, 0.33)
    paint, tyre, metal = b.pal.vehicle(), b.pal.rubber(), b.pal.painted()
    for f in (-wb / 2, wb / 2):
        _wheel(L, f, rw, 0.12, tyre, C.MOTORCYCLE)
    L.box((-0.17, 0.22, -0.25), (0.17, 0.62, 0.3), C.MOTORCYCLE, metal)  # engine
    L.box((-0.15, 0.6, -0.05), (0.15, 0.9, 0.45), C.MOTORCYCLE, paint)  # tank
    L.box((-0.14, 0.78, -0.6), (0.14, 0.87, -0.05), C.MOTORCYCLE, tyre)  # seat
    L.box((-0.12, 0.55, -wb / 2 - 0.1), (0.12, 0.78, -0.35), C.MOTORCYCLE, paint)  # tail
    fork_top = (1.0, wb / 2 - 0.2)
    L.cyl((0, rw, wb / 2), (0, *fork_top), 0.035, 0.035, C.MOTORCYCLE, metal)
    L.box((-0.13, 0.72, wb / 2 - 0.22), (0.13, 1.08, wb / 2 - 0.08), C.MOTORCYCLE, paint)  # fairing
    L.cyl((-0.36, 1.04, fork_top[1] - 0.05), (0.36, 1.04, fork_top[1] - 0.05), 0.022, 0.022, C.MOTORCYCLE, metal)
    if rider:
        H = r.uniform(1.6, 1.9)
        feet = [(s * 0.2, 0.35, -0.05) for s in (-1, 1)]
        hands = [(s * 0.32, 1.04, fork_top[1] - 0.08) for s in (-1, 1)]
        _figure(L, H, C.RIDER, (b.pal.clothing(), b.pal.clothing()), b.pal.skin(), b.pal.clothing(),
                (0.9, -0.35), r.uniform(0.15, 0.45), hands, feet)


def _long_vehicle(b: _Builder, xc: float, z0: float, length: float, width: float, height: float, cls, obj: int,
                  paint: Material, glass: Material, floor: float = 0.3) -> None:
    """A bus / tram section: body, a band of windows, roof; along +Z from z0."""
    x0, x1 = xc - width / 2, xc + width / 2
    b.box((x0, -1.15, z0), (x1, -floor, z0 + length), cls, paint, obj)
    b.box((x0 + 0.01, -2.35, z0 + 0.3), (x1 - 0.01, -1.15, z0 + length - 0.3), cls, glass, obj)
    b.box((x0, -height, z0), (x1, -1.15, z0 + 0.3), cls, paint, obj)
    b.box((x0, -height, z0 + length - 0.3), (x1, -1.15, z0 + length), cls, paint, obj)
    b.box((x0, -height, z0 + 0.3), (x1, -2.35, z0 + length - 0.3), cls, paint, obj)


def _bus(b: _Builder, road_half: float, pop: Population) -> None:
    r = b.rng
    bendy = r.random() < pop.bendy_share
    w, h = r.uniform(2.45, 2.55), r.uniform(2.95, 3.3)
    sections = [r.uniform(9.0, 10.0), r.uniform(7.5, 8.5)] if bendy else [r.uniform(10.5, 12.5)]
    length = sum(sections) + (len(sections) - 1) * 0.9
    for _ in range(4):
        xc = r.uniform(-road_half + w / 2 + 0.2, road_half - w / 2 - 0.2)
        z0 = r.uniform(5.0, 60.0)
        if b.free(xc - w / 2, xc + w / 2, z0, z0 + length):
            break
    else:
        return
    b.claim(xc - w / 2, xc + w / 2, z0, z0 + length)
    state = _lane_state(xc, w, road_half, "moving")
    state = "stopped" if state == "parked" else state  # a bus at the kerb serves a stop
    paint, glass = b.pal.vehicle(), b.pal.vehicle()
    z = z0
    for i, sec in enumerate(sections):
        obj = b.new_object("bus.bendy" if bendy else "bus.rigid", state)
        _long_vehicle(b, xc, z, sec, w, h, C.BUS, obj, paint, glass)
        if i + 1 < len(sections):  # the joint's bellows belong to the front section
            b.box((xc - w / 2 + 0.12, -h + 0.15, z + sec), (xc + w / 2 - 0.12, -0.45, z + sec + 0.9), C.BUS,
                  b.pal.rubber(), obj)
        z += sec + 0.9


def _tram(b: _Builder, road_half: float, cam_x: float, pop: Population) -> None:
    """Rails set in the road (class RAIL, road in every label space) and maybe a tram on them."""
    r = b.rng
    if road_half < 4.5 or r.random() >= pop.rails_p:
        return
    xt = r.uniform(-road_half + 1.7, road_half - 1.7)
    steel = b.pal.painted()
    for dx in (-0.7175, 0.7175):  # standard gauge, 65 mm rail heads; from just ahead of the camera
        b.quad((xt + dx - 0.0325, -0.003, 0.5), (0.065, 0, 0), (0, 0, 149.5), C.RAIL, steel)
    if r.random() >= pop.tram_p:
        return
    w, h = 2.65, r.uniform(3.4, 3.6)
    n_mod = int(r.integers(3, 6))
    mods = r.uniform(6.5, 8.5, size=n_mod)
    length = float(mods.sum()) + 0.6 * (n_mod - 1)
    near = abs(xt - cam_x) < w / 2 + 1.2
    z0 = r.uniform(9.0 if near else 4.0, 70.0)
    if not b.free(xt - w / 2, xt + w / 2, z0, z0 + length):
        return
    b.claim(xt - w / 2, xt + w / 2, z0, z0 + length)
    obj = b.new_object("tram", "moving")
    paint, glass, dark = b.pal.vehicle(), b.pal.vehicle(), b.pal.rubber()
    z = z0
    for i, m in enumerate(mods):
        _long_vehicle(b, xt, z, float(m), w, h - 0.25, C.TRAM, obj, paint, glass, floor=0.35)
        b.box((xt - 0.7, -h, z + 1.5), (xt + 0.7, -h + 0.25, z + float(m) - 1.5), C.TRAM, dark, obj)  # roof gear
        if i + 1 < n_mod:
            b.box((xt - w / 2 + 0.15, -h + 0.4, z + m), (xt + w / 2 - 0.15, -0.5, z + m + 0.6), C.TRAM, dark, obj)
        z += float(m) + 0.6


def _cone(b: _Builder, x: float, y: float, z: float) -> None:
    r = b.rng
    obj = b.new_object("trafficcone")
    h, r0 = r.uniform(0.45, 0.75), r.uniform(0.13, 0.17)
    L = _Local(b, x, y, z, 0, obj)
    L.box((-r0 - 0.04, 0.0, -r0 - 0.04), (r0 + 0.04, 0.04, r0 + 0.04), C.TRAFFIC_CONE, b.pal.rubber())
    L.cyl((0, 0.04, 0), (0, h, 0), r0, 0.025, C.TRAFFIC_CONE, b.pal.signal())


def _barrier_row(b: _Builder, x: float, y: float, z0: float, n: int) -> float:
    """``n`` barrier segments (one object each) in a row along +Z from z0 at lateral x.
    Concrete jersey barriers (wall material) or boards on posts (signal colours). Returns the
    row's end."""
    r = b.rng
    jersey = r.random() < 0.5
    mat = (b.pal.structure() if r.random() < 0.6 else b.pal.signal()) if jersey else b.pal.signal()
    posts = b.pal.painted()
    z = z0
    for _ in range(n):
        seg = r.uniform(1.2, 2.0)
        obj = b.new_object("barrier")
        L = _Local(b, x, y, z, 0, obj)
        if jersey:
            h = r.uniform(0.8, 1.0)
            L.box((-0.28, 0.0, 0.0), (0.28, 0.3, seg), C.BARRIER, mat)
            L.box((-0.12, 0.3, 0.0), (0.12, h, seg), C.BARRIER, mat)
        else:
            h = r.uniform(1.0, 1.2)
            for f in (0.1, seg - 0.1):
                L.box((-0.3, 0.0, f - 0.05), (0.3, 0.06, f + 0.05), C.BARRIER, posts)
                L.cyl((0, 0.06, f), (0, h, f), 0.03, 0.03, C.BARRIER, posts)
            L.box((-0.03, h - 0.3, 0.0), (0.03, h - 0.02, seg), C.BARRIER, mat)
            if r.random() < 0.5:
                L.box((-0.03, 0.25, 0.0), (0.03, 0.5, seg), C.BARRIER, mat)
        z += seg + r.uniform(0.05, 0.3)
    return z


def _construction(b: _Builder, road_half: float, sides: list[_Side]) -> None:
    """A closure along one kerb: barriers and a taper of cones in front of them, on the road's
    edge lane or on a sidewalk."""
    r = b.rng
    s = int(r.choice([-1, 1]))
    side = next(sd for sd in sides if sd.s == s)
    z0, n = r.uniform(8.0, 45.0), int(r.integers(3, 8))
    if side.sidewalk is not None and r.random() < 0.3:
        x, y = s * (side.sidewalk[0] + 0.35), side.y
        z1 = _barrier_row(b, x, y, z0, n)
        b.claim(x - 0.4, x + 0.4, z0, z1)
        return
    x = s * (road_half - 1.6)
    if not b.free(min(x, s * road_half), max(x, s * road_half), z0 - 8.0, z0 + 12.0, 0.2, 0.5):
        return
    z1 = _barrier_row(b, x, 0.0, z0, n)
    n_cones = int(r.integers(2, 6))
    for i in range(n_cones):  # taper from the kerb out to the barriers
        t = (i + 1) / (n_cones + 1)
        _cone(b, s * (road_half - 0.3 - t * 1.3), 0.0, z0 - (n_cones - i) * 1.8)
    b.claim(min(x, s * road_half) - 0.3, max(x, s * road_half), z0 - n_cones * 1.8 - 0.5, z1)


def _debris(b: _Builder, x: float, y: float, z: float) -> None:
    r = b.rng
    obj = b.new_object("debris")
    if r.random() < 0.6:  # a trash can
        rad, h = r.uniform(0.22, 0.32), r.uniform(0.7, 1.0)
        b.cylinder((x, y, z), (x, y - h, z), rad, rad * 1.05, C.DEBRIS, b.pal.painted(), obj)
    else:  # bags
        for _ in range(int(r.integers(1, 4))):
            rad = r.uniform(0.18, 0.28)
            b.sphere((x + r.uniform(-0.15, 0.15), y - 0.75 * rad, z + r.uniform(-0.15, 0.15)), rad, C.DEBRIS,
                     b.pal.painted(), obj)


def _pushable(b: _Builder, x: float, y: float, z: float) -> None:
    r = b.rng
    obj = b.new_object("pushable_pullable")
    mat = b.pal.painted() if r.random() < 0.6 else b.pal.signal()
    L = _Local(b, x, y, z, int(r.integers(0, 4)), obj)
    w, d, h = r.uniform(0.5, 0.7), r.uniform(0.55, 0.75), r.uniform(0.95, 1.1)
    L.box((-w / 2, 0.08, -d / 2), (w / 2, h, d / 2), C.PUSHABLE, mat)
    L.box((-w / 2 - 0.03, h, -d / 2 - 0.05), (w / 2 + 0.03, h + 0.06, d / 2 + 0.03), C.PUSHABLE, mat)
    wheels = b.pal.rubber()
    for a in (-w / 2 + 0.06, w / 2 - 0.06):
        L.cyl((a - 0.03, 0.1, -d / 2 + 0.1), (a + 0.03, 0.1, -d / 2 + 0.1), 0.1, 0.1, C.PUSHABLE, wheels)


def _bicycle_rack(b: _Builder, side: _Side, z0: float) -> float:
    """Hoops along the sidewalk with bicycles parked across it; one object with its bicycles
    (as nuImages annotates racks). Returns the rack's end."""
    r = b.rng
    s, (xi, xo) = side.s, side.sidewalk
    n = int(r.integers(3, 7))
    obj = b.new_object("bicycle_rack")
    xc = s * (xi + min(1.0, (xo - xi) / 2))
    steel = b.pal.painted()
    for i in range(n):
        z = z0 + i * 0.8
        for dx in (-0.35, 0.35):
            b.cylinder((xc + dx, side.y, z), (xc + dx, side.y - 0.8, z), 0.03, 0.03, C.BICYCLE_RACK, steel, obj)
        b.cylinder((xc - 0.35, side.y - 0.8, z), (xc + 0.35, side.y - 0.8, z), 0.03, 0.03, C.BICYCLE_RACK, steel, obj)
        if r.random() < 0.6:
            _bicycle(b, xc, side.y, z + 0.3, 1 if r.random() < 0.5 else 3, rider=False, obj=obj)
    return z0 + n * 0.8


def _sidewalk_spot(b: _Builder, sides: list[_Side], width: float, depth: float, edge: str = "any"):
    """(x, y, z) of a free spot on a random sidewalk, or None."""
    r = b.rng
    walks = [sd for sd in sides if sd.sidewalk is not None]
    if not walks:
        return None
    for _ in range(3):
        sd = walks[int(r.integers(0, len(walks)))]
        xi, xo = sd.sidewalk
        if xo - xi < width + 0.4:
            return None
        if edge == "kerb":
            ax = xi + 0.25 + width / 2
        elif edge == "wall":
            ax = xo - 0.2 - width / 2
        else:
            ax = r.uniform(xi + 0.2 + width / 2, xo - 0.2 - width / 2)
        x, z = sd.s * ax, r.uniform(4.0, 70.0)
        if b.free(x - width / 2, x + width / 2, z - depth / 2, z + depth / 2, 0.15, 0.25):
            b.claim(x - width / 2, x + width / 2, z - depth / 2, z + depth / 2)
            return x, sd.y, z
    return None


def _road_spot(b: _Builder, x_lo: float, x_hi: float, width: float, depth: float, z_lo: float, z_hi: float):
    r = b.rng
    x_lo, x_hi = min(x_lo, x_hi), max(x_lo, x_hi)
    for _ in range(3):
        x, z = r.uniform(x_lo, x_hi), r.uniform(z_lo, z_hi)
        if b.free(x - width / 2, x + width / 2, z - depth / 2, z + depth / 2, 0.3, 0.5):
            b.claim(x - width / 2, x + width / 2, z - depth / 2, z + depth / 2)
            return x, z
    return None


def _populate_early(b: _Builder, road_half: float, cam_x: float, sides: list[_Side], pop: Population) -> None:
    """What claims road space before the cars: the ego car's own spot, trams, buses, closures."""
    r = b.rng
    b.claim(cam_x - 1.0, cam_x + 1.0, Z_NEAR, 4.5)  # the camera car
    _tram(b, road_half, cam_x, pop)
    if r.random() < pop.bus_p:
        _bus(b, road_half, pop)
    if r.random() < pop.construction_p:
        _construction(b, road_half, sides)


def _populate(b: _Builder, road_half: float, sides: list[_Side], pop: Population) -> None:
    """Riders on the road, pedestrians on the sidewalks (and crossing), parked two-wheelers,
    cones, bins and racks."""
    r = b.rng
    for _ in range(r.poisson(pop.cyclists)):  # near a kerb, mostly with the traffic on that side
        s = 1 if r.random() < 0.5 else -1
        spot = _road_spot(b, s * (road_half - 1.1), s * (road_half - 0.5), 0.7, 2.0, 5.0, 60.0)
        if spot:
            _bicycle(b, spot[0], 0.0, spot[1], 0 if (s > 0) == (r.random() < 0.8) else 2, rider=True)
    for _ in range(r.poisson(pop.motorcyclists)):
        spot = _road_spot(b, -road_half + 0.6, road_half - 0.6, 0.9, 2.4, 6.0, 60.0)
        if spot:
            _motorcycle(b, spot[0], 0.0, spot[1], 0 if r.random() < 0.5 else 2, rider=True)
    if r.random() < pop.crossing_p:
        z = r.uniform(6.0, 35.0)
        heading = 1 if r.random() < 0.5 else 3
        for _ in range(int(r.integers(1, 4))):
            spot = _road_spot(b, -road_half + 0.5, road_half - 0.5, 0.9, 0.9, z - 1.0, z + 1.0)
            if spot:
                _pedestrian(b, spot[0], 0.0, spot[1], heading, True, r.random() < pop.child_share)
    for _ in range(r.poisson(pop.pedestrians)):
        spot = _sidewalk_spot(b, sides, 0.9, 0.9)
        if spot:
            walking = r.random() < 0.7
            heading = int(r.choice([0, 2])) if walking else int(r.integers(0, 4))
            _pedestrian(b, *spot, heading, walking, r.random() < pop.child_share)
    for _ in range(r.poisson(pop.parked_bicycles)):
        across = r.random() < 0.5
        spot = _sidewalk_spot(b, sides, 1.9 if across else 0.6, 0.6 if across else 1.9, "kerb" if across else "any")
        if spot:
            _bicycle(b, *spot, (1 if r.random() < 0.5 else 3) if across else int(r.choice([0, 2])), rider=False)
    for _ in range(r.poisson(pop.parked_motorcycles)):
        if r.random() < 0.5:  # at the kerb, in the parking strip
            s = 1 if r.random() < 0.5 else -1
            spot = _road_spot(b, s * (road_half - 0.6), s * (road_half - 0.5), 0.9, 2.4, 5.0, 60.0)
            spot = spot and (spot[0], 0.0, spot[1])
        else:
            spot = _sidewalk_spot(b, sides, 0.9, 2.4)
        if spot:
            _motorcycle(b, *spot, int(r.choice([0, 2])), rider=False)
    for _ in range(r.poisson(pop.cones)):
        if r.random() < 0.5:
            s = 1 if r.random() < 0.5 else -1
            spot = _road_spot(b, s * (road_half - 0.6), s * (road_half - 0.3), 0.5, 0.5, 4.0, 60.0)
            spot = spot and (spot[0], 0.0, spot[1])
        else:
            spot = _sidewalk_spot(b, sides, 0.5, 0.5, "kerb")
        if spot:
            _cone(b, *spot)
    for _ in range(r.poisson(pop.debris)):
        spot = _sidewalk_spot(b, sides, 0.9, 0.9, "wall" if r.random() < 0.5 else "kerb")
        if spot:
            _debris(b, *spot)
    for _ in range(r.poisson(pop.pushables)):
        spot = _sidewalk_spot(b, sides, 0.8, 0.8, "wall" if r.random() < 0.6 else "kerb")
        if spot:
            _pushable(b, *spot)
    if r.random() < pop.bicycle_rack_p:
        walks = [sd for sd in sides if sd.sidewalk is not None and sd.sidewalk[1] - sd.sidewalk[0] >= 2.2]
        if walks:
            sd = walks[int(r.integers(0, len(walks)))]
            z0 = r.uniform(6.0, 40.0)
            xc = sd.s * (sd.sidewalk[0] + 1.0)
            if b.free(xc - 1.0, xc + 1.0, z0, z0 + 5.0, 0.1, 0.3):
                z1 = _bicycle_rack(b, sd, z0)
                b.claim(xc - 1.0, xc + 1.0, z0 - 0.4, z1)


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


def sample_scene(rng: np.random.Generator, variation: str = "clone", n_vehicles: int = 8,
                 population: Population | None = None) -> tuple[Scene, float]:
    """A random street. Returns the scene and a lateral camera position inside the road (m).

    ``population`` adds pedestrians, riders, buses, trams, barriers, cones and clutter;
    without it a street holds only cars, vans and trucks (vKITTI2's scenes)."""
    b = _Builder(rng)
    road_half = rng.uniform(3.0, 7.5)
    cam_x = rng.uniform(-road_half + 1.8, road_half - 1.8) if road_half > 1.8 else 0.0
    b.quad((-road_half, 0.0, Z_NEAR), (2 * road_half, 0, 0), (0, 0, Z_FAR - Z_NEAR), C.ROAD, b.pal.ground())
    if rng.random() < 0.8:  # dashed lane markings, part of the road class as in Cityscapes
        mat = b.pal.marking()
        for lx in np.arange(-road_half + 3.5, road_half - 1.0, 3.5):
            for z in np.arange(Z_NEAR + rng.uniform(0, 6), 120.0, 9.0):
                b.quad((lx - 0.07, -0.002, z), (0.14, 0, 0), (0, 0, 3.0), C.LANE_MARKING, mat)
    sides = [_street_side(b, s, road_half) for s in (-1, 1)]
    if rng.random() < 0.35:  # a cross street's building closing the view
        zb, hb = rng.uniform(70.0, 160.0), rng.uniform(8.0, 30.0)
        b.quad((-X_FAR, 3.0, zb), (2 * X_FAR, 0, 0), (0, -(hb + 3.0), 0), C.BUILDING, b.pal.structure())
    if population is not None:
        _populate_early(b, road_half, cam_x, sides, population)
    _vehicles(b, road_half, cam_x, n_vehicles)
    if population is not None:
        _populate(b, road_half, sides, population)
    return Scene(prims=b.prims, lighting=lighting(rng, variation), n_objects=b.n_objects,
                 objects=b.objects), cam_x


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
