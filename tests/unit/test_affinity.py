"""ASANet's affinity space and losses against naive per-pixel loops (borders included), and its discriminator."""
from __future__ import annotations

import math

import pytest
import torch

from uda_dist.losses.affinity import (NEIGHBOURS, affinity_cleaning_loss, affinity_group, affinity_space,
                                      asa_discriminator_loss, asa_generator_loss, neighbours)
from uda_dist.model.discriminator import AffinityDiscriminator

K, H, W = 3, 4, 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _probs(B=2):
    """Softmax maps with some one-hot pixels, so that the clamps at 1e-4 and 1 matter."""
    p = torch.softmax(torch.randn(B, K, H, W) * 3, dim=1)
    p[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    p[0, :, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    p[1, :, H - 1, W - 1] = torch.tensor([0.0, 0.0, 1.0])
    return p


def _neighbour(p, b, c, y, x, dy, dx):
    """p at (y + dy, x + dx), the border replicated."""
    return float(p[b, c, min(max(y + dy, 0), H - 1), min(max(x + dx, 0), W - 1)])


def _clamp(v):
    return min(max(v, 1e-4), 1.0)


def test_the_affinity_space_matches_a_pixel_loop_at_the_borders_too():
    p = _probs()
    got = affinity_space(p)
    assert got.shape == (2, 8 * K, H, W) and got.dtype == torch.float32
    want = torch.empty_like(got)
    for b in range(2):
        for n, (dy, dx) in enumerate(NEIGHBOURS):
            for c in range(K):
                for y in range(H):
                    for x in range(W):
                        here = float(p[b, c, y, x])
                        q = _neighbour(p, b, c, y, x, dy, dx) * here
                        q1, p1, nq, np_ = _clamp(q), _clamp(here), _clamp(1 - q), _clamp(1 - here)
                        want[b, n * K + c, y, x] = q1 * math.log(q1 / p1) + nq * math.log(nq / np_)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert NEIGHBOURS[0] == (-1, -1) and NEIGHBOURS[-1] == (1, 1) and (0, 0) not in NEIGHBOURS


def test_the_checkpointed_affinity_space_has_the_values_and_gradient_of_one_graph():
    logits = (torch.randn(2, K, H, W) * 3).requires_grad_()
    weights = torch.randn(2, 8 * K, H, W)
    p = torch.softmax(logits, dim=1)
    ours = affinity_space(p)  # a gradient will flow: each group checkpointed
    (ours * weights).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    p = torch.softmax(logits, dim=1)
    one_graph = torch.cat([affinity_group(shifted, p) for shifted in neighbours(p)], dim=1)
    (one_graph * weights).sum().backward()
    assert torch.equal(ours, one_graph) and grad.abs().sum() > 0
    torch.testing.assert_close(grad, logits.grad, rtol=1e-6, atol=1e-7)


def test_the_cleaning_loss_matches_a_pixel_loop_and_is_zero_for_agreeing_one_hot_neighbours():
    p = _probs()
    total = 0.0
    for b in range(2):
        for dy, dx in NEIGHBOURS:
            for y in range(H):
                for x in range(W):
                    total += 1 - sum(float(p[b, c, y, x]) * _neighbour(p, b, c, y, x, dy, dx) for c in range(K))
    assert affinity_cleaning_loss(p).item() == pytest.approx(total / (2 * 8 * H * W), rel=1e-5)
    flat = torch.zeros(1, K, H, W)
    flat[:, 1] = 1.0
    assert affinity_cleaning_loss(flat).item() == 0.0
    uniform = torch.full((1, K, H, W), 1.0 / K)
    assert affinity_cleaning_loss(uniform).item() == pytest.approx(1 - 1 / K)


def test_the_adversarial_terms_are_binary_cross_entropies_with_source_0_and_target_1():
    d_src, d_tgt = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)

    def bce(d, label):  # -[y log s(d) + (1 - y) log(1 - s(d))], averaged
        return sum(-(label * math.log(1 / (1 + math.exp(-v))) + (1 - label) * math.log(1 - 1 / (1 + math.exp(-v))))
                   for v in d.flatten().tolist()) / d.numel()

    assert asa_generator_loss(d_tgt).item() == pytest.approx(bce(d_tgt, 0.0), rel=1e-5)  # target as source
    assert asa_discriminator_loss(d_src, d_tgt).item() == pytest.approx(0.5 * bce(d_src, 0.0) + 0.5 * bce(d_tgt, 1.0),
                                                                        rel=1e-5)


def test_the_affinity_discriminator_halves_its_input_five_times_to_one_logit():
    d = AffinityDiscriminator(8 * K, width=4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (8 * K, 4, (4, 4), (2, 2)), (4, 8, (4, 4), (2, 2)), (8, 16, (4, 4), (2, 2)), (16, 32, (4, 4), (2, 2)),
        (32, 1, (4, 4), (2, 2))]
    assert d(torch.randn(2, 8 * K, 32, 64)).shape == (2, 1, 1, 2)
    x = torch.randn(2, 8 * K, 64, 64)
    torch.testing.assert_close(d(x[:1]), d(x)[:1])  # no normalisation: one image's output is its own
