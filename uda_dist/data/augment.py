"""Training augmentation: per-sample geometric (numpy/PIL, in the loader) and batched strong photometric (torch).

Geometric: mmsegmentation's Resize(ratio_range) -> RandomCrop(cat_max_ratio) -> RandomFlip -> Pad as used by
DAFormer (Hoyer et al., CVPR 2022; configs/_base_/datasets/uda_*.py, mmseg/datasets/pipelines/transforms.py).
Differences on purpose:
- The resize target is an explicit (H, W) times one random factor (no keep_ratio arithmetic on a long/short
  edge pair). Images are resized with PIL's bilinear filter, which antialiases when downscaling (mmcv's cv2
  bilinear does not); labels with PIL NEAREST, so label values are never blended.
- Unlabeled samples (label None) skip the cat_max_ratio check. DAFormer loads Cityscapes labels in its
  target pipeline and so uses target labels to choose target crops; we never look at target labels.

Strong photometric: DACS (Tranheden et al., WACV 2021, utils/transformsgpu.py) as kept by DAFormer
(mmseg/models/utils/dacs_transforms.py): per image, colour jitter with probability p, then Gaussian blur
with probability 0.5, sigma ~ U(0.15, 1.15), kernel length the odd number at or below ceil(0.1 * side)
per axis (height for the vertical pass, width for the horizontal one, as DACS's code does), reflect borders. The jitter follows kornia 0.5.x ColorJitter (DAFormer pins kornia 0.5.8; today's kornia
calls that behaviour ColorJiggle): brightness adds (f - 1), contrast multiplies by f, saturation scales
HSV saturation by f, hue rotates HSV hue by h turns, f ~ U(max(0, 1 - s), 1 + s), h ~ U(-s, s), each op
clamped to [0, 1], the four ops in a random order. Differences on purpose: plain torch (kornia is not a
dependency); every random draw (decisions, factors, order, sigma) comes from the caller's CPU
torch.Generator instead of the global numpy/torch RNGs, all drawn up front for the batch, so a seed
reproduces the batch on any device; the saturation op is computed in RGB (each channel's distance to
max(r, g, b) scales with HSV saturation) and the hue op with hue in turns, not radians; both equal kornia's
HSV round trips up to float rounding (kornia also adds eps=1e-6 to v when dividing).

Tensor legend: B batch, H, W image height and width, K blur kernel length.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from uda_dist.data.schema import IGNORE_INDEX

if TYPE_CHECKING:  # LoaderConfig lives with the reader, which imports this module
    from uda_dist.data.webdataset import LoaderConfig

CAT_MAX_RETRIES = 10  # mmseg RandomCrop


def random_scale_crop_flip(image_HW3: np.ndarray, label_HW: np.ndarray | None, *, rng: np.random.Generator,
                           cfg: LoaderConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to cfg.resize times U(cfg.scale_range), random crop of cfg.crop_size (retrying crops that one
    class dominates, see cfg.cat_max_ratio), pad to the crop size (image 0, label 255), flip with p=0.5.
    Image and label stay pixel-aligned; the returned arrays are uint8 (crop_H, crop_W, 3) and (crop_H, crop_W)."""
    image_HW3, label_HW, _ = paired_scale_crop_flip(image_HW3, label_HW, None, rng=rng, cfg=cfg)
    return image_HW3, label_HW


