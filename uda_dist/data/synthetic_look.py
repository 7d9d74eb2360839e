"""Appearance of the synthetic benchmark's domains: from layout maps (synthetic_canvas.py) to an RGB image.

The domains share one layout prior and differ only here, the way GTA5 and Cityscapes differ:
- SOURCE ("rendered"): flat, saturated per-class colours with small per-instance jitter, crisp edges,
  simple facing-based shading and cast shadows, a little per-image exposure and tint variation (GTA5's
  times of day), no texture, no noise.
- TARGET ("captured"): the same classes in greyer, hue-shifted palettes with wider per-instance variation
  (many building and car colours), per-class procedural texture (asphalt grain, foliage noise, paving
  tiles, bricks, cloudy sky), uneven light (a global gradient, vignetting, stronger shadows), a per-image
  white balance cast, slight blur and sensor noise.
- NIGHT: the target's world at night: dim blue ambient light, a near-black sky with an orange glow at the
  horizon, street lamps that light pools of ground, headlights, tail lights, lit windows, traffic signals,
  low contrast and strong noise.
A domain renders with SOURCE.blend(its style, shift): shift 0 renders every domain like the source. The
domain gap is in colour statistics, texture and light; class identity stays in shape, layout, context
and relative colour and texture, so a model trained on target labels can learn the target.
Procedural textures and noise are value noise (bilinearly upsampled normals) and windows into a fixed
bank of normals (synthetic_look's own constant seed), drawn at an offset from the image's generator.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

from uda_dist.data.synthetic_canvas import (
    ALT, BICYCLE, BUILDING, BUS, CAR, DARK, FACE_LEFT, FACE_RIGHT, FENCE, GLASS, GLASS_LIT, GREEN, HEAD,
    IGNORE, LAMP, LIGHT, MARK, MOTORCYCLE, NUM_PARTS, PERSON, PLAIN, POLE, RIDER, ROAD, SIDEWALK, SIGN,
    SKIN, SKY, TAIL, TERRAIN, TRAIN, TRIM, TRUCK, UP, VEGETATION, WALL, SceneMaps, frac)

VARIANTS = 6  # colour variants per class in a palette
NOISE_BANK_SIZE = 1 << 21
NOISE_BANK_SEED = 20240611


def _palette(base: dict[int, tuple[int, int, int]], variants: dict[int, list[tuple[int, int, int]]]) -> np.ndarray:
    table = np.zeros((19, VARIANTS, 3), np.float32)
    for cls, rgb in base.items():
        table[cls] = variants.get(cls, [rgb] * VARIANTS)
    return table


def _parts(spec: dict[int, tuple[int, int, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    rgb, mix = np.zeros((NUM_PARTS, 3), np.float32), np.zeros(NUM_PARTS, np.float32)
    for part, (r, g, b, m) in spec.items():
        rgb[part], mix[part] = (r, g, b), m
    return rgb, mix


def _per_class(values: dict[int, tuple[float, ...]], width: int) -> np.ndarray:
    table = np.zeros((19, width), np.float32)
    for cls, v in values.items():
        table[cls] = v
    return table.squeeze(1) if width == 1 else table


@dataclasses.dataclass(frozen=True, kw_only=True)
class Style:
    """One domain's look. Every field is numeric, so two styles blend field by field."""

    paint: np.ndarray
    """19 x VARIANTS x 3 colours per class (0-255); an instance takes the variant its tone picks."""
    jitter: np.ndarray
    """19: per-instance colour spread (std per channel, 0-255)."""
    part_rgb: np.ndarray
    """NUM_PARTS x 3: colour of each part (glass, tyres, lamps, markings, skin, ...)."""
    part_mix: np.ndarray
    """NUM_PARTS: how much a part's colour replaces its instance's colour."""
    emission: np.ndarray
    """NUM_PARTS x 3: light a part emits (lamps, lit windows, headlights at night)."""
    texture: np.ndarray
    """19 x 3: relative amplitude of fine, medium and coarse noise per class."""
    pattern: float
    """Strength of paving tiles and brick courses."""
    sky: np.ndarray
    """3 x 3: sky colour at the top, at the horizon, and of clouds."""
    clouds: float
    """Cloud cover of the sky."""
    facing: np.ndarray
    """4: brightness of the ground, sunlit walls, shaded walls and camera-facing surfaces."""
    shadow: float
    """Darkening inside the facades' cast shadows."""
    ambient: np.ndarray
    """3: colour of the light falling on surfaces (1 = daylight)."""
    glow: float
    """Strength of light sources: emissive parts, glows, street-lamp pools."""
    haze: float
    """Fraction of the horizon colour mixed into distant surfaces."""
    gradient: float
    """Amplitude of a global illumination ramp in a random direction."""
    vignette: float
    """Darkening of the image corners."""
    exposure: float
    """Per-image spread (std of log gain) of the overall brightness (time of day, weather)."""
    white_balance: float
    """Per-image spread (std of log gain) of the channel gains."""
    cast: np.ndarray
    """3: fixed channel gains (the camera's colour cast)."""
    saturation: float
    contrast: float
    blur: float
    """Mix towards a 3x3 binomial blur (1 = fully blurred)."""
    noise: float
    """Sensor noise std (0-255)."""

    def blend(self, other: "Style", amount: float) -> "Style":
        """This style moved towards other by amount (0 = self, 1 = other)."""
        return Style(**{f.name: getattr(self, f.name) + (getattr(other, f.name) - getattr(self, f.name)) * amount
                        for f in dataclasses.fields(self)})


