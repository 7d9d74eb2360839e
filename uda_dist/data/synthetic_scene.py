"""Layout prior of the synthetic street-scene benchmark: the street and its background.

The camera (synthetic_canvas.py) looks down a straight street. The ground carries the road (lanes, dashed
markings, an optional crosswalk), grass verges, sidewalks and yards; walls X = const on both sides carry
buildings with window grids, walls, fences, hedges and tree lines, a second row of walls stands behind them
(skipped where wholly hidden), a block may close the street, and the facades on one side cast their
shadow on the ground. synthetic_objects.py then stands objects on the ground. Background layers are
painted far to near (painter's order). Every domain draws from this one prior.

No random draw depends on the image size (instances are created and their randomness drawn whether or
not they are visible), so a seed gives the same street at any resolution.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from uda_dist.data.synthetic_canvas import (
    BUILDING, CAM_H, DARK, FACE_CAMERA, FACE_LEFT, FACE_RIGHT, FENCE, GLASS, GLASS_LIT, MARK, NEAR, PLAIN, ROAD,
    SIDEWALK, TERRAIN, TRIM, UP, VEGETATION, WALL, Camera, Canvas, billboard, choose, frac, wall_plane)

SIDE_DEPTH = 170.0  # facade segments stop here (beyond, they are a few pixels at the vanishing point)
OPEN = -1  # a facade segment with nothing standing in it
SEGMENT_KINDS = (BUILDING, VEGETATION, WALL, FENCE, OPEN)
URBAN_ODDS = (0.66, 0.14, 0.08, 0.06, 0.06)
PARK_ODDS = (0.14, 0.50, 0.06, 0.14, 0.16)
BACK_ODDS = (0.62, 0.28, 0.0, 0.0, 0.10)


@dataclasses.dataclass(frozen=True)
class Street:
    """Cross-section of the street (metres; index 0 = left side, 1 = right side)."""

    road: tuple[float, float]  # X of the left and right road edges
    verge: tuple[float, float]  # grass strip between road and sidewalk
    walk: tuple[float, float]  # sidewalk width
    yard: tuple[int, int]  # ground class beyond the facade line (seen through gaps)
    lanes: int
    parking: tuple[bool, bool]  # outermost lane on that side used for parking
    z_end: float  # depth of the block closing the street (or far away)
    crosswalk: float  # depth of a crosswalk's near edge, 0 = none

    def facade(self, side: int) -> float:
        """|X| of the facade line on that side."""
        edge = -self.road[0] if side == 0 else self.road[1]
        return edge + self.verge[side] + self.walk[side]

    def curb(self, side: int) -> float:
        """Signed X of the sidewalk's inner edge."""
        return self.road[0] - self.verge[0] if side == 0 else self.road[1] + self.verge[1]

    @property
    def lane_w(self) -> float:
        return (self.road[1] - self.road[0]) / self.lanes

    def lane_center(self, lane: int) -> float:
        return self.road[0] + (lane + 0.5) * self.lane_w


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch [z0, z1) of one wall line: a building, a tree line or hedge, a wall, a fence, or open."""

    kind: int
    z0: float
    z1: float
    height: float
    params: tuple[float, ...]  # buildings: floor, ground floor, window spacing, offset, win_w, win_h, shop, lit
    knots: np.ndarray  # ragged top of tree lines, one knot per 3 m (24 knots cover the longest segment)


def draw_background(rng: np.random.Generator, height: int, width: int) -> tuple[Canvas, Street]:
    """Draw a camera and a street from the prior and paint sky, ground, end block and facades."""
    cam = Camera(height=height, width=width, focal=width * rng.uniform(0.8, 1.05),
                 x_v=width * rng.uniform(0.42, 0.58), y_h=height * rng.uniform(0.37, 0.5))
    cv = Canvas(cam, rng)
    street = _draw_street(rng)
    park = rng.random(2) < 0.25
    fronts = [_draw_segments(rng, street.z_end, PARK_ODDS if p else URBAN_ODDS, (4.0, 30.0)) for p in park]
    backs = [_draw_segments(rng, street.z_end, BACK_ODDS, (12.0, 50.0)) for _ in (0, 1)]
    back_gap = rng.uniform(8.0, 30.0, size=2)
    sun_side, sun_cot = int(rng.integers(2)), rng.uniform(0.2, 1.2)  # shadows cast by that side's facades
    cv.sun_side = sun_side
    _paint_ground(cv, street, fronts[sun_side], sun_side, sun_cot)
    if street.z_end < 300.0:
        _paint_end_block(cv, _draw_blocks(rng), street.z_end)
    for side in (0, 1):
        sign, normal = (-1.0, FACE_RIGHT) if side == 0 else (1.0, FACE_LEFT)
        ratio = street.facade(side) / (street.facade(side) + back_gap[side])
        for seg in backs[side]:
            if not _hidden(seg, fronts[side], ratio):
                _paint_segment(cv, seg, sign * (street.facade(side) + back_gap[side]), normal)
        for seg in fronts[side]:
            _paint_segment(cv, seg, sign * street.facade(side), normal)
    return cv, street


def _hidden(seg: Segment, fronts: list[Segment], ratio: float) -> bool:
    """Whether a back-row segment is wholly behind front-row buildings (ratio = front X / back X)."""
    top = CAM_H + (seg.height + 2.0 - CAM_H) * ratio
    near, far = seg.z0 * ratio, seg.z1 * ratio
    if far > fronts[-1].z1:
        return False
    return all(f.kind == BUILDING and f.height >= top for f in fronts if f.z1 > near and f.z0 < far)


def _draw_street(rng: np.random.Generator) -> Street:
    lanes = int(rng.choice([1, 2, 2, 3, 4]))
    lane_w = rng.uniform(2.9, 3.7)
    parking = (bool(lanes >= 2 and rng.random() < 0.35), bool(lanes >= 3 and rng.random() < 0.35))
    free = [k for k in range(lanes) if not (k == 0 and parking[0]) and not (k == lanes - 1 and parking[1])]
    drive = [k for k in free if k >= lanes // 2] or free
    cam_lane = int(rng.choice(drive))
    left = -(cam_lane + 0.5) * lane_w + rng.uniform(-0.5, 0.5)
    verge = tuple(float(v) * (rng.random() < 0.3) for v in rng.uniform(0.8, 2.5, size=2))
    walk = tuple(float(w) * (rng.random() < 0.92) for w in rng.uniform(1.5, 4.5, size=2))
    yard = tuple(int(y) for y in rng.choice([TERRAIN, TERRAIN, SIDEWALK], size=2))
    z_end = rng.uniform(45.0, 160.0) if rng.random() < 0.55 else 400.0
    crosswalk = rng.uniform(8.0, 30.0) if rng.random() < 0.3 else 0.0
    return Street(road=(left, left + lanes * lane_w), verge=verge, walk=walk, yard=yard, lanes=lanes,
                  parking=parking, z_end=z_end, crosswalk=crosswalk)


def _draw_segments(rng: np.random.Generator, z_end: float, odds: tuple[float, ...],
                   length: tuple[float, float]) -> list[Segment]:
    """Consecutive segments from just behind the camera to z_end (at most SIDE_DEPTH m)."""
    n = 48  # enough to reach SIDE_DEPTH with the shortest segments
    kind = np.array(SEGMENT_KINDS)[rng.choice(len(odds), size=n, p=odds)]
    z0 = rng.uniform(-8.0, 2.0) + np.concatenate([[0.0], np.cumsum(rng.uniform(*length, size=n))])
    floor = rng.uniform(2.9, 3.6, size=n)
    hedge = rng.random(n) < 0.35
    heights = {BUILDING: floor * rng.integers(2, 9, size=n) + rng.uniform(0.5, 1.5, size=n) + length[0] / 4,
               VEGETATION: np.where(hedge, rng.uniform(1.0, 1.8, size=n), rng.uniform(4.0, 11.0, size=n)),
               WALL: rng.uniform(1.0, 2.8, size=n), FENCE: rng.uniform(1.0, 2.0, size=n), OPEN: np.zeros(n)}
    params = np.stack([floor, *_draw_facades(rng, floor)], axis=1)
    knots = rng.uniform(-1.5, 1.5, size=(n, 24))
    z_lim = min(z_end, SIDE_DEPTH)
    return [Segment(kind=int(kind[k]), z0=float(z0[k]), z1=float(min(z0[k + 1], z_lim)),
                    height=float(heights[kind[k]][k]), params=tuple(params[k]), knots=knots[k])
            for k in range(n) if z0[k] < z_lim]


def _draw_facades(rng: np.random.Generator, floor: np.ndarray) -> list[np.ndarray]:
    """Ground floor height, window spacing, offset, window width and height, shop front, lit share."""
    n = len(floor)
    return [floor * rng.uniform(1.0, 1.4, size=n), rng.uniform(1.6, 3.4, size=n), rng.uniform(0.0, 3.0, size=n),
            rng.uniform(0.3, 0.6, size=n), rng.uniform(0.35, 0.6, size=n), (rng.random(n) < 0.4).astype(float),
            rng.uniform(0.0, 0.6, size=n)]


def _paint_ground(cv: Canvas, street: Street, casters: list[Segment], sun_side: int, sun_cot: float) -> None:
    """Ground bands by X (yards, sidewalks, verges, road), road markings, and the facades' cast shadow."""
    cam = cv.cam
    classes = (street.yard[0], SIDEWALK, TERRAIN, ROAD, TERRAIN, SIDEWALK, street.yard[1])
    band_inst = np.array([cv.new_instance(c) for c in classes], np.int32)
    r0 = min(max(math.floor(cam.y_h + 0.5), 0), cam.height)
    if r0 >= cam.height:
        return
    z = cam.focal * CAM_H / (np.arange(r0, cam.height) + 0.5 - cam.y_h)[:, None]
    x = (np.arange(cam.width) + 0.5 - cam.x_v)[None, :] * z / cam.focal
    edges = [-street.facade(0), street.curb(0), street.road[0], street.road[1], street.curb(1), street.facade(1)]
    band = np.digitize(x, edges)
    mark = _markings(x, z, street, cam.focal) & (band == 3)
    region = (slice(r0, cam.height), slice(0, cam.width))
    cv.paint(region, np.ones(band.shape, bool), band_inst[band], np.where(mark, MARK, PLAIN),
             depth=z, su=x, sv=z, normal=UP)
    reach = _height_along(casters, z[:, 0])[:, None] * sun_cot
    cv.shadow[region] = (x < reach - street.facade(0)) if sun_side == 0 else (x > street.facade(1) - reach)


