"""Per-class moments, the running ClassStatistics and the class memory bank, against naive references."""
import pytest
import torch

from uda_dist.stats.class_stats import ClassStatistics
from uda_dist.stats.memory_bank import ClassMemoryBank
from uda_dist.stats.moments import Moments, class_moments, mean_var, merge, pack, unpack

K, D = 5, 3


def _batch(g: torch.Generator, n: int, *, classes=range(K), offset: float = 2.0):
    """Features around a per-class offset (so mean^2 >> var is exercised), labels from `classes` or ignore."""
    choices = torch.tensor([*classes, 255])
    label = choices[torch.randint(len(choices), (n,), generator=g)]
    feat = torch.randn(n, D, generator=g, dtype=torch.float64) + offset * label.clamp_max(K).double()[:, None]
    return feat, label


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_merged_chunks_equal_whole_batch():
    feat, label = _batch(torch.Generator().manual_seed(0), 103)
    whole = class_moments(feat, label, num_classes=K)
    parts = [class_moments(f, l, num_classes=K, chunk=7) for f, l in zip(feat.split(26), label.split(26))]
    merged = parts[0]
    for p in parts[1:]:
        merged = merge(merged, p)
    assert len(parts) == 4
    for a, b in zip(merged, whole):
        _close(a, b)


def test_mean_and_biased_variance_match_naive_per_class():
    feat, label = _batch(torch.Generator().manual_seed(1), 80, classes=[0, 1, 2, 4])  # class 3 absent
    m = class_moments(feat.float(), label, num_classes=K)
    assert all(t.dtype == torch.float64 for t in m)
    mean, var = mean_var(m)
    feat32 = feat.float().double()
    for c in range(K):
        rows = feat32[label == c]
        assert m.count_K[c] == rows.shape[0]
        if rows.shape[0] == 0:
            assert (mean[c] == 0).all() and (var[c] == 0).all()
        else:
            _close(mean[c], rows.mean(0))
            _close(var[c], rows.var(0, unbiased=False))


def test_ignored_pixels_do_not_count_and_no_pixels_give_zeros():
    g = torch.Generator().manual_seed(2)
    feat, label = _batch(g, 50)
    moved = torch.where((label == 255)[:, None], feat + 1e6, feat)
    for a, b in zip(class_moments(moved, label, num_classes=K), class_moments(feat, label, num_classes=K)):
        assert torch.equal(a, b)
    for n in (0, 6):
        m = class_moments(torch.randn(n, D), torch.full((n,), 255), num_classes=K)
        mean, var = mean_var(m)
        assert all((t == 0).all() for t in (*m, mean, var))
        assert not any(t.isnan().any() for t in (mean, var))


def test_pack_unpack_round_trip():
    m = class_moments(*_batch(torch.Generator().manual_seed(3), 30), num_classes=K)
    flat = pack(m)
    assert flat.shape == (K + 2 * K * D,) and flat.dtype == torch.float64
    for a, b in zip(unpack(flat, K, D), m):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        unpack(flat[:-1], K, D)


def _reference_update(mu, var, n, feat, label):
    """BIT-DA/SePiCo ProtoEstimator.update_proto's recursion, written per class."""
    for c in range(K):
        x = feat[label == c]
        if x.shape[0] == 0:
            continue  # absent classes keep their values
        n_c, m_c, v_c = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        w = n_c / (n_c + n[c])
        var[c] = (1 - w) * var[c] + w * v_c + w * (1 - w) * (mu[c] - m_c) ** 2
        mu[c] = (1 - w) * mu[c] + w * m_c
        n[c] += n_c


def test_running_statistics_equal_reference_weighted_update_over_20_batches():
    g = torch.Generator().manual_seed(4)
    stats = ClassStatistics(K, D)
    mu, var, n = torch.zeros(K, D, dtype=torch.float64), torch.zeros(K, D, dtype=torch.float64), [0] * K
    for step in range(20):
        classes = [c for c in range(K) if torch.rand(1, generator=g) < 0.6]
        feat, label = _batch(g, int(torch.randint(5, 60, (1,), generator=g)), classes=classes)
        stats.update(feat, label)
        _reference_update(mu, var, n, feat, label)
    assert stats.count_K.tolist() == n
    seen = torch.tensor(n) > 0
    assert torch.equal(stats.seen_K, seen)
    _close(stats.mean_KD, mu)
    _close(stats.var_KD, var)


