"""A target-styled source image without a trained translator: Fourier domain adaptation (FDA), and DiGA's
cross-domain mixture built on it.

Yang & Soatto, "FDA: Fourier Domain Adaptation for Semantic Segmentation", CVPR 2020 (reference:
YanchaoYang/FDA utils low_freq_mutate). Per image and channel, the source's 2-D spectrum keeps its phase (the
layout) and takes the target's amplitude at the lowest frequencies (the style: colour, brightness, global
contrast): the frequencies (u, v) with |u|, |v| below b = floor(beta * min(H, W)) (indices [0, b) and
(n - b, n) per axis of the unshifted grid), beta ~ 0.01. The reference's four corners also take frequency -b
without its mirror +b, which makes the spectrum asymmetric and the image complex; that one frequency is left
out here, so the result is a real image.

DiGA translates source images with a separately trained GAN (50k iterations); this project uses FDA in its
place, a documented difference. Differences from the FDA reference: images are in [0, 1] and the result is
clamped to [0, 1] (the reference works on mean-subtracted 0-255 images and does not clamp); torch.fft.fft2
instead of the removed torch.rfft.

DiGA's cross-domain mixture of a source image x (``cross_domain_mixture``): on a random half of the classes of
its label (and on its ignored pixels, as the reference keeps them) x_aug = beta * jitter(x) + (1 - beta) * x;
on the other classes the target-styled x. The label is unchanged: both views keep the source layout.

Legend: B batch, H, W image size.
"""
from __future__ import annotations

import torch


def low_frequency_mask(height: int, width: int, beta: float, *, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (H, W): the unshifted spectrum's frequencies whose amplitude is swapped."""
    b = int(beta * min(height, width))

    def axis(n: int) -> torch.Tensor:
        index = torch.arange(n, device=device)
        return (index < b) | (index > n - b)

    return axis(height)[:, None] & axis(width)[None, :]


def fourier_style(source_B3HW: torch.Tensor, target_B3HW: torch.Tensor, *, beta: float = 0.01) -> torch.Tensor:
    """The source images with each target image's low-frequency amplitude (image i takes target i), in [0, 1]."""
    if source_B3HW.shape != target_B3HW.shape:
        raise ValueError(f"source and target batches must have one shape, got {tuple(source_B3HW.shape)} and "
                         f"{tuple(target_B3HW.shape)}")
    spectrum_src = torch.fft.fft2(source_B3HW.float())
    amplitude_tgt = torch.fft.fft2(target_B3HW.float()).abs()
    low_HW = low_frequency_mask(*source_B3HW.shape[-2:], beta, device=source_B3HW.device)
    amplitude = torch.where(low_HW, amplitude_tgt, spectrum_src.abs())
    styled = torch.fft.ifft2(torch.polar(amplitude, spectrum_src.angle())).real
    return styled.clamp(0.0, 1.0).to(source_B3HW.dtype)


def cross_domain_mixture(image_B3HW: torch.Tensor, jittered_B3HW: torch.Tensor, styled_B3HW: torch.Tensor,
                         mask_BHW: torch.Tensor, *, beta: float) -> torch.Tensor:
    """beta * jittered + (1 - beta) * image where the mask is set, the target-styled image elsewhere."""
    blended_B3HW = beta * jittered_B3HW + (1.0 - beta) * image_B3HW
    return torch.where(mask_BHW.unsqueeze(1), blended_B3HW, styled_B3HW)