_SOURCE_BASE = {
    ROAD: (82, 80, 96), SIDEWALK: (200, 165, 150), BUILDING: (196, 124, 84), WALL: (214, 196, 120),
    FENCE: (168, 112, 58), POLE: (150, 150, 170), LIGHT: (60, 62, 40), SIGN: (236, 200, 20),
    VEGETATION: (46, 168, 52), TERRAIN: (152, 206, 64), SKY: (80, 150, 245), PERSON: (210, 50, 60),
    RIDER: (236, 120, 24), CAR: (36, 72, 210), TRUCK: (210, 210, 220), BUS: (236, 184, 24), TRAIN: (120, 120, 120),
    MOTORCYCLE: (200, 30, 30), BICYCLE: (30, 170, 210)}
_TARGET_BASE = {
    ROAD: (100, 99, 106), SIDEWALK: (160, 146, 150), BUILDING: (140, 128, 112), WALL: (150, 146, 132),
    FENCE: (118, 112, 98), POLE: (98, 98, 96), LIGHT: (48, 50, 46), SIGN: (70, 100, 170),
    VEGETATION: (66, 108, 44), TERRAIN: (130, 148, 80), SKY: (190, 205, 225), PERSON: (60, 60, 66),
    RIDER: (70, 66, 62), CAR: (90, 90, 95), TRUCK: (180, 180, 175), BUS: (190, 185, 170), TRAIN: (120, 120, 120),
    MOTORCYCLE: (60, 60, 66), BICYCLE: (55, 55, 62)}
_SOURCE_VARIANTS = {
    BUILDING: [(196, 124, 84), (210, 160, 100), (180, 100, 90), (200, 180, 140), (170, 130, 100), (215, 140, 70)],
    CAR: [(200, 30, 30), (36, 72, 210), (236, 200, 30), (40, 160, 70), (240, 120, 20), (235, 235, 240)],
    PERSON: [(210, 50, 60), (40, 90, 210), (240, 200, 40), (50, 170, 80), (230, 110, 30), (160, 60, 200)]}
