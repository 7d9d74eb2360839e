"""PGPC's loss against a naive per-pixel loop (float64, CPU), and the rules of its reliable/unreliable split."""
import math

import pytest
import torch
import torch.nn.functional as F

from uda_dist.losses.contrast import proto_contrast
from uda_dist.losses.pgpc import pgpc_contrast, to_grid, top_classes


def _case(seed, N=40, K=6, D=8):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    mean = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1) * 0.7
    label = torch.randint(0, K, (N,), generator=g)
    label[::7] = 255
    reliable = torch.rand(N, generator=g) < 0.5
    candidates = torch.rand(N, K, generator=g) < 0.4
    weight = torch.rand(N, generator=g, dtype=torch.float64)
    weight[::5] = 0.0
    seen = torch.ones(K, dtype=torch.bool)
    seen[K - 1] = False
    return z, label, reliable, candidates, weight, mean, seen


def _loop(z, label, reliable, candidates, weight, mean, seen, *, tau, unreliable_weight):
    """The module docstring's formula, one pixel at a time."""
    total, count = 0.0, 0
    S = [c for c in range(mean.shape[0]) if seen[c]]
    for i in range(z.shape[0]):
        if label[i] == 255 or weight[i] == 0:
            continue
        count += 1
        s = {c: float(z[i] @ mean[c]) / tau for c in S}
        log_all = math.log(sum(math.exp(v) for v in s.values()))
        if reliable[i]:
            if int(label[i]) in s:
                total += float(weight[i]) * (log_all - s[int(label[i])])
        else:
            C = [c for c in S if candidates[i, c]]
            if C:
                total += unreliable_weight * float(weight[i]) * (log_all - math.log(sum(math.exp(s[c]) for c in C)))
    return total / max(count, 1)


@pytest.mark.parametrize("seed,tau,unreliable_weight", [(0, 0.1, 1.0), (1, 0.5, 0.3), (2, 1.0, 0.0)])
def test_loss_equals_the_per_pixel_loop(seed, tau, unreliable_weight):
    z, label, reliable, candidates, weight, mean, seen = _case(seed)
    got = pgpc_contrast(z, label, reliable, candidates, weight, mean, tau=tau, unreliable_weight=unreliable_weight,
                        class_mask_K=seen)
    want = _loop(z, label, reliable, candidates, weight, mean, seen, tau=tau, unreliable_weight=unreliable_weight)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_an_unreliable_pixel_is_never_a_positive():
    z, label, reliable, candidates, weight, mean, seen = _case(3)
    z.requires_grad_(True)
    unreliable = (~reliable) & (label != 255) & (weight > 0)
    assert unreliable.sum() >= 5
    relabelled = torch.where(unreliable, (label + 1) % 5, label)  # another pseudo-label for every unreliable pixel
    losses, grads = [], []
    for lab in (label, relabelled):
        loss = pgpc_contrast(z, lab, reliable, candidates, weight, mean, tau=0.2, unreliable_weight=1.0,
                             class_mask_K=seen)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, z)[0])
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])
    # its only pull is to its candidate set: with every seen class a candidate it contributes nothing
    all_candidates = candidates | unreliable[:, None]
    only_reliable = pgpc_contrast(z, label, reliable, candidates, weight, mean, tau=0.2, unreliable_weight=0.0,
                                  class_mask_K=seen)
    everything = pgpc_contrast(z, label, reliable, all_candidates, weight, mean, tau=0.2, unreliable_weight=1.0,
                               class_mask_K=seen)
    assert everything.item() == pytest.approx(only_reliable.item(), rel=1e-12)


def test_an_unreliable_pixel_is_pushed_from_the_classes_outside_its_candidates():
    K = D = 5
    mean = torch.eye(K, D, dtype=torch.float64) * 0.8  # orthogonal prototypes: z.mu_c moves alone along mu_c
    z = F.normalize(torch.randn(1, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    z.requires_grad_(True)
    candidates = torch.tensor([[True, True, False, False, False]])
    loss = pgpc_contrast(z, torch.tensor([0]), torch.tensor([False]), candidates, torch.ones(1, dtype=torch.float64),
                         mean, tau=0.5, unreliable_weight=1.0)
    (grad,) = torch.autograd.grad(loss, z)
    along = grad[0] @ mean.T  # d loss / d (z.mu_c) * |mu_c|^2 / tau
    assert (along[2:] > 0).all() and (along[:2] < 0).all()


def test_reliable_only_with_every_pixel_reliable_and_weight_one_is_protocl():
    z, label, _, candidates, _, mean, seen = _case(4)
    every = torch.ones_like(label, dtype=torch.bool)
    got = pgpc_contrast(z, label, every, candidates, torch.ones(len(label), dtype=torch.float64), mean, tau=0.3,
                        unreliable_weight=0.0, class_mask_K=torch.ones(mean.shape[0], dtype=torch.bool))
    assert got.item() == pytest.approx(proto_contrast(z, label, mean, tau=0.3).item(), rel=1e-12)


def test_a_pixel_of_an_unseen_class_is_no_anchor_and_no_class_is_a_nan():
    z, label, reliable, candidates, weight, mean, seen = _case(5)
    seen = torch.zeros_like(seen)  # before the first statistics update
    loss = pgpc_contrast(z, label, reliable, candidates, weight, mean, tau=0.1, unreliable_weight=1.0,
                         class_mask_K=seen)
    assert loss.item() == 0.0


def test_top_classes_and_the_grid():
    logits = torch.tensor([[[[0.0]], [[3.0]], [[1.0]], [[2.0]]]])  # one pixel, classes ranked 1, 3, 2, 0
    assert top_classes(logits, 2)[0, :, 0, 0].tolist() == [False, True, False, True]
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, :, 2:] = 1
    reliable = torch.ones(1, 4, 4, dtype=torch.bool)
    reliable[0, 0, 0] = False  # 3 of 4 reliable in the first cell: still reliable at min_share 0.75
    reliable[0, 2:, 2:] = False
    reliable[0, 2, 2] = True  # 1 of 4 in the last cell: unreliable
    weight = torch.full((1, 4, 4), 0.5)
    weight[0, :2, :2] = 1.0
    candidates = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    candidates[0, 2, 3, 3] = True  # one pixel's candidate is its cell's
    label_N, reliable_N, weight_N, cand_NK = to_grid(label, reliable, weight, candidates, size=(2, 2), num_classes=3,
                                                     min_share=0.75)
    assert label_N.tolist() == [0, 1, 0, 1] and reliable_N.tolist() == [True, True, True, False]
    assert weight_N.tolist() == [1.0, 0.5, 0.5, 0.5] and cand_NK[3].tolist() == [False, False, True]
    assert not cand_NK[:3].any()
