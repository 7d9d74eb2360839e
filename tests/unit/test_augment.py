"""Geometric augmentation keeps image and label aligned; strong photometric augmentation is DACS's, seeded."""
import colorsys

import numpy as np
import pytest
import torch

from uda_dist.data import augment
from uda_dist.data.augment import StrongAugConfig, random_scale_crop_flip, strong_photometric
from uda_dist.data.webdataset import LoaderConfig


def coded_pair(height: int, width: int, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """label in blocks of `block` pixels; image R = label * 10, G = row, B = column (so a crop is traceable)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    label = (((rows // block) * 7 + (cols // block) * 3) % 19).astype(np.uint8)
    image = np.stack([label * 10, rows, cols], axis=-1).astype(np.uint8)
    return image, label


def geo_cfg(**overrides) -> LoaderConfig:
    return LoaderConfig(**{**dict(crop_size=(8, 12), cat_max_ratio=1.0), **overrides})


def test_crop_and_flip_keep_image_and_label_aligned():
    image, label = coded_pair(20, 30)
    flips = 0
    for seed in range(20):
        out_image, out_label = random_scale_crop_flip(image, label, rng=np.random.default_rng(seed), cfg=geo_cfg())
        assert out_image.shape == (8, 12, 3) and out_label.shape == (8, 12)
        np.testing.assert_array_equal(out_image[..., 0], out_label * 10)
        rows, cols = out_image[..., 1].astype(int), out_image[..., 2].astype(int)
        assert (np.diff(rows, axis=0) == 1).all() and (np.diff(rows, axis=1) == 0).all()
        step = np.diff(cols, axis=1)
        assert (step == 1).all() or (step == -1).all()  # a window of the original, maybe mirrored
        flips += int((step == -1).all())
        np.testing.assert_array_equal(out_label, label[rows, cols])
    assert 3 <= flips <= 17


def test_flip_off_never_mirrors():
    image, label = coded_pair(20, 30)
    for seed in range(10):
        out_image, _ = random_scale_crop_flip(image, label, rng=np.random.default_rng(seed), cfg=geo_cfg(flip=False))
        assert (np.diff(out_image[..., 2].astype(int), axis=1) == 1).all()


def test_small_images_are_padded_with_zero_and_ignore():
    image, label = coded_pair(5, 7)
    out_image, out_label = random_scale_crop_flip(image, label, rng=np.random.default_rng(0),
                                                  cfg=geo_cfg(flip=False))
    np.testing.assert_array_equal(out_image[:5, :7], image)
    np.testing.assert_array_equal(out_label[:5, :7], label)
    assert (out_image[5:] == 0).all() and (out_image[:, 7:] == 0).all()
    assert (out_label[5:] == 255).all() and (out_label[:, 7:] == 255).all()


def test_rescaling_keeps_label_values_and_alignment():
    image, label = coded_pair(24, 36, block=6)
    label[:3, :3] = 255
    cfg = geo_cfg(crop_size=(16, 20), resize=(20, 30), scale_range=(0.5, 2.0))
    for seed in range(20):
        out_image, out_label = random_scale_crop_flip(image, label, rng=np.random.default_rng(seed), cfg=cfg)
        assert out_image.shape == (16, 20, 3) and out_label.shape == (16, 20)
        assert set(np.unique(out_label)) <= set(np.unique(label)) | {255}
        # Where the label is constant over a 5x5 window the bilinear image must carry the same class colour.
        for y in range(2, 14):
            for x in range(2, 18):
                window = out_label[y - 2:y + 3, x - 2:x + 3]
                if (window == out_label[y, x]).all() and out_label[y, x] != 255:
                    assert abs(int(out_image[y, x, 0]) - 10 * int(out_label[y, x])) <= 1


def test_unlabeled_samples_are_augmented_alone():
    image, _ = coded_pair(20, 30)
    out_image, out_label = random_scale_crop_flip(image, None, rng=np.random.default_rng(0),
                                                  cfg=geo_cfg(cat_max_ratio=0.5))
    assert out_label is None and out_image.shape == (8, 12, 3)


def class_share_ok(label_HW: np.ndarray, ratio: float) -> bool:
    counts = np.bincount(label_HW[label_HW != 255].reshape(-1))
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    """Class 1 fills only the right quarter: a random crop passes the 0.75 check about a quarter of the time;
    with mmseg's 10 redraws nearly always."""
    label = np.zeros((32, 64), dtype=np.uint8)
    label[:, 48:] = 1
    image = np.repeat(label[..., None] * 10, 3, axis=2)
    rates = {}
    for ratio in (0.75, 1.0):
        cfg = geo_cfg(crop_size=(16, 32), cat_max_ratio=ratio, flip=False)
        outs = [random_scale_crop_flip(image, label, rng=np.random.default_rng(s), cfg=cfg)[1] for s in range(60)]
        rates[ratio] = np.mean([class_share_ok(out, 0.75) for out in outs])
    assert rates[1.0] < 0.4 and rates[0.75] > 0.85


def test_cat_max_ratio_gives_up_on_a_single_class_image():
    label = np.full((20, 30), 4, dtype=np.uint8)
    _, out = random_scale_crop_flip(np.zeros((20, 30, 3), np.uint8), label, rng=np.random.default_rng(0),
                                    cfg=geo_cfg(cat_max_ratio=0.75))
    assert (out == 4).all()


def images(seed: int = 0, batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, 24, 32, generator=torch.Generator().manual_seed(seed))


def test_strong_photometric_is_seeded_bounded_and_leaves_its_input_alone():
    image_B3HW = images()
    before = image_B3HW.clone()
    out = strong_photometric(image_B3HW, generator=torch.Generator().manual_seed(1))
    again = strong_photometric(image_B3HW, generator=torch.Generator().manual_seed(1))
    other = strong_photometric(image_B3HW, generator=torch.Generator().manual_seed(2))
    assert out.shape == image_B3HW.shape and out.dtype == image_B3HW.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(image_B3HW, before)


def test_strong_photometric_with_zero_probabilities_is_the_identity():
    image_B3HW = images()
    out = strong_photometric(image_B3HW, generator=torch.Generator().manual_seed(0),
                             cfg=StrongAugConfig(jitter_p=0.0, blur_p=0.0))
    assert torch.equal(out, image_B3HW) and out is not image_B3HW


@pytest.mark.parametrize("cfg", [StrongAugConfig(jitter_p=1.0, blur_p=0.0), StrongAugConfig(jitter_p=0.0, blur_p=1.0)])
def test_strong_photometric_with_probability_one_changes_every_image(cfg):
    image_B3HW = images(batch=4)
    out = strong_photometric(image_B3HW, generator=torch.Generator().manual_seed(0), cfg=cfg)
    assert all(not torch.allclose(o, i) for o, i in zip(out, image_B3HW))


def test_jitter_keeps_grey_images_grey_and_blur_keeps_flat_images_flat():
    grey_B3HW = torch.full((4, 3, 24, 32), 0.4)
    jittered = strong_photometric(grey_B3HW, generator=torch.Generator().manual_seed(0),
                                  cfg=StrongAugConfig(jitter_p=1.0, blur_p=0.0))
    torch.testing.assert_close(jittered, jittered[:, :1].expand_as(jittered))
    blurred = strong_photometric(grey_B3HW, generator=torch.Generator().manual_seed(0),
                                 cfg=StrongAugConfig(jitter_p=0.0, blur_p=1.0))
    torch.testing.assert_close(blurred, grey_B3HW)


def test_hsv_matches_colorsys_per_pixel():
    rgb_3HW = images(batch=1)[0, :, :4, :5].double()
    rgb_3HW[:, 0, 0] = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)  # grey: hue undefined -> 0
    h_HW, s_HW, v_HW = augment._rgb_to_hsv(rgb_3HW)
    for y in range(4):
        for x in range(5):
            expected = colorsys.rgb_to_hsv(*rgb_3HW[:, y, x].tolist())
            assert [h_HW[y, x].item(), s_HW[y, x].item(), v_HW[y, x].item()] == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(augment._hsv_to_rgb(h_HW, s_HW, v_HW), rgb_3HW)
    red_3HW = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    green = augment._rotate_hue(red_3HW, 1 / 3)
    torch.testing.assert_close(green.view(3), torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("side", [1, 9, 10, 11, 20, 24, 32, 512, 1024])
def test_blur_kernel_size_is_dacs_formula(side):
    expected = int(np.floor(np.ceil(0.1 * side) - 0.5 + np.ceil(0.1 * side) % 2))
    assert augment.blur_kernel_size(side) == expected and expected % 2 == 1


def test_strong_aug_config_rejects_bad_values():
    with pytest.raises(ValueError, match="jitter_p"):
        StrongAugConfig(jitter_p=1.5)
    with pytest.raises(ValueError, match="blur_sigma"):
        StrongAugConfig(blur_sigma=(1.0, 0.5))


def test_blur_matches_a_naive_reflect_padded_2d_gaussian():
    image_3HW = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = 0.9
    ky, kx = augment.blur_kernel_size(50), augment.blur_kernel_size(70)  # 5, 7

    def kernel(size):
        x = np.arange(size) - size // 2
        k = np.exp(-x ** 2 / (2 * sigma ** 2))
        return k / k.sum()

    kernel_2d = np.outer(kernel(ky), kernel(kx))
    padded = np.pad(image_3HW.numpy(), ((0, 0), (ky // 2, ky // 2), (kx // 2, kx // 2)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (ky, kx), axis=(1, 2))
    expected = (windows * kernel_2d).sum(axis=(-2, -1))
    np.testing.assert_allclose(augment._gaussian_blur(image_3HW, sigma=sigma).numpy(), expected, atol=1e-12)


def test_color_jitter_matches_a_per_pixel_reference():
    """kornia 0.5 semantics, fixed order: brightness adds f-1, contrast multiplies, saturation and hue in HSV."""
    rgb_3HW = torch.rand(3, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    factors = (1.1, 0.85, 1.15, -0.12)
    out = augment._color_jitter(rgb_3HW, factors, order=[0, 1, 2, 3])
    for y in range(3):
        for x in range(4):
            pixel = np.clip(np.clip(rgb_3HW[:, y, x].numpy() + 0.1, 0, 1) * 0.85, 0, 1)
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            h, s, v = colorsys.rgb_to_hsv(*colorsys.hsv_to_rgb(h, min(s * 1.15, 1.0), v))
            expected = colorsys.hsv_to_rgb((h - 0.12) % 1.0, s, v)
            np.testing.assert_allclose(out[:, y, x].numpy(), expected, atol=1e-9)