_TARGET_VARIANTS = {
    BUILDING: [(140, 128, 112), (176, 164, 144), (160, 104, 84), (118, 116, 114), (190, 176, 156), (104, 96, 90)],
    CAR: [(200, 200, 205), (150, 150, 155), (90, 90, 95), (30, 30, 35), (40, 50, 90), (120, 30, 30)],
    PERSON: [(50, 50, 60), (90, 80, 70), (125, 115, 105), (40, 50, 80), (140, 40, 40), (30, 30, 32)],
    SIGN: [(70, 100, 170), (190, 60, 60), (210, 180, 60), (215, 215, 215), (50, 80, 160), (200, 50, 50)]}
_TARGET_TEXTURE = {
    ROAD: (0.06, 0.03, 0.10), SIDEWALK: (0.05, 0.04, 0.06), BUILDING: (0.05, 0.05, 0.12),
    WALL: (0.05, 0.05, 0.10), FENCE: (0.04, 0.06, 0.06), POLE: (0.03, 0.02, 0.05), LIGHT: (0.03, 0.0, 0.0),
    SIGN: (0.02, 0.0, 0.03), VEGETATION: (0.16, 0.22, 0.15), TERRAIN: (0.10, 0.12, 0.12),
    PERSON: (0.04, 0.02, 0.0), RIDER: (0.04, 0.02, 0.0), CAR: (0.03, 0.02, 0.04), TRUCK: (0.03, 0.03, 0.06),
    BUS: (0.03, 0.03, 0.06), MOTORCYCLE: (0.03, 0.02, 0.0), BICYCLE: (0.03, 0.0, 0.0)}
_SOURCE_PARTS = _parts({
    GLASS: (70, 110, 170, 0.9), DARK: (30, 30, 34, 0.7), LAMP: (250, 240, 210, 1.0), MARK: (240, 240, 235, 0.95),
    SKIN: (236, 184, 140, 1.0), TRIM: (240, 240, 240, 0.55), GLASS_LIT: (70, 110, 170, 0.9),
    HEAD: (235, 235, 225, 1.0), TAIL: (220, 20, 20, 1.0), ALT: (40, 50, 150, 0.9), GREEN: (40, 220, 90, 1.0)})
_TARGET_PARTS = _parts({
    GLASS: (50, 58, 66, 0.85), DARK: (28, 27, 26, 0.6), LAMP: (230, 225, 205, 1.0), MARK: (196, 196, 190, 0.8),
    SKIN: (196, 158, 132, 1.0), TRIM: (205, 205, 200, 0.4), GLASS_LIT: (50, 58, 66, 0.85),
    HEAD: (210, 210, 200, 1.0), TAIL: (170, 30, 30, 1.0), ALT: (45, 45, 55, 0.85), GREEN: (60, 180, 110, 1.0)})
_NIGHT_EMISSION = _parts({
    LAMP: (255, 200, 120, 0), GLASS_LIT: (230, 180, 110, 0), HEAD: (255, 250, 235, 0), TAIL: (255, 40, 30, 0),
    GREEN: (70, 255, 140, 0)})[0]

SOURCE = Style(
    paint=_palette(_SOURCE_BASE, _SOURCE_VARIANTS), jitter=np.full(19, 6.0, np.float32),
    part_rgb=_SOURCE_PARTS[0], part_mix=_SOURCE_PARTS[1], emission=np.zeros((NUM_PARTS, 3), np.float32),
    texture=np.zeros((19, 3), np.float32), pattern=0.0,
    sky=np.array([(60, 120, 235), (150, 200, 250), (255, 255, 255)], np.float32), clouds=0.0,
    facing=np.array([1.0, 0.92, 0.72, 0.85], np.float32), shadow=0.25, ambient=np.ones(3, np.float32), glow=0.0,
    haze=0.1, gradient=0.0, vignette=0.0, exposure=0.15, white_balance=0.04, cast=np.ones(3, np.float32),
    saturation=1.15, contrast=1.05, blur=0.0, noise=0.0)