def _markings(x: np.ndarray, z: np.ndarray, street: Street, focal: float) -> np.ndarray:
    """Dashed lane lines, solid edge lines and crosswalk stripes, where wider than half a pixel."""
    mark = (np.abs(x - street.road[0] - 0.3) < 0.08) | (np.abs(x - street.road[1] + 0.3) < 0.08)
    dashed = frac(z / 9.0) < 0.45
    for k in range(1, street.lanes):
        mark |= (np.abs(x - street.road[0] - k * street.lane_w) < 0.08) & dashed
    if street.crosswalk:
        mark |= (z > street.crosswalk) & (z < street.crosswalk + 4.0) & (frac(x / 1.1) < 0.5)
    return mark & (focal * 0.16 / z > 0.5)


def _height_along(segments: list[Segment], z: np.ndarray) -> np.ndarray:
    """Height of the segment standing at each depth (0 in open stretches)."""
    starts = np.array([s.z0 for s in segments])
    heights = np.array([s.height if s.kind != OPEN else 0.0 for s in segments])
    return heights[np.clip(np.searchsorted(starts, z, side="right") - 1, 0, len(segments) - 1)]


def _paint_segment(cv: Canvas, seg: Segment, X: float, normal: int) -> None:
    if seg.kind == OPEN:
        return
    inst = cv.new_instance(seg.kind)
    tree_line = seg.kind == VEGETATION and seg.height > 3.0
    got = wall_plane(cv.cam, X, seg.z0, seg.z1, seg.height + (2.0 if tree_line else 0.0))
    if got is None:
        return
    region, z, h, inside = got
    s = z - seg.z0
    part: np.ndarray | int = PLAIN
    if seg.kind == BUILDING and cv.cam.focal * seg.params[0] / max(seg.z0, NEAR) > 2.0:  # floors over 2 px
        part = facade_parts(s, h, seg.height, seg.params, inst)
    elif tree_line:
        inside &= h < seg.height + np.interp(s, np.arange(len(seg.knots)) * 3.0, seg.knots)  # a ragged top
    elif seg.kind == FENCE:
        part = np.where((frac(s / 2.5) < 0.06) | (np.abs(h - seg.height + 0.08) < 0.08), DARK, PLAIN)
    elif seg.kind == WALL:
        part = np.where(np.abs(h - seg.height + 0.1) < 0.1, TRIM, PLAIN)
    cv.paint(region, inside, inst, part, depth=z, su=s, sv=h, normal=normal)


