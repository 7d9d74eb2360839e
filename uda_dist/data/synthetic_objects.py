"""Things standing in the synthetic street: trees, poles, signs, traffic lights, vehicles, people, riders.

Each object is drawn from the layout prior in world units (synthetic_scene.py's street) and
rasterised as camera-facing billboards at its depth, plus, for vehicles beside the camera's line of
sight, a wall along the street for the side that faces the camera; so sizes scale with depth (nearer the
bottom = bigger). Objects pass a depth test among themselves (painter's order for billboards, exact where
a parked car's side and a pedestrian interleave) and cover the background. Shapes are unions of boxes,
discs and thick segments in metres; parts (glass, lamps, tyres, skin, ...) tell synthetic_look.py how to
colour them. As in synthetic_scene.py, every draw is made whether or not the object ends up visible.
"""
from __future__ import annotations

import numpy as np

from uda_dist.data.synthetic_canvas import (
    ALT, AMBER_LIGHT, BICYCLE, BUS, CAR, DARK, FACE_CAMERA, FACE_LEFT, FACE_RIGHT, GLASS, GREEN, GREEN_LIGHT,
    HEAD, HEAD_LIGHT, IGNORE, LAMP, LAMP_LIGHT, LIGHT, MOTORCYCLE, PERSON, PLAIN, POLE, RED_LIGHT, RIDER,
    SIGN, SKIN, TAIL, TAIL_LIGHT, TRIM, TRUCK, VEGETATION, Canvas, billboard, choose, wall_plane)
from uda_dist.data.synthetic_scene import Street

SIGNAL_PARTS = {RED_LIGHT: TAIL, AMBER_LIGHT: LAMP, GREEN_LIGHT: GREEN}
OBJECT_DEPTH = 100.0  # rows of trees, lamps and traffic stop here (beyond, they are a few pixels)