TARGET = dataclasses.replace(
    SOURCE, paint=_palette(_TARGET_BASE, _TARGET_VARIANTS),
    jitter=_per_class({c: 14.0 for c in range(19)} | {BUILDING: 20.0, ROAD: 8.0, SIDEWALK: 10.0}, 1),
    part_rgb=_TARGET_PARTS[0], part_mix=_TARGET_PARTS[1], texture=_per_class(_TARGET_TEXTURE, 3), pattern=1.0,
    sky=np.array([(150, 178, 215), (200, 212, 228), (235, 238, 242)], np.float32), clouds=0.5,
    facing=np.array([1.0, 1.0, 0.62, 0.85], np.float32), shadow=0.45, haze=0.25, gradient=0.15, vignette=0.3,
    white_balance=0.06, cast=np.array([1.04, 1.0, 0.93], np.float32), saturation=0.85, contrast=0.92, blur=0.8,
    noise=4.0)
NIGHT = dataclasses.replace(
    TARGET, emission=_NIGHT_EMISSION, sky=np.array([(8, 10, 22), (58, 46, 40), (26, 24, 30)], np.float32),
    clouds=0.3, facing=np.ones(4, np.float32), shadow=0.0, ambient=np.array([0.15, 0.17, 0.25], np.float32),
    glow=1.0, haze=0.05, gradient=0.15, vignette=0.5, white_balance=0.08, cast=np.array([1.08, 0.98, 0.9], np.float32),
    saturation=0.6, contrast=0.8, blur=1.0, noise=8.0)
_POOL_RGB = np.array([1.0, 0.72, 0.42], np.float32)
_GLOW_RGB = np.array([(255, 190, 110), (255, 250, 230), (130, 20, 12), (180, 25, 15), (200, 140, 35),
                      (50, 200, 100)], np.float32)


def render_look(maps: SceneMaps, style: Style, rng: np.random.Generator) -> np.ndarray:
    """The RGB image (uint8 HxWx3) of the maps in the style; rng draws textures, light and noise."""
    cls_I = np.where(maps.classes == IGNORE, CAR, maps.classes).astype(np.intp)
    variant_I = np.minimum((maps.tones[:, 0] * VARIANTS).astype(np.intp), VARIANTS - 1)
    colour_I13 = (style.paint[cls_I, variant_I] + style.jitter[cls_I, None] * maps.tones[:, 1:4])[:, None, :]
    table_IP3 = colour_I13 + (style.part_rgb - colour_I13) * style.part_mix[:, None]  # instance x part colours
    albedo = np.take(table_IP3.reshape(-1, 3).astype(np.float32), maps.inst * NUM_PARTS + maps.part, axis=0)
    cls_HW = cls_I[maps.inst]
    image = albedo * (_shade(maps, style) * _texture(maps, style, rng, cls_HW))[..., None]
    image *= style.ambient.astype(np.float32)
    if style.glow:
        image += albedo * _pools(maps, style)
    if style.haze:
        fog = style.haze * (1.0 - np.exp(maps.depth * np.float32(-1.0 / 250.0)))
        image += (style.sky[1].astype(np.float32) - image) * fog[..., None]
    _sky(image, maps, style, rng, cls_HW == SKY)
    if style.glow:
        image += np.take(style.emission * np.float32(style.glow), maps.part, axis=0)
        for kind, x, y, radius, *_ in maps.lights:
            sigma = min(2.0 * radius, 12.0)
            _add_blob(image, x, y, sigma, sigma, _GLOW_RGB[int(kind)] * style.glow)
    return _camera(image, style, rng)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and saturate to uint8 (np.clip is several times slower)."""
    image = image + np.float32(0.5)
    np.minimum(image, 255.0, out=image)
    np.maximum(image, 0.0, out=image)
    return image.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(NOISE_BANK_SEED).standard_normal(NOISE_BANK_SIZE, dtype=np.float32)


def normal_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise: a window at a random offset in a fixed bank (4x faster than drawing it),
    or fresh draws for images too big for the bank."""
    size = int(np.prod(shape))
    if size > NOISE_BANK_SIZE // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(NOISE_BANK_SIZE - size))
    return _noise_bank()[start:start + size].reshape(shape)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """Unit-variance value noise with features about cell (rows, cols) pixels big."""
    small = rng.standard_normal((int(shape[0] / cell[0]) + 2, int(shape[1] / cell[1]) + 2)).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.BILINEAR))
    return big * np.float32(1.5)  # bilinear interpolation leaves about (2/3)^2 of the variance


