"""FADA's pure losses against naive per-pixel loops, and its discriminator's shape."""
from __future__ import annotations

import math

import pytest
import torch

from uda_dist.losses.adversarial import (as_source, as_target, class_domain_encoding, fada_discriminator_loss,
                                         fada_generator_loss, soft_label_cross_entropy)
from uda_dist.model.discriminator import FineGrainedDiscriminator

K = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _naive_soft_ce(logits, soft):
    """mean over pixels of -sum_c soft_c log softmax(logits)_c, one pixel at a time."""
    B, C, H, W = logits.shape
    total = 0.0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                z = [float(logits[b, c, y, x]) for c in range(C)]
                top = max(z)
                log_norm = top + math.log(sum(math.exp(v - top) for v in z))
                total += -sum(float(soft[b, c, y, x]) * (z[c] - log_norm) for c in range(C))
    return total / (B * H * W)


def _naive_encoding(logits, temperature, clip):
    B, C, H, W = logits.shape
    out = torch.empty_like(logits)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                z = [float(logits[b, c, y, x]) / temperature for c in range(C)]
                norm = sum(math.exp(v) for v in z)
                for c in range(C):
                    out[b, c, y, x] = min(math.exp(z[c]) / norm, clip)
    return out


def test_soft_label_cross_entropy_matches_a_pixel_loop():
    logits = torch.randn(2, 2 * K, 3, 5) * 3
    soft = torch.rand(2, 2 * K, 3, 5)
    assert soft_label_cross_entropy(logits, soft).item() == pytest.approx(_naive_soft_ce(logits, soft), rel=1e-5)


def test_class_domain_encoding_is_a_clipped_tempered_softmax_without_gradient():
    logits = (torch.randn(2, K, 3, 4) * 6).requires_grad_()
    p = class_domain_encoding(logits, temperature=1.8, clip=0.9)
    torch.testing.assert_close(p, _naive_encoding(logits.detach(), 1.8, 0.9))
    assert not p.requires_grad and p.max() <= 0.9 and (p == 0.9).any()  # confident pixels clipped
    hot = class_domain_encoding(logits, temperature=100.0, clip=0.9)
    assert hot.max() < 1.0 / K + 0.05  # a high temperature flattens it


def test_fada_losses_match_pixel_loops_with_the_encodings_on_the_right_halves():
    d_src, d_tgt = torch.randn(2, 2 * K, 3, 4), torch.randn(2, 2 * K, 3, 4)
    p_src = class_domain_encoding(torch.randn(2, K, 3, 4) * 4)
    p_tgt = class_domain_encoding(torch.randn(2, K, 3, 4) * 4)
    zeros = torch.zeros_like(p_src)
    assert torch.equal(as_source(p_src), torch.cat([p_src, zeros], 1))
    assert torch.equal(as_target(p_tgt), torch.cat([zeros, p_tgt], 1))
    # generator: target features scored against the SOURCE half of their class
    gen = _naive_soft_ce(d_tgt, torch.cat([p_tgt, zeros], 1))
    assert fada_generator_loss(d_tgt, p_tgt).item() == pytest.approx(gen, rel=1e-5)
    # discriminator: each domain on its own half, half the weight each
    disc = 0.5 * _naive_soft_ce(d_src, torch.cat([p_src, zeros], 1)) + 0.5 * _naive_soft_ce(
        d_tgt, torch.cat([zeros, p_tgt], 1))
    assert fada_discriminator_loss(d_src, p_src, d_tgt, p_tgt).item() == pytest.approx(disc, rel=1e-5)


def test_the_generator_loss_falls_when_target_features_look_like_source_of_their_class():
    p_tgt = class_domain_encoding(torch.randn(1, K, 2, 2) * 4)
    looks_source = torch.cat([torch.full((1, K, 2, 2), 5.0), torch.full((1, K, 2, 2), -5.0)], 1)
    looks_target = -looks_source
    assert fada_generator_loss(looks_source, p_tgt) < fada_generator_loss(looks_target, p_tgt)
    assert fada_discriminator_loss(looks_source, p_tgt, looks_target, p_tgt) < fada_discriminator_loss(
        looks_target, p_tgt, looks_source, p_tgt)


def test_discriminator_gives_source_and_target_class_logits_per_pixel():
    d = FineGrainedDiscriminator(16, hidden=8, num_classes=K)
    out = d(torch.randn(3, 16, 5, 7))
    assert out.shape == (3, 2 * K, 5, 7)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(d(x[:1]), d(x)[:1])  # one image's output does not depend on the others