def facade_parts(s: np.ndarray, h: np.ndarray, height: float, params: tuple[float, ...], inst: int) -> np.ndarray:
    """Window grid, lit windows, shop front, doors and cornices of a building face (s along, h up; metres)."""
    floor, ground, spacing, offset, win_w, win_h, shop, lit = params
    cs, ch = (s - offset) / spacing, (h - ground) / floor
    col, row = np.floor(cs), np.floor(ch)
    win = (np.abs(cs - col - 0.5) < win_w / 2) & (np.abs(ch - row - 0.45) < win_h / 2)
    win &= (h > ground) & (h < height - 0.8)
    bits = (col.astype(np.int64) * 73856093) ^ (row.astype(np.int64) * 19349663) ^ (inst * 83492791)
    is_lit = (bits % 1000) < lit * 1000
    front = (shop > 0) & (h > 0.5) & (h < ground - 0.6) & (np.abs(cs - col - 0.5) < 0.4)
    door = (shop == 0) & (h < 2.2) & (np.abs(cs - col - 0.5) < 0.2) & (col % 3 == 1)
    cornice = (h > height - 0.4) | (np.abs(h - ground) < 0.15)
    return choose(PLAIN, (win & is_lit, GLASS_LIT), (win | front, GLASS), (door, DARK), (cornice, TRIM))