def _texture(maps: SceneMaps, style: Style, rng: np.random.Generator, cls_HW: np.ndarray) -> np.ndarray:
    """Multiplicative luminance texture: per-class noise at three scales, paving tiles and bricks."""
    shape = maps.inst.shape
    if not style.texture.any():
        return np.ones(shape, np.float32)
    fine, medium, coarse = (style.texture[:, k][cls_HW] for k in range(3))
    out = 1.0 + fine * normal_noise(rng, shape)
    out += medium * smooth_noise(rng, shape, (3.0, 3.0)) + coarse * smooth_noise(rng, shape, (12.0, 16.0))
    if style.pattern:
        out -= style.pattern * _patterns(maps, cls_HW)
    return out


def _patterns(maps: SceneMaps, cls_HW: np.ndarray) -> np.ndarray:
    """Grout lines of 0.6 m paving tiles and 0.25 m brick courses, faded where they would alias."""
    out = np.zeros(maps.inst.shape, np.float32)
    plain = maps.part == PLAIN
    brick_inst = (maps.tones[:, 0] * 7.0) % 1.0 < 0.4  # a building's own draw decides brick or plaster
    tiles = np.flatnonzero(plain & (cls_HW == SIDEWALK) & (maps.normal == UP) & (maps.depth < maps.focal * 0.2))
    bricks = np.flatnonzero(plain & (cls_HW == BUILDING) & brick_inst[maps.inst] & (maps.depth < maps.focal / 8))
    su, sv, depth = maps.su.reshape(-1), maps.sv.reshape(-1), maps.depth.reshape(-1)
    u, v = su[tiles] / 0.6, sv[tiles] / 0.6
    grout = (frac(u) < 0.08) | (frac(v) < 0.08)
    out.reshape(-1)[tiles] = 0.25 * grout * np.clip((maps.focal * 0.6 / depth[tiles] - 3.0) / 4.0, 0.0, 1.0)
    u, v = su[bricks] / 0.5, sv[bricks] / 0.25
    joint = (frac(v) < 0.18) | (frac(u + 0.5 * np.floor(v)) < 0.1)
    out.reshape(-1)[bricks] = 0.2 * joint * np.clip((maps.focal * 0.25 / depth[bricks] - 2.0) / 3.0, 0.0, 1.0)
    return out


def _shade(maps: SceneMaps, style: Style) -> np.ndarray:
    """Sunlight on each pixel (HxW): by facing (the casting side's walls are in shade), cast shadows."""
    ground, lit, shaded, camera = style.facing
    left_walls, right_walls = (shaded, lit) if maps.sun_side == 0 else (lit, shaded)
    shade = np.array([ground, left_walls, right_walls, camera], np.float32)[maps.normal]
    if style.shadow:
        walls = (maps.normal == FACE_RIGHT) | (maps.normal == FACE_LEFT)
        shade *= 1.0 - np.float32(style.shadow) * (maps.shadow & ~walls)
    return shade


def _pools(maps: SceneMaps, style: Style) -> np.ndarray:
    """Light (HxWx3) that street lamps add around their heads and in a pool on the ground below."""
    light = np.zeros((*maps.inst.shape, 3), np.float32)
    for kind, x, y, radius, px, py, rx, ry in maps.lights:
        if rx > 0:
            _add_blob(light, px, py, rx, ry, _POOL_RGB * 0.9 * style.glow)
            _add_blob(light, x, y, 8.0 * radius, 8.0 * radius, _POOL_RGB * 0.5 * style.glow)
    return light