def test_reducer_is_called_once_per_update_and_its_result_is_accumulated():
    calls = []

    def doubling(flat):
        calls.append(flat.shape)
        return 2 * flat

    stats = ClassStatistics(K, D, reducer=doubling)
    feat, label = _batch(torch.Generator().manual_seed(5), 40)
    batch = stats.update(feat, label)
    stats.update(feat, torch.full_like(label, 255))  # no class present: still one reduction
    assert calls == [(K + 2 * K * D,)] * 2
    local = class_moments(feat, label, num_classes=K)
    for got, want in zip((batch, stats.moments), (local, local)):
        for a, b in zip(got, want):
            _close(a, 2 * b)
    _close(stats.mean_KD, mean_var(local)[0])  # doubled sums, same mean


def test_update_does_not_track_gradients():
    feat = torch.randn(10, D, requires_grad=True)
    stats = ClassStatistics(K, D)
    batch = stats.update(feat, torch.randint(K, (10,)))
    assert not any(t.requires_grad for t in (*batch, *stats.moments))


def test_statistics_and_bank_buffers_round_trip_through_state_dict():
    stats, bank = ClassStatistics(K, D), ClassMemoryBank(K, D, size=4)
    batch = stats.update(*_batch(torch.Generator().manual_seed(6), 30))
    bank.push_moments(batch)
    for module, names in ((stats, {"count_K", "sum_KD", "sumsq_KD"}), (bank, {"bank_KMD", "size_K", "next_K"})):
        state = module.state_dict()
        assert set(state) == names
        fresh = type(module)(K, D) if module is stats else ClassMemoryBank(K, D, size=4)
        fresh.load_state_dict(state)
        for name in names:
            assert torch.equal(getattr(fresh, name), getattr(module, name))


def test_memory_bank_ring_order_wraps_and_leaves_absent_classes_untouched():
    M = 4
    bank = ClassMemoryBank(3, 2, size=M)
    pushes = []
    for t in range(M + 2):  # class 0 every push, class 1 at t = 0 and 3, class 2 never
        present = torch.tensor([True, t in (0, 3), False])
        mean = torch.full((3, 2), float(t)) + torch.tensor([0.0, 100.0, 200.0])[:, None]
        bank.push(mean, present)
        pushes.append(mean)
    assert bank.bank_KMD[0, :, 0].tolist() == [4.0, 5.0, 2.0, 3.0]  # slots 0, 1 overwritten by pushes 4, 5
    assert bank.bank_KMD[1, :2, 0].tolist() == [100.0, 103.0]
    assert (bank.bank_KMD[1, 2:] == 0).all() and (bank.bank_KMD[2] == 0).all()
    assert bank.size_K.tolist() == [M, 2, 0] and bank.next_K.tolist() == [2, 2, 0]
    assert bank.slot_mask_KM().tolist() == [[True] * 4, [True, True, False, False], [False] * 4]


def test_memory_bank_push_moments_uses_present_class_means():
    bank = ClassMemoryBank(K, D, size=3)
    feat, label = _batch(torch.Generator().manual_seed(7), 30, classes=[0, 2])
    m = class_moments(feat, label, num_classes=K)
    bank.push_moments(m)
    assert bank.size_K.tolist() == [1, 0, 1, 0, 0]
    torch.testing.assert_close(bank.bank_KMD[:, 0], mean_var(m)[0].float())
    assert isinstance(m, Moments)


def test_class_moments_leaves_float64_input_unchanged():
    """Regression: an in-place square on the float64 chunk (which aliases a float64 input) squared feat."""
    feat, label = _batch(torch.Generator().manual_seed(8), 20)
    before = feat.clone()
    class_moments(feat, label, num_classes=K)
    assert torch.equal(feat, before)
