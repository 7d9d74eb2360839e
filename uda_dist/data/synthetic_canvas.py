"""Drawing primitives of the synthetic benchmark: the camera, the canvas of maps, billboards and walls.

A pinhole camera CAM_H metres above a flat ground looks along +Z (+X right, +Y up; metres; the horizon
row is y_h and the vanishing point column x_v). Everything in a scene is drawn with two primitives: a
camera-facing rectangle standing on the ground (billboard: persons, vehicles seen from behind, poles,
trees, the block closing the street) and a wall X = const along the street (wall_plane: facades, fences,
the sides of vehicles), so sizes scale with depth. The Canvas keeps, per pixel, the instance (hence the
trainId label), the part (glass, lamp, tyre, ...), the facing, the depth and surface coordinates; and the
light sources for night scenes. synthetic_look.py turns these maps into a domain's image.

Label geometry uses only exactly rounded arithmetic (no vectorised transcendental functions), so labels
do not change with the CPU's SIMD dispatch.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
IGNORE = 255
# parts: how a pixel of an instance is coloured (synthetic_look.py gives each part a look per domain)
(PLAIN, GLASS, DARK, LAMP, MARK, SKIN, TRIM, GLASS_LIT, HEAD, TAIL, ALT, GREEN) = range(12)
NUM_PARTS = 12
# which way a surface faces (sun shading): UP ground, FACE_RIGHT normal +X (left-side walls), ...
UP, FACE_RIGHT, FACE_LEFT, FACE_CAMERA = range(4)
# night light sources: street lamp, headlight, tail light, and the three signal colours
LAMP_LIGHT, HEAD_LIGHT, TAIL_LIGHT, RED_LIGHT, AMBER_LIGHT, GREEN_LIGHT = range(6)
CAM_H = 1.5  # camera height (m)
NEAR = 0.5  # near clipping depth (m)
SKY_DEPTH = 1000.0


@dataclasses.dataclass(frozen=True)
class Camera:
    height: int
    width: int
    focal: float  # pixels
    x_v: float  # vanishing point column (pixels)
    y_h: float  # horizon row (pixels)

    def col(self, X: float, Z: float) -> float:
        return self.x_v + self.focal * X / Z

    def row(self, Y: float, Z: float) -> float:
        return self.y_h + self.focal * (CAM_H - Y) / Z


@dataclasses.dataclass(frozen=True)
class SceneMaps:
    """Everything appearance needs: per-pixel maps, per-instance classes and tones, light sources."""

    inst: np.ndarray  # HxW int32 instance index
    part: np.ndarray  # HxW uint8 part (PLAIN, GLASS, ...)
    normal: np.ndarray  # HxW uint8 facing (UP, FACE_RIGHT, FACE_LEFT, FACE_CAMERA)
    depth: np.ndarray  # HxW float32 depth along the view axis (m)
    su: np.ndarray  # HxW float32 surface coordinates (m): across/along the surface
    sv: np.ndarray
    shadow: np.ndarray  # HxW bool: ground in the facades' cast shadow
    classes: np.ndarray  # I uint8 trainId per instance (255 ignore)
    tones: np.ndarray  # Ix4 float: a uniform variant draw and three standard normals per instance
    lights: np.ndarray  # Lx8 float: kind, x, y, glow radius (px), pool x, y, rx, ry (px; 0 = no pool)
    horizon: float  # horizon row (px)
    focal: float  # focal length (px)
    sun_side: int  # the street side whose facades cast shadows on the ground (0 left, 1 right)

    @property
    def label(self) -> np.ndarray:
        return self.classes[self.inst]


class Canvas:
    """The maps being painted, and the instances and light sources painted so far."""

    def __init__(self, cam: Camera, rng: np.random.Generator) -> None:
        shape = (cam.height, cam.width)
        self.cam, self.rng = cam, rng
        self.sun_side = 0
        self.inst = np.zeros(shape, np.int32)
        self.part = np.zeros(shape, np.uint8)
        self.normal = np.full(shape, FACE_CAMERA, np.uint8)
        self.depth = np.full(shape, SKY_DEPTH, np.float32)
        self.obj_depth = np.full(shape, np.inf, np.float32)
        self.su = np.zeros(shape, np.float32)
        self.sv = np.zeros(shape, np.float32)
        self.shadow = np.zeros(shape, bool)
        self.classes: list[int] = []
        self.lights: list[tuple[float, ...]] = []
        self.new_instance(SKY)

    def new_instance(self, cls: int) -> int:
        """Register an instance; call it whether or not the instance turns out visible."""
        self.classes.append(cls)
        return len(self.classes) - 1

    def paint(self, region: tuple[slice, slice], mask: np.ndarray, inst: int | np.ndarray,
              part: int | np.ndarray = PLAIN, *, depth, su, sv, normal: int, obj: bool = False) -> np.ndarray:
        """Write the masked pixels of region; objects (obj=True) pass a depth test among objects only.
        Returns the pixels written."""
        if obj:
            view = self.obj_depth[region]
            mask = mask & (depth < view)
            np.copyto(view, depth, where=mask, casting="unsafe")
        pairs = ((self.inst, inst), (self.part, part), (self.depth, depth), (self.normal, normal))
        if not obj:  # surface coordinates serve the textures of ground and walls only
            pairs += ((self.su, su), (self.sv, sv))
        for arr, value in pairs:
            np.copyto(arr[region], value, where=mask, casting="unsafe")
        return mask

    def light(self, kind: int, x: float, y: float, radius: float, pool: tuple[float, ...] = (0, 0, 0, 0)) -> None:
        self.lights.append((kind, x, y, radius, *pool))

    def finish(self) -> SceneMaps:
        tones = np.concatenate([self.rng.random((len(self.classes), 1)),
                                self.rng.standard_normal((len(self.classes), 3))], axis=1)
        lights = np.array(self.lights, np.float64).reshape(-1, 8)
        return SceneMaps(inst=self.inst, part=self.part, normal=self.normal, depth=self.depth, su=self.su,
                         sv=self.sv, shadow=self.shadow, classes=np.array(self.classes, np.uint8), tones=tones,
                         lights=lights, horizon=self.cam.y_h, focal=self.cam.focal, sun_side=self.sun_side)


def frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def choose(default: int, *cases: tuple[np.ndarray, int]) -> np.ndarray:
    """uint8 parts: the value of the first case whose mask holds, else default (np.select, faster)."""
    shape = np.broadcast_shapes(*(np.shape(mask) for mask, _ in cases))
    out = np.full(shape, default, np.uint8)
    for mask, value in reversed(cases):
        np.copyto(out, value, where=mask)
    return out


def _region(cam: Camera, c0: float, c1: float, r0: float, r1: float) -> tuple[slice, slice] | None:
    c0, c1 = max(math.floor(c0), 0), min(math.ceil(c1), cam.width)
    r0, r1 = max(math.floor(r0), 0), min(math.ceil(r1), cam.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def billboard(cam: Camera, X: float, Z: float, half_w: float, top: float, bottom: float = 0.0):
    """Region and local coordinates (u right, v up; metres, 1xw and hx1) of the camera-facing rectangle
    |u| <= half_w, bottom <= v <= top standing at (X, Z); None if off screen."""
    if Z < NEAR:
        return None
    scale = cam.focal / Z
    xc = cam.col(X, Z)
    region = _region(cam, xc - half_w * scale, xc + half_w * scale, cam.row(top, Z), cam.row(bottom, Z))
    if region is None:
        return None
    u = (np.arange(region[1].start, region[1].stop) + 0.5 - xc) / scale
    v = CAM_H + (cam.y_h - 0.5 - np.arange(region[0].start, region[0].stop)) / scale
    return region, u[None, :], v[:, None]


def wall_plane(cam: Camera, X: float, z0: float, z1: float, top: float, bottom: float = 0.0):
    """Region, depth per column (1xw), height per pixel (hxw) and inside mask of the wall X = const
    spanning depths [z0, z1) and heights [bottom, top); None if off screen."""
    z0 = max(z0, NEAR)
    if z1 <= z0:
        return None
    xa, xb = sorted((cam.col(X, z0), cam.col(X, z1)))
    rows = (cam.row(top, z0), cam.row(top, z1), cam.row(bottom, z0), cam.row(bottom, z1))
    region = _region(cam, xa, xb, min(rows), max(rows))
    if region is None:
        return None
    dx = np.arange(region[1].start, region[1].stop) + 0.5 - cam.x_v
    with np.errstate(divide="ignore"):
        z = (cam.focal * X / dx)[None, :]
    h = CAM_H + (cam.y_h - 0.5 - np.arange(region[0].start, region[0].stop))[:, None] * z / cam.focal
    inside = (z >= z0) & (z < z1) & (h >= bottom) & (h < top)
    return region, z, h, inside