def _add_blob(image: np.ndarray, cx: float, cy: float, rx: float, ry: float, rgb: np.ndarray) -> None:
    """image += rgb * exp(-((x - cx) / rx)^2 - ((y - cy) / ry)^2), within 2.5 radii."""
    h, w = image.shape[:2]
    x0, x1 = max(int(cx - 2.5 * rx), 0), min(int(cx + 2.5 * rx) + 1, w)
    y0, y1 = max(int(cy - 2.5 * ry), 0), min(int(cy + 2.5 * ry) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    gx = np.exp(-(((np.arange(x0, x1) + 0.5 - cx) / rx) ** 2)).astype(np.float32)
    gy = np.exp(-(((np.arange(y0, y1) + 0.5 - cy) / ry) ** 2)).astype(np.float32)
    image[y0:y1, x0:x1] += (gy[:, None] * gx[None, :])[..., None] * rgb


def _sky(image: np.ndarray, maps: SceneMaps, style: Style, rng: np.random.Generator, sky: np.ndarray) -> None:
    """Fill the sky: a vertical gradient towards the horizon colour, and clouds."""
    rows = np.flatnonzero(sky.any(axis=1))
    h = int(rows[-1]) + 1 if len(rows) else 0
    cover = smooth_noise(rng, (max(h, 1), sky.shape[1]), (10.0, 36.0)) if style.clouds else None
    if h == 0:
        return
    t = np.minimum((np.arange(h, dtype=np.float32) + 0.5) / max(maps.horizon, 1.0), 1.0)[:, None, None] ** 1.5
    colour = style.sky[0] + (style.sky[1] - style.sky[0]) * t
    if cover is not None:
        np.clip(cover * np.float32(0.5) + np.float32(0.35 * style.clouds), 0.0, style.clouds, out=cover)
        colour = colour + (style.sky[2] - colour) * cover[..., None]
    np.copyto(image[:h], colour, where=sky[:h, :, None])


def _camera(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Illumination gradient, vignetting, white balance, saturation and contrast (one colour matrix),
    blur, sensor noise; to uint8."""
    h, w = image.shape[:2]
    angle, wb, exposure = rng.uniform(0.0, 2.0 * np.pi), rng.standard_normal(3), rng.standard_normal()
    gains = np.exp(style.white_balance * wb + style.exposure * exposure)
    if style.gradient or style.vignette:
        y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
        x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
        ramp = 2.0 * (x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle)))
        vignette = np.float32(2.0 * style.vignette) * (x * x + y * y)
        image *= (1.0 + np.float32(style.gradient) * ramp - vignette)[..., None]
    luma = np.array([0.299, 0.587, 0.114])
    saturate = style.saturation * np.eye(3) + (1.0 - style.saturation) * np.outer(np.ones(3), luma)
    matrix = (style.contrast * saturate * (style.cast * gains)[None, :]).astype(np.float32)
    image = image.reshape(-1, 3) @ matrix.T + np.float32(128.0 * (1.0 - style.contrast))
    image = image.reshape(h, w, 3)
    if style.blur:
        image += np.float32(style.blur) * (binomial_blur(image) - image)
    if style.noise:
        image += np.float32(style.noise) * normal_noise(rng, image.shape)
    return to_uint8(image)


def binomial_blur(image: np.ndarray) -> np.ndarray:
    """3x3 binomial ([1, 2, 1] / 4 per axis) blur with replicated edges."""
    rows = image * np.float32(0.5)
    rows[1:] += image[:-1] * np.float32(0.25)
    rows[:-1] += image[1:] * np.float32(0.25)
    rows[[0, -1]] += image[[0, -1]] * np.float32(0.25)
    out = rows * np.float32(0.5)
    out[:, 1:] += rows[:, :-1] * np.float32(0.25)
    out[:, :-1] += rows[:, 1:] * np.float32(0.25)
    out[:, [0, -1]] += rows[:, [0, -1]] * np.float32(0.25)
    return out