def paired_scale_crop_flip(image_HW3: np.ndarray, label_HW: np.ndarray | None, pair_HW3: np.ndarray | None, *,
                           rng: np.random.Generator, cfg: LoaderConfig
                           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """random_scale_crop_flip, with ``pair_HW3`` (an image of the same size: a night image's daytime pair) given
    the same resize, crop, flip and pad as the image; the random draws are the same with or without it."""
    base_h, base_w = cfg.resize if cfg.resize is not None else image_HW3.shape[:2]
    scale = rng.uniform(*cfg.scale_range)
    size_hw = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
    if pair_HW3 is not None:
        pair_HW3, _ = _resize(pair_HW3, None, size_hw)
    image_HW3, label_HW = _resize(image_HW3, label_HW, size_hw)
    top, left = _choose_crop(label_HW, image_HW3.shape[:2], rng=rng, cfg=cfg)
    crop_h, crop_w = cfg.crop_size
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    image_HW3 = image_HW3[window]
    label_HW = None if label_HW is None else label_HW[window]
    pair_HW3 = None if pair_HW3 is None else pair_HW3[window]
    if cfg.flip and rng.random() < 0.5:
        image_HW3 = image_HW3[:, ::-1]
        label_HW = None if label_HW is None else label_HW[:, ::-1]
        pair_HW3 = None if pair_HW3 is None else pair_HW3[:, ::-1]
    image_HW3, label_HW = _pad(image_HW3, label_HW, cfg.crop_size)
    return image_HW3, label_HW, None if pair_HW3 is None else _pad(pair_HW3, None, cfg.crop_size)[0]


def _resize(image_HW3: np.ndarray, label_HW: np.ndarray | None,
            size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Image (bilinear) and label (nearest) to ``size_hw``, each only when it is not that size already (a label
    stored at the published resolution of a resized image differs from its image)."""
    pil_size = (size_hw[1], size_hw[0])
    if image_HW3.shape[:2] != size_hw:
        image_HW3 = np.asarray(Image.fromarray(image_HW3).resize(pil_size, Image.Resampling.BILINEAR))
    if label_HW is not None and label_HW.shape != size_hw:
        label_HW = np.asarray(Image.fromarray(label_HW).resize(pil_size, Image.Resampling.NEAREST))
    return image_HW3, label_HW


def _choose_crop(label_HW: np.ndarray | None, size_hw: tuple[int, int], *, rng: np.random.Generator,
                 cfg: LoaderConfig) -> tuple[int, int]:
    """(top, left) of the crop. As mmseg: while one class covers >= cat_max_ratio of the labeled pixels of
    the crop (or the crop holds fewer than two classes), draw again, at most 10 times; the last draw is kept."""
    margin_h = max(size_hw[0] - cfg.crop_size[0], 0)
    margin_w = max(size_hw[1] - cfg.crop_size[1], 0)
    top, left = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    if label_HW is None or cfg.cat_max_ratio >= 1.0:
        return top, left
    for _ in range(CAT_MAX_RETRIES):
        crop_HW = label_HW[top:top + cfg.crop_size[0], left:left + cfg.crop_size[1]]
        counts = np.bincount(crop_HW.reshape(-1), minlength=256)
        counts = counts[np.arange(256) != IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cfg.cat_max_ratio:
            break
        top, left = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return top, left


def _pad(image_HW3: np.ndarray, label_HW: np.ndarray | None,
         crop_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad bottom/right to the crop size (image 0, label ignore); always returns contiguous copies."""
    pad_h, pad_w = crop_size[0] - image_HW3.shape[0], crop_size[1] - image_HW3.shape[1]
    image_HW3 = np.pad(image_HW3, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    if label_HW is not None:
        label_HW = np.pad(label_HW, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image_HW3, label_HW


@dataclasses.dataclass(frozen=True, kw_only=True)
class StrongAugConfig:
    """DACS/DAFormer strong photometric augmentation of the images the student sees."""

    jitter_strength: float = 0.2
    """s of the colour jitter: brightness/contrast/saturation factors ~ U(max(0, 1-s), 1+s), hue ~ U(-s, s)
    turns (DAFormer color_jitter_s)."""
    jitter_p: float = 0.8
    """Probability of jittering an image (DAFormer applies it when U(0,1) > color_jitter_p = 0.2)."""
    blur_p: float = 0.5
    """Probability of blurring an image."""
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    """Range of the Gaussian blur sigma (pixels), sampled uniformly per blurred image."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter_strength <= 0.5:
            raise ValueError(f"jitter_strength must be in [0, 0.5] (hue shift in turns), got {self.jitter_strength}")
        for name in ("jitter_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if len(self.blur_sigma) != 2 or not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")


def strong_photometric(image_B3HW: torch.Tensor, *, generator: torch.Generator,
                       cfg: StrongAugConfig = StrongAugConfig()) -> torch.Tensor:
    """Per image: colour jitter with probability cfg.jitter_p, then Gaussian blur with probability cfg.blur_p.
    Input in [0, 1] on any device, left untouched; output a new tensor clamped to [0, 1]. All random draws
    come from `generator` (a CPU generator), so the same seed gives the same output."""
    batch = image_B3HW.shape[0]
    if batch == 0:
        return image_B3HW.clone()
    draws_B7 = torch.rand(batch, 7, generator=generator, dtype=torch.float64)
    order_B4 = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)
    out = []
    for i in range(batch):
        image_3HW = image_B3HW[i]
        u_jitter, fb, fc, fs, fh, u_blur, u_sigma = draws_B7[i].tolist()
        if u_jitter < cfg.jitter_p:
            factors = _jitter_factors(cfg.jitter_strength, fb, fc, fs, fh)
            image_3HW = _color_jitter(image_3HW, factors, order_B4[i].tolist())
        if u_blur < cfg.blur_p:
            low, high = cfg.blur_sigma
            image_3HW = _gaussian_blur(image_3HW, sigma=low + (high - low) * u_sigma)
        out.append(image_3HW)
    return torch.stack(out).clamp(0.0, 1.0)


def _jitter_factors(s: float, ub: float, uc: float, us: float, uh: float) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) from four U(0, 1) draws, ranges as kornia/torchvision."""
    low = max(0.0, 1.0 - s)
    return (low + (1.0 + s - low) * ub, low + (1.0 + s - low) * uc, low + (1.0 + s - low) * us,
            -s + 2.0 * s * uh)


def _color_jitter(image_3HW: torch.Tensor, factors: tuple[float, float, float, float],
                  order: list[int]) -> torch.Tensor:
    brightness, contrast, saturation, hue = factors
    ops = (
        lambda x: (x + (brightness - 1.0)).clamp(0.0, 1.0),
        lambda x: (x * contrast).clamp(0.0, 1.0),
        lambda x: _adjust_saturation(x, saturation),
        lambda x: _rotate_hue(x, hue),
    )
    for index in order:
        image_3HW = ops[index](image_3HW)
    return image_3HW


def _adjust_saturation(rgb_3HW: torch.Tensor, factor: float) -> torch.Tensor:
    """HSV saturation s -> clamp(s * factor, 0, 1), hue and value kept. Computed in RGB: each channel is
    v - v * s * g(hue), so scaling s scales its distance to v = max(r, g, b)."""
    max_HW = rgb_3HW.max(dim=0).values
    s_HW = (max_HW - rgb_3HW.min(dim=0).values) / max_HW.clamp_min(1e-12)
    ratio_HW = torch.where(s_HW > 0, (s_HW * factor).clamp(0.0, 1.0) / s_HW.clamp_min(1e-12),
                           torch.ones_like(s_HW))
    return max_HW - (max_HW - rgb_3HW) * ratio_HW


def _rotate_hue(rgb_3HW: torch.Tensor, turns: float) -> torch.Tensor:
    h_HW, s_HW, v_HW = _rgb_to_hsv(rgb_3HW)
    return _hsv_to_rgb(torch.remainder(h_HW + turns, 1.0), s_HW, v_HW)


def _rgb_to_hsv(rgb_3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1) (0 for greys), saturation and value in [0, 1]."""
    r, g, b = rgb_3HW.unbind(0)
    max_HW, argmax_HW = rgb_3HW.max(dim=0)
    delta_HW = max_HW - rgb_3HW.min(dim=0).values
    s_HW = torch.where(max_HW > 0, delta_HW / max_HW.clamp_min(1e-12), torch.zeros_like(max_HW))
    safe_HW = torch.where(delta_HW > 0, delta_HW, torch.ones_like(delta_HW))
    h_HW = torch.where(argmax_HW == 0, (g - b) / safe_HW,
                       torch.where(argmax_HW == 1, (b - r) / safe_HW + 2.0, (r - g) / safe_HW + 4.0))
    h_HW = torch.where(delta_HW > 0, torch.remainder(h_HW / 6.0, 1.0), torch.zeros_like(h_HW))
    return h_HW, s_HW, max_HW


def _hsv_to_rgb(h_HW: torch.Tensor, s_HW: torch.Tensor, v_HW: torch.Tensor) -> torch.Tensor:
    """Channel n in (5, 3, 1) for (r, g, b): v - v * s * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6."""
    n_311 = torch.tensor([5.0, 3.0, 1.0], dtype=h_HW.dtype, device=h_HW.device).view(3, 1, 1)
    k_3HW = torch.remainder(n_311 + 6.0 * h_HW, 6.0)
    return v_HW - v_HW * s_HW * torch.minimum(k_3HW, 4.0 - k_3HW).clamp(0.0, 1.0)


def blur_kernel_size(side: int) -> int:
    """DACS: int(floor(ceil(0.1 * side) - 0.5 + ceil(0.1 * side) % 2)), the odd number <= ceil(0.1 * side)."""
    c = math.ceil(0.1 * side)
    return int(math.floor(c - 0.5 + c % 2))


def _gaussian_blur(image_3HW: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, kernel lengths from blur_kernel_size(H) and (W), reflect padding (kornia)."""
    height, width = image_3HW.shape[-2:]
    out_13HW = image_3HW.unsqueeze(0)
    for axis, side in ((2, height), (3, width)):
        size = blur_kernel_size(side)
        if size <= 1:
            continue
        x_K = torch.arange(size, dtype=torch.float64) - size // 2
        kernel_K = torch.exp(-x_K ** 2 / (2.0 * sigma ** 2))
        kernel_K = (kernel_K / kernel_K.sum()).to(image_3HW)
        shape = (1, 1, size, 1) if axis == 2 else (1, 1, 1, size)
        pad = (0, 0, size // 2, size // 2) if axis == 2 else (size // 2, size // 2, 0, 0)
        weight = kernel_K.view(shape).expand(3, 1, *shape[2:])
        out_13HW = F.conv2d(F.pad(out_13HW, pad, mode="reflect"), weight, groups=3)
    return out_13HW.squeeze(0)