def place_objects(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    """Draw and paint every object of the street, then (sometimes) the ego vehicle's bonnet."""
    _trees(cv, rng, street)
    _street_lamps(cv, rng, street)
    _signs(cv, rng, street)
    _traffic_lights(cv, rng, street)
    _traffic(cv, rng, street)
    _parked(cv, rng, street)
    _pedestrians(cv, rng, street)
    _riders(cv, rng, street)
    hood = (rng.uniform(0.05, 0.13), rng.uniform(0.5, 0.9))
    if rng.random() < 0.25:
        _hood(cv, *hood)


def _disc(u, v, cu: float, cv_: float, r: float) -> np.ndarray:
    return (u - cu) ** 2 + (v - cv_) ** 2 < r * r


def _box(u, v, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _segment(u, v, p: tuple[float, float], q: tuple[float, float], r: float) -> np.ndarray:
    """Pixels within r of the segment p-q."""
    du, dv = q[0] - p[0], q[1] - p[1]
    t = np.clip(((u - p[0]) * du + (v - p[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return (u - p[0] - t * du) ** 2 + (v - p[1] - t * dv) ** 2 < r * r


def _pseudo_angle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A continuous stand-in for atan2 on [0, 4) from exact arithmetic only."""
    p = y / (np.abs(x) + np.abs(y) + 1e-9)
    return np.where(x >= 0, p, 2.0 - p) % 4.0


def _sprite(cv: Canvas, X: float, Z: float, half_w: float, top: float, inst: int, shape, *args) -> np.ndarray | None:
    """Paint shape(u, v, *args) -> (mask, part) as a billboard; returns the pixels written."""
    got = billboard(cv.cam, X, Z, half_w, top)
    if got is None:
        return None
    region, u, v = got
    mask, part = shape(u, v, *args)
    return cv.paint(region, mask, inst, part, depth=Z, su=u, sv=v, normal=FACE_CAMERA, obj=True)


# ---- vegetation and street furniture ---------------------------------------------------------------

def _trees(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for side, sign in ((0, -1.0), (1, 1.0)):
        avenue, on_walk = rng.random() < 0.45, street.walk[side] > 2.5
        verge_x = street.curb(side) - sign * 0.5 * street.verge[side]
        X = sign * (street.facade(side) - rng.uniform(0.6, 1.2)) if on_walk else verge_x
        spacing, z = rng.uniform(6.0, 14.0), rng.uniform(1.0, 8.0)
        while z < min(street.z_end, OBJECT_DEPTH):
            p = (rng.uniform(1.8, 3.2), rng.uniform(0.2, 0.4), rng.uniform(1.3, 2.6), rng.uniform(0.8, 1.3))
            knots = rng.uniform(-0.22, 0.22, size=9)
            knots[-1] = knots[0]
            if avenue and (on_walk or street.verge[side] > 1.0):
                inst = cv.new_instance(VEGETATION)
                trunk_h, trunk_w, ry, aspect = p
                half = ry * aspect * 1.3
                _sprite(cv, X, z, half, trunk_h + 2.4 * ry, inst, _tree_shape, trunk_h, trunk_w, ry * aspect, ry, knots)
            z += spacing * rng.uniform(0.8, 1.2)


def _tree_shape(u, v, trunk_h, trunk_w, rx, ry, knots):
    cy = trunk_h + ry * 0.9
    du, dv = u / rx, (v - cy) / ry
    reach = 1.0 + np.interp(_pseudo_angle(du, dv), np.linspace(0.0, 4.0, 9), knots)
    canopy = du * du + dv * dv < reach * reach
    trunk = (np.abs(u) < trunk_w / 2) & (v < cy)
    return canopy | trunk, np.where(canopy, PLAIN, DARK)


def _pole_shape(u, v, height, width, arm):
    shaft = (np.abs(u) < width / 2) & (v < height)
    if not arm:
        return shaft, PLAIN
    reach = (u * np.sign(arm) >= 0) & (np.abs(u) < abs(arm)) & (v > height - 0.15) & (v < height)
    head = (np.abs(u - arm) < 0.35) & (v > height - 0.35) & (v < height)
    return shaft | reach | head, np.where(head & (v < height - 0.15), LAMP, PLAIN)


def _street_lamps(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for side, sign in ((0, -1.0), (1, 1.0)):
        present = rng.random() < 0.55
        spacing, z = rng.uniform(18.0, 35.0), rng.uniform(3.0, 20.0)
        X = street.curb(side) + sign * 0.4
        while z < min(street.z_end, OBJECT_DEPTH):
            height, arm = rng.uniform(6.5, 9.0), -sign * rng.uniform(1.0, 2.5)
            if present:
                inst = cv.new_instance(POLE)
                painted = _sprite(cv, X, z, abs(arm) + 0.4, height, inst, _pole_shape, height, 0.22, arm)
                if painted is not None and painted.any():
                    cam, scale = cv.cam, cv.cam.focal / z
                    pool = (cam.col(X + arm, z), cam.row(0.0, z), 6.0 * scale, 6.0 * scale * 1.5 / z)
                    cv.light(LAMP_LIGHT, cam.col(X + arm, z), cam.row(height - 0.3, z), max(0.3 * scale, 1.0), pool)
            z += spacing


def _sign_shape(u, v, kind, size, center):
    d = np.maximum(np.abs(u), np.abs(v - center))
    if kind == 0:  # square plate
        outer, inner = d < size / 2, d < size * 0.38
    elif kind == 1:  # round
        r2 = u * u + (v - center) ** 2
        outer, inner = r2 < (size / 2) ** 2, r2 < (size * 0.38) ** 2
    elif kind == 2:  # triangle, point up
        t = (center + size / 2 - v) / size
        outer = (t > 0) & (t < 1) & (np.abs(u) < t * size * 0.58)
        inner = (t > 0.22) & (t < 0.88) & (np.abs(u) < (t - 0.12) * size * 0.5)
    else:  # diamond
        m = np.abs(u) + np.abs(v - center)
        outer, inner = m < size / 2, m < size * 0.36
    return outer, np.where(inner, PLAIN, TRIM)


def _signs(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for _ in range(int(rng.poisson(2.5))):
        side = int(rng.integers(2))
        X = street.curb(side) + (-1.0 if side == 0 else 1.0) * rng.uniform(0.2, 0.8)
        z, height = rng.uniform(4.0, 70.0), rng.uniform(2.4, 3.4)
        plates = [(int(rng.integers(4)), rng.uniform(0.5, 0.85)) for _ in range(1 + int(rng.random() < 0.3))]
        pole = cv.new_instance(POLE)
        _sprite(cv, X, z, 0.1, height, pole, _pole_shape, height, rng.uniform(0.07, 0.12), 0.0)
        top = height + plates[0][1] * 0.4
        for kind, size in plates:
            inst = cv.new_instance(SIGN)
            _sprite(cv, X, z - 0.05, size / 2, top + 0.1, inst, _sign_shape, kind, size, top - size / 2)
            top -= size + 0.08


def _signal_shape(u, v, center, lit):
    housing = (np.abs(u) < 0.18) & (np.abs(v - center) < 0.48)
    lamps = [_disc(u, v, 0.0, center + dy, 0.11) for dy in (0.3, 0.0, -0.3)]
    part = np.where(lamps[lit], SIGNAL_PARTS[RED_LIGHT + lit], np.where(lamps[0] | lamps[1] | lamps[2], DARK, PLAIN))
    return housing, part


def _traffic_lights(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    if rng.random() >= 0.55:
        return
    z = rng.uniform(10.0, 50.0)
    for side, sign in ((0, -1.0), (1, 1.0)):
        X = street.curb(side) + sign * rng.uniform(0.3, 0.8)
        height, mast, lit = rng.uniform(3.0, 4.2), rng.random() < 0.4, int(rng.integers(3))
        arm = -sign * rng.uniform(2.0, 5.0) if mast else 0.0
        pole_h = 5.6 if mast else height
        pole, box = cv.new_instance(POLE), cv.new_instance(LIGHT)
        _sprite(cv, X, z, abs(arm) + 0.2, pole_h, pole, _mast_shape, pole_h, 0.2, arm)
        cx, center = X + arm, (pole_h - 0.6 if mast else height + 0.4)
        painted = _sprite(cv, cx, z - 0.05, 0.2, center + 0.5, box, _signal_shape, center, lit)
        if painted is not None and painted.any():
            cam = cv.cam
            y = cam.row(center + 0.3 - 0.3 * lit, z)
            cv.light(RED_LIGHT + lit, cam.col(cx, z), y, max(0.12 * cam.focal / z, 0.8))


def _mast_shape(u, v, height, width, arm):
    shaft = (np.abs(u) < width / 2) & (v < height)
    reach = (u * np.sign(arm) >= 0) & (np.abs(u) < abs(arm)) & (np.abs(v - height + 0.1) < 0.1)
    return (shaft | reach) if arm else shaft, PLAIN


# ---- vehicles ----------------------------------------------------------------------------------------

def _vehicle_face(u, v, cls, w, h, front, lit):
    """A vehicle seen from behind or ahead (u across, v up); lamps off (TRIM) unless lit."""
    au, hw = np.abs(u), w / 2
    lamp = (HEAD if front else TAIL) if lit else TRIM
    if cls == CAR:
        t = (v - 0.55 * h) / (0.45 * h)
        body, cabin = (au < hw) & (v > 0.2) & (v < 0.55 * h), (t >= 0) & (t < 1) & (au < hw * (0.9 - 0.25 * t))
        wheels = (v < 0.45) & (au > hw - 0.32) & (au < hw - 0.04)
        glass = cabin & (t > 0.1) & (t < 0.85) & (au < hw * (0.9 - 0.25 * t) - 0.08)
        lights = body & (v > 0.42 * h) & (v < 0.53 * h) & (au > hw - 0.38)
        dark = wheels | (body & (v < 0.3))
        mask = body | cabin | wheels
    else:
        floor = 0.3 if cls == BUS else 0.9
        mask = (au < hw) & (v > floor) & (v < h)
        wheels = (v < 0.9) & (au > hw - 0.5) & (au < hw - 0.05)
        glass = (au < hw - 0.15) & (v > (0.35 if front else 0.55) * h) & (v < 0.88 * h)
        glass &= (cls == BUS) | front
        lights = (v > floor + 0.2) & (v < floor + 0.45) & (au > hw - 0.35)
        dark = wheels | ((au < hw * 0.9) & (v > 0.5) & (v < floor + 0.1))
        mask = mask | wheels | dark
    return mask, choose(PLAIN, (glass, GLASS), (lights, lamp), (dark, DARK))


def _vehicle_side(s, h, cls, length, height, flip):
    """A vehicle seen from the side (s along the street from its near end, h up)."""
    s = (length - s) if flip else s
    wheels = _disc(s, h, 0.18 * length, 0.33, 0.32) | _disc(s, h, 0.82 * length, 0.33, 0.32)
    if cls == CAR:
        t = (h - 0.55 * height) / (0.45 * height)
        body = (h > 0.22) & (h < 0.55 * height) & (s > 0) & (s < length)
        lo, hi = 0.2 * length + t * 0.12 * length, 0.78 * length - t * 0.1 * length
        cabin = (t >= 0) & (t < 1) & (s > lo) & (s < hi)
        glass = cabin & (t > 0.1) & (t < 0.85) & (s > lo + 0.1) & (s < hi - 0.1) & (np.abs(s - 0.5 * length) > 0.06)
    else:  # a box truck or van, cab at the far end
        box = (s > 0) & (s < length - 2.3) & (h > 0.8) & (h < height)
        cab = (s >= length - 2.3) & (s < length) & (h > 0.5) & (h < 0.8 * height)
        body, cabin = box, cab
        glass = cab & (s > length - 1.5) & (s < length - 0.2) & (h > 0.5 * height)
    return body | cabin | wheels, choose(PLAIN, (glass, GLASS), (wheels, DARK))


def _paint_vehicle(cv: Canvas, cls: int, X: float, z: float, dims: tuple[float, float, float], front: bool,
                   lit: bool) -> None:
    """Face billboard at depth z plus, when it faces the camera, the side wall from z to z + length."""
    w, h, length = dims
    inst = cv.new_instance(cls)
    painted = _sprite(cv, X, z, w / 2, h, inst, _vehicle_face, cls, w, h, front, lit)
    side_x = X + w / 2 if X < 0 else X - w / 2
    if abs(X) > w / 2 + 0.2:
        got = wall_plane(cv.cam, side_x, z, z + length, h)
        if got is not None:
            region, zz, hh, inside = got
            mask, part = _vehicle_side(zz - z, hh, cls, length, h, front)
            cv.paint(region, inside & mask, inst, part, depth=zz, su=zz - z, sv=hh,
                     normal=FACE_RIGHT if X < 0 else FACE_LEFT, obj=True)
    if lit and painted is not None and painted.any():
        cam = cv.cam
        for dx in (-0.35 * w, 0.35 * w):
            y = cam.row(0.5 * h if cls == CAR else 1.2, z)
            cv.light(HEAD_LIGHT if front else TAIL_LIGHT, cam.col(X + dx, z), y, max(0.12 * cam.focal / z, 0.8))


def _draw_dims(rng: np.random.Generator) -> tuple[int, tuple[float, float, float]]:
    kind = rng.random()
    car = (rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6), rng.uniform(3.9, 4.8))
    if kind < 0.93:
        return CAR, car if kind < 0.83 else (1.95, rng.uniform(1.9, 2.3), rng.uniform(4.8, 5.5))
    if kind < 0.97:
        return TRUCK, (2.45, rng.uniform(3.0, 3.6), rng.uniform(6.5, 10.0))
    return BUS, (2.55, rng.uniform(3.0, 3.3), rng.uniform(11.0, 13.0))


def _traffic(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for lane in range(street.lanes):
        parked = (lane == 0 and street.parking[0]) or (lane == street.lanes - 1 and street.parking[1])
        oncoming = street.lanes >= 2 and lane < street.lanes // 2
        z = rng.uniform(4.0, 20.0)
        while z < min(street.z_end, OBJECT_DEPTH):
            cls, dims = _draw_dims(rng)
            X = street.lane_center(lane) + rng.uniform(-0.3, 0.3)
            if not parked and rng.random() < 0.6:
                if not (abs(X) < 1.5 and z < 8.0):
                    _paint_vehicle(cv, cls, X, z, dims, oncoming, lit=True)
            z += dims[2] + rng.uniform(3.0, 30.0)


def _parked(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for side in (0, 1):
        z = rng.uniform(1.0, 10.0)
        while z < min(street.z_end, 90.0):
            cls, dims = _draw_dims(rng)
            cls, front = (TRUCK if cls == BUS else cls), rng.random() < 0.5
            if street.parking[side]:
                X = street.road[0] + 0.25 + dims[0] / 2 if side == 0 else street.road[1] - 0.25 - dims[0] / 2
                _paint_vehicle(cv, cls, X, z, dims, front, lit=False)
            z += dims[2] + rng.uniform(0.6, 8.0)


# ---- people ------------------------------------------------------------------------------------------

def _person_shape(u, v, height, stride):
    hip = 0.47 * height
    head = _disc(u, v, 0.0, height - 0.115, 0.115)
    neck = (np.abs(u) < 0.05) & (v > 0.82 * height) & (v < height - 0.2)
    torso = (np.abs(u) < 0.21) & (v >= hip) & (v < 0.83 * height)
    arms = (np.abs(u) < 0.27) & (v >= 0.52 * height) & (v < 0.8 * height)
    legs = (_segment(u, v, (-0.09, hip), (-0.09 - stride, 0.05), 0.075)
            | _segment(u, v, (0.09, hip), (0.09 + stride, 0.05), 0.075))
    mask = head | neck | torso | arms | legs
    return mask, choose(ALT, (head | neck, SKIN), (torso | arms, PLAIN))


def _pedestrians(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    walkers = int(rng.poisson(3.0))
    crossers = int(rng.poisson(1.2)) if street.crosswalk else 0
    for k in range(walkers + crossers):
        side = int(rng.integers(2))
        inner, outer = abs(street.curb(side)) + 0.3, street.facade(side) - 0.3
        walk = ((-1.0 if side == 0 else 1.0) * rng.uniform(inner, max(outer, inner + 0.1)),
                3.0 + min(rng.exponential(22.0), 100.0))
        cross = (rng.uniform(*street.road), street.crosswalk + rng.uniform(0.5, 3.5))
        height = rng.uniform(1.55, 1.95) if rng.random() < 0.9 else rng.uniform(1.0, 1.35)
        stride, group = rng.uniform(-0.2, 0.2), int(rng.poisson(0.4))
        X, z = cross if k >= walkers else walk
        for g in range(1 + group):
            inst = cv.new_instance(PERSON)
            _sprite(cv, X + 0.55 * g, z + 0.3 * g, 0.35, height + 0.05, inst, _person_shape, height, stride * (-1) ** g)


def _rider_shape(u, v, seat, facing):
    u = u * facing
    torso = _segment(u, v, (-0.15, seat + 0.05), (0.1, seat + 0.6), 0.17)
    head = _disc(u, v, 0.17, seat + 0.77, 0.11)
    thigh = _segment(u, v, (-0.15, seat + 0.05), (0.18, seat - 0.12), 0.08)
    shin = _segment(u, v, (0.18, seat - 0.12), (0.05, seat - 0.5), 0.07)
    arm = _segment(u, v, (0.1, seat + 0.55), (0.42, seat + 0.15), 0.05)
    return torso | head | thigh | shin | arm, choose(PLAIN, (head, SKIN), (thigh | shin, ALT))


def _bike_shape(u, v, motor, facing):
    u = u * facing
    r = 0.32 if motor else 0.34
    wheel = [(u - c) ** 2 + (v - r) ** 2 for c in (-0.55, 0.55)]
    if motor:
        wheels = (wheel[0] < r * r) | (wheel[1] < r * r)
        body = _disc(u / 1.9, v, 0.0, 0.62, 0.24) | _segment(u, v, (0.45, 0.9), (0.55, r), 0.06)
        return wheels | body, np.where(wheels, DARK, PLAIN)
    rings = [(w < r * r) & (w > (r - 0.09) ** 2) for w in wheel]
    frame = (_segment(u, v, (-0.55, r), (-0.1, r), 0.04) | _segment(u, v, (-0.1, r), (0.35, 0.75), 0.04)
             | _segment(u, v, (-0.2, 0.8), (0.35, 0.75), 0.04) | _segment(u, v, (0.35, 0.75), (0.55, r), 0.04)
             | _segment(u, v, (-0.1, r), (-0.2, 0.85), 0.04) | _segment(u, v, (0.35, 0.75), (0.42, 1.0), 0.04))
    return rings[0] | rings[1] | frame, np.where(rings[0] | rings[1], DARK, PLAIN)


def _riders(cv: Canvas, rng: np.random.Generator, street: Street) -> None:
    for _ in range(int(rng.poisson(0.5))):
        motor, facing = rng.random() < 0.25, 1.0 if rng.random() < 0.5 else -1.0
        X, z = rng.uniform(street.road[0] + 0.5, street.road[1] - 0.5), rng.uniform(5.0, 50.0)
        bike, rider = cv.new_instance(MOTORCYCLE if motor else BICYCLE), cv.new_instance(RIDER)
        _sprite(cv, X, z, 0.95, 1.2, bike, _bike_shape, motor, facing)
        _sprite(cv, X, z - 0.05, 0.6, 1.85, rider, _rider_shape, 0.85 if motor else 0.95, facing)


def _hood(cv: Canvas, height: float, width: float) -> None:
    """The ego vehicle's bonnet along the bottom edge (ignore label, as in Cityscapes)."""
    cam = cv.cam
    xs = (np.arange(cam.width) + 0.5) / cam.width * 2.0 - 1.0
    top = cam.height * (1.0 - height * np.clip(1.0 - (xs / width) ** 2, 0.0, 1.0))
    inside = (np.arange(cam.height)[:, None] + 0.5) > top[None, :]
    cv.paint((slice(None), slice(None)), inside, cv.new_instance(IGNORE), DARK, depth=0.6, su=0.0, sv=0.0,
             normal=FACE_CAMERA, obj=True)