def _draw_blocks(rng: np.random.Generator) -> list[tuple[float, ...]]:
    """Blocks (x0, width, kind, height, facade params...) of the row closing the street."""
    n = 8
    x0 = np.linspace(-100.0, 80.0, n) + rng.uniform(-4.0, 4.0, size=n)
    kind = np.where(rng.random(n) < 0.75, BUILDING, VEGETATION)
    height = np.where(kind == BUILDING, rng.uniform(8.0, 30.0, size=n), rng.uniform(6.0, 12.0, size=n))
    floor = np.full(n, 3.2)
    columns = [x0, rng.uniform(24.0, 34.0, size=n), kind, height, floor, *_draw_facades(rng, floor)]
    return [tuple(float(c[k]) for c in columns) for k in range(n)]


def _paint_end_block(cv: Canvas, blocks: list[tuple[float, ...]], z: float) -> None:
    """Buildings and trees across the far end of the street, facing the camera."""
    for x0, width, kind, height, *params in blocks:
        inst = cv.new_instance(int(kind))
        got = billboard(cv.cam, x0 + width / 2, z, width / 2, height)
        if got is None:
            continue
        region, u, v = got
        s = u + width / 2
        inside = (v >= 0) & (v < height) & (np.abs(u) <= width / 2)
        windows = kind == BUILDING and cv.cam.focal * 3.2 / z > 2.0  # floors over 2 px
        part = facade_parts(s, v, height, tuple(params), inst) if windows else PLAIN
        cv.paint(region, inside, inst, part, depth=z, su=s, sv=v, normal=FACE_CAMERA)
