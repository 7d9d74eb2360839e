"""SePiCo label downscaling and contrastive losses against naive per-pixel loops (float64, CPU)."""
import math

import pytest
import torch
import torch.nn.functional as F

from uda_dist.losses.contrast import (bank_contrast, contrast_regularizer, dist_contrast, downscale_labels,
                                      proto_contrast)

N, K, D, M, TAU = 14, 5, 3, 3, 0.7
MASK = torch.tensor([True, True, True, True, False])  # class 4 has no statistics yet


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    label = torch.tensor([0, 1, 2, 3, 4, 255, 0, 1, 2, 3, 4, 255, 0, 2])
    mean = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    var = torch.rand(K, D, generator=g, dtype=torch.float64) * 0.5
    bank = F.normalize(torch.randn(K, M, D, generator=g, dtype=torch.float64), dim=2)
    slots = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)  # 3: empty
    return z, label, mean, var, bank, slots


# ---------------------------------------------------------------- downscale_labels

def test_downscale_keeps_share_at_threshold_and_drops_below_or_ignore_majority():
    label = torch.tensor([[0, 0, 1, 1],
                          [0, 1, 2, 2],
                          [255, 255, 3, 3],
                          [255, 0, 3, 3]])[None]
    out = downscale_labels(label, size=(2, 2), num_classes=4)
    assert out.tolist() == [[[0, 255], [255, 3]]]  # 3/4 kept; 2/4 dropped; ignore 3/4 -> ignore; 4/4 kept
    big = torch.zeros(1, 4, 4, dtype=torch.long)
    big[0, 0, :4] = 1
    assert downscale_labels(big, size=(1, 1), num_classes=2).item() == 0  # 12/16 = 0.75 kept
    big[0, 1, 0] = 1
    assert downscale_labels(big, size=(1, 1), num_classes=2).item() == 255  # 11/16 dropped


def test_downscale_matches_reference_one_hot_average_pool():
    g = torch.Generator().manual_seed(1)
    label = torch.randint(3, (2, 12, 8), generator=g)  # few classes so that many cells pass the threshold
    label[torch.rand(label.shape, generator=g) < 0.1] = 255
    slot = torch.where(label == 255, 3, label)
    share = F.avg_pool2d(F.one_hot(slot, 4).permute(0, 3, 1, 2).float(), kernel_size=(4, 2))
    top, arg = share.max(dim=1)
    want = torch.where((top >= 0.75) & (arg != 3), arg, 255)
    assert torch.equal(downscale_labels(label, size=(3, 4), num_classes=3), want)


def test_downscale_rejects_a_grid_that_does_not_divide_the_labels():
    with pytest.raises(ValueError, match="divide"):
        downscale_labels(torch.zeros(1, 10, 8, dtype=torch.long), size=(3, 4), num_classes=2)


# ---------------------------------------------------------------- naive references

def _anchors(label, mask):
    return [n for n, y in enumerate(label.tolist()) if y != 255 and mask[y]]


def naive_proto(z, label, mean, mask, var=None):
    z, mean, label = z.tolist(), mean.tolist(), label.tolist()
    var = var.tolist() if var is not None else [[0.0] * D] * K
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for n in _anchors(torch.tensor(label), mask):
        terms = [math.exp(dot(z[n], mean[c]) / TAU + dot([x * x for x in z[n]], var[c]) / (2 * TAU ** 2))
                 for c in range(K) if mask[c]]
        losses.append(-dot(z[n], mean[label[n]]) / TAU + math.log(sum(terms)))
    return sum(losses) / len(losses)


def naive_bank(z, label, bank, slots, mask):
    has = [mask[c] and bool(slots[c].any()) for c in range(K)]
    losses = []
    for n in _anchors(label, has):
        y, zn = label[n].item(), z[n]
        negs = [torch.stack([zn @ bank[c, m] / TAU for m in range(M) if slots[c, m]]).mean()
                for c in range(K) if has[c] and c != y]
        neg_sum = sum(math.exp(v) for v in negs)
        terms = []
        for m in range(M):
            if slots[y, m]:
                pos = math.exp(zn @ bank[y, m] / TAU)
                terms.append(math.log(pos / (pos + neg_sum)))
        losses.append(-sum(terms) / len(terms))
    return sum(losses) / len(losses)


def naive_reg(z, label, mean, mask):
    zbar = z[_anchors(label, mask)].mean(0)
    logits = [zbar @ mean[c] / TAU for c in range(K) if mask[c]]
    log_z = math.log(sum(math.exp(v) for v in logits))
    k = len(logits)
    return -sum(float(v) - log_z for v in logits) / (k * math.log(k))


def _approx(got, want):
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_proto_contrast_matches_naive_loop(case):
    z, label, mean, _, _, _ = case
    _approx(proto_contrast(z, label, mean, tau=TAU, class_mask_K=MASK), naive_proto(z, label, mean, MASK))
    _approx(proto_contrast(z, label, mean, tau=TAU), naive_proto(z, label, mean, [True] * K))


def test_dist_contrast_matches_naive_loop_and_is_proto_without_variance(case):
    z, label, mean, var, _, _ = case
    _approx(dist_contrast(z, label, mean, var, tau=TAU, class_mask_K=MASK), naive_proto(z, label, mean, MASK, var))
    torch.testing.assert_close(dist_contrast(z, label, mean, torch.zeros_like(var), tau=TAU, class_mask_K=MASK),
                               proto_contrast(z, label, mean, tau=TAU, class_mask_K=MASK), rtol=0, atol=1e-14)


def test_bank_contrast_matches_naive_loop_for_any_chunk(case):
    z, label, _, _, bank, slots = case
    want = naive_bank(z.detach(), label, bank, slots, MASK.tolist())
    for chunk in (1, 4, 4096):
        _approx(bank_contrast(z, label, bank, slots, tau=TAU, class_mask_K=MASK, chunk=chunk), want)
    _approx(bank_contrast(z, label, bank, slots, tau=TAU), naive_bank(z.detach(), label, bank, slots, [True] * K))


def test_regularizer_matches_naive_uniform_seeking_form(case):
    z, label, mean, _, _, _ = case
    _approx(contrast_regularizer(z, label, mean, tau=TAU, class_mask_K=MASK),
            naive_reg(z.detach(), label, mean, MASK.tolist()))


def test_masked_classes_equal_the_problem_without_them(case):
    """Leaving class 4 out by mask == deleting its statistics and its pixels."""
    z, label, mean, var, _, _ = case
    keep = label != 4
    sub = dict(tau=TAU)
    torch.testing.assert_close(proto_contrast(z, label, mean, class_mask_K=MASK, **sub),
                               proto_contrast(z[keep], label[keep], mean[:4], **sub))
    torch.testing.assert_close(dist_contrast(z, label, mean, var, class_mask_K=MASK, **sub),
                               dist_contrast(z[keep], label[keep], mean[:4], var[:4], **sub))


# ---------------------------------------------------------------- DistCL as a bound

def test_dist_contrast_bounds_monte_carlo_expected_infonce_and_proto_is_below():
    """ProtoCL <= E_k[InfoNCE with keys k_c ~ N(mu_c, diag var_c)] <= DistCL, and the bound is tight enough
    that doubling the variance term (a missing 1/2) would break it."""
    g = torch.Generator().manual_seed(2)
    n, k, d, tau, samples = 16, 4, 8, 0.5, 4000
    z = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    mean = 0.7 * F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    var = 0.1 + 0.3 * torch.rand(k, d, generator=g, dtype=torch.float64)
    label = torch.randint(k, (n,), generator=g)
    keys_SKD = mean + var.sqrt() * torch.randn(samples, k, d, generator=g, dtype=torch.float64)
    logits_SNK = torch.einsum("nd,skd->snk", z, keys_SKD) / tau
    pos_SN = logits_SNK.gather(2, label[None, :, None].expand(samples, n, 1)).squeeze(2)
    per_sample = (torch.logsumexp(logits_SNK, dim=2) - pos_SN).mean(1)
    mc, se = per_sample.mean().item(), per_sample.std().item() / math.sqrt(samples)
    bound = dist_contrast(z, label, mean, var, tau=tau).item()
    lower = proto_contrast(z, label, mean, tau=tau).item()
    assert lower <= mc + 4 * se and bound >= mc - 4 * se
    assert bound - mc < 0.5 * (bound - lower)
    assert dist_contrast(z, label, mean, 2 * var, tau=tau).item() - mc > 0.5 * (bound - lower)


# ---------------------------------------------------------------- gradients, empty inputs, dtype

def _all_losses(z, label, mean, var, bank, slots, mask):
    kw = dict(tau=TAU, class_mask_K=mask)
    return [proto_contrast(z, label, mean, **kw), dist_contrast(z, label, mean, var, **kw),
            bank_contrast(z, label, bank, slots, **kw), contrast_regularizer(z, label, mean, **kw)]


def test_gradients_are_finite(case):
    z, label, mean, var, bank, slots = case
    for loss in _all_losses(z, label, mean, var, bank, slots, MASK):
        (grad,) = torch.autograd.grad(loss, z)
        assert grad.isfinite().all() and grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["all_ignored", "no_statistics"])
def test_no_valid_pixel_gives_exact_zero_with_zero_gradient(case, which):
    z, label, mean, var, bank, slots = case
    mask = MASK
    if which == "all_ignored":
        label = torch.full_like(label, 255)
    else:
        mask = torch.zeros(K, dtype=torch.bool)
    for loss in _all_losses(z, label, mean, var, bank, slots, mask):
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, z)
        assert (grad == 0).all()


def test_bfloat16_features_give_float32_losses_close_to_float32(case):
    z, label, mean, var, bank, slots = case
    z32 = z.detach().float()
    stats = [mean.float(), var.float(), bank.float(), slots, MASK]
    for low, ref in zip(_all_losses(z32.bfloat16().requires_grad_(), label, *stats), _all_losses(z32, label, *stats)):
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(ref.item(), rel=0.05, abs=0.02)


# ---------------------------------------------------------------- regulariser sign

def test_regularizer_is_one_at_uniform_softmax_and_grows_as_it_peaks():
    """Chosen sign: L = -(1/(K ln K)) sum_c log softmax_c >= 1, minimum at the uniform softmax (the negative
    of the reference code's value), so minimising it spreads the mean embedding over the classes."""
    mean = torch.eye(4, dtype=torch.float64)
    label = torch.zeros(3, dtype=torch.long)
    uniform = F.normalize(torch.ones(3, 4, dtype=torch.float64), dim=1)
    peaked = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=torch.float64)
    at_uniform = contrast_regularizer(uniform, label, mean, tau=0.1)
    at_peak = contrast_regularizer(peaked, label, mean, tau=0.1)
    assert at_uniform.item() == pytest.approx(1.0, abs=1e-12)
    assert at_peak.item() > 3.0
    logp = torch.log_softmax(peaked[0] @ mean.T / 0.1, dim=0)
    reference_code_value = logp.sum() / (4 * math.log(4))  # BIT-DA/SePiCo proto_reg, added as is
    assert at_peak.item() == pytest.approx(-reference_code_value.item(), rel=1e-12)
    z = peaked.clone().requires_grad_()
    (grad,) = torch.autograd.grad(contrast_regularizer(z, label, mean, tau=0.1), z)
    assert grad[:, 0].sum() > 0  # descending moves zbar away from the dominant class 0


def test_dist_contrast_gradients_pass_gradcheck(case):
    """The variance term's hand-written backward (2 z * (g @ var)) against finite differences, for z and var."""
    z, label, mean, var, _, _ = case
    fn = lambda z_, var_: dist_contrast(z_, label, mean, var_, tau=TAU, class_mask_K=MASK)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z.detach().requires_grad_(), var.clone().requires_grad_()))
