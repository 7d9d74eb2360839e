"""DiGA's pure parts: the symmetric distillation and the centroid selection against pixel loops, and the FDA
style substitute."""
from __future__ import annotations

import math

import pytest
import torch

from uda_dist.data.fda import fourier_style, low_frequency_mask
from uda_dist.losses.distillation import distillation_cross_entropy, symmetric_distillation

K = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _naive_h(teacher, student):
    """mean over pixels of -sum_c softmax(T)_c log softmax(S)_c, one pixel at a time."""
    B, C, H, W = teacher.shape
    total = 0.0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                t = [math.exp(float(teacher[b, c, y, x])) for c in range(C)]
                s = [float(student[b, c, y, x]) for c in range(C)]
                log_norm = math.log(sum(math.exp(v) for v in s))
                total += -sum(t[c] / sum(t) * (s[c] - log_norm) for c in range(C))
    return total / (B * H * W)


def test_the_symmetric_distillation_matches_a_pixel_loop_and_spares_the_teacher():
    t_x, s_x, t_aug, s_aug = (torch.randn(2, K, 3, 4) * 2 for _ in range(4))
    want = _naive_h(t_x, s_aug) + 0.5 * _naive_h(t_aug, s_x)
    assert symmetric_distillation(t_x, s_x, t_aug, s_aug).item() == pytest.approx(want, rel=1e-5)
    teacher, student = torch.randn(1, K, 2, 2, requires_grad=True), torch.randn(1, K, 2, 2, requires_grad=True)
    distillation_cross_entropy(teacher, student).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # the student's loss is lowest where it predicts what the teacher does
    assert distillation_cross_entropy(teacher, teacher * 5) < distillation_cross_entropy(teacher, -teacher * 5)


def test_fda_keeps_the_source_phase_and_takes_the_target_low_frequency_amplitude():
    H, W, beta = 16, 20, 0.15  # b = 2: frequencies -1..1 on each axis
    source = 0.5 + 0.1 * torch.rand(2, 3, H, W)
    target = 0.4 + 0.1 * torch.rand(2, 3, H, W)  # mid-range: nothing is clamped
    styled = fourier_style(source, target, beta=beta)
    low = low_frequency_mask(H, W, beta)
    assert low.sum() == 3 * 3 and low[0, 0] and low[H - 1, W - 1] and not low[H - 2, 0] and not low[2, 0]
    f_out, f_src, f_tgt = torch.fft.fft2(styled), torch.fft.fft2(source), torch.fft.fft2(target)
    torch.testing.assert_close(f_out.abs()[..., low], f_tgt.abs()[..., low], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f_out.abs()[..., ~low], f_src.abs()[..., ~low], rtol=1e-4, atol=1e-4)
    phase_gap = torch.angle(f_out * f_src.conj())  # the layout: the same phase everywhere
    assert phase_gap.abs().max() < 1e-3
    # the mean colour (the DC term) is the target's, the detail the source's
    torch.testing.assert_close(styled.mean(dim=(-2, -1)), target.mean(dim=(-2, -1)), rtol=1e-4, atol=1e-5)
    assert (styled - styled.mean(dim=(-2, -1), keepdim=True) - (source - source.mean(dim=(-2, -1), keepdim=True))
            ).abs().mean() < 0.5 * (source - source.mean(dim=(-2, -1), keepdim=True)).abs().mean()
    assert fourier_style(source, target, beta=0.0).sub(source).abs().max() < 1e-5  # b = 0: nothing swapped
    with pytest.raises(ValueError, match="one shape"):
        fourier_style(source, target[:1])


def test_the_nearest_centroid_and_agreement_selection_match_a_pixel_loop():
    from uda_dist.stats.centroids import agreement_selection, nearest_centroid

    feat, centroids = torch.randn(2, 5, 3, 4), torch.randn(K, 5)
    nearest, soft = nearest_centroid(feat, centroids)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                d = [float(torch.linalg.vector_norm(feat[b, :, y, x] - centroids[k])) for k in range(K)]
                assert int(nearest[b, y, x]) == d.index(min(d))
                norm = sum(math.exp(-v) for v in d)
                for k in range(K):
                    assert float(soft[b, k, y, x]) == pytest.approx(math.exp(-d[k]) / norm, rel=1e-4)
    pseudo = torch.randint(0, K, (2, 3, 4))
    pseudo[0, 0, 0] = 255  # an ignored pixel stays ignored
    selected = agreement_selection(pseudo, nearest)
    assert torch.equal(selected == pseudo, (pseudo == nearest) | (pseudo == 255))
    assert (selected[pseudo != nearest] == 255).all()


def test_the_cross_domain_mixture_matches_a_pixel_loop():
    from uda_dist.data.fda import cross_domain_mixture

    image, jittered, styled = (torch.rand(2, 3, 5, 6) for _ in range(3))
    mask = torch.rand(2, 5, 6) > 0.5
    mixed = cross_domain_mixture(image, jittered, styled, mask, beta=0.3)
    for b in range(2):
        for c in range(3):
            for y in range(5):
                for x in range(6):
                    blended = 0.3 * jittered[b, c, y, x] + 0.7 * image[b, c, y, x]
                    want = blended if mask[b, y, x] else styled[b, c, y, x]
                    assert float(mixed[b, c, y, x]) == pytest.approx(float(want), abs=1e-6)


def _naive_class_means(feat, pred, label, min_pixels, num_classes, valid):
    count = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, feat.shape[1], dtype=torch.float64)
    for b in range(feat.shape[0]):
        if not valid[b]:
            continue
        for k in range(num_classes):
            pixels = [(y, x) for y in range(feat.shape[2]) for x in range(feat.shape[3])
                      if pred[b, y, x] == k and (label is None or label[b, y, x] == k)]
            if len(pixels) >= min_pixels:
                count[k] += 1
                total[k] += torch.stack([feat[b, :, y, x].double() for y, x in pixels]).mean(dim=0)
    return count, total


@pytest.mark.parametrize("with_label", [False, True])
def test_per_image_class_means_match_a_pixel_loop(with_label):
    from uda_dist.stats.centroids import image_class_means

    feat = torch.randn(3, 4, 6, 7)
    pred = torch.randint(0, K, (3, 6, 7))
    label = torch.where(torch.rand(3, 6, 7) > 0.3, pred, torch.randint(0, K, (3, 6, 7)))
    label[0, :2] = 255
    label = label if with_label else None
    valid = torch.tensor([True, False, True])
    count, total = image_class_means(feat, pred, num_classes=K, min_pixels=5, label_Bhw=label, valid_B=valid)
    want_count, want_total = _naive_class_means(feat, pred, label, 5, K, valid)
    assert torch.equal(count, want_count) and count.sum() > 0
    torch.testing.assert_close(total, want_total)


def test_the_momentum_update_is_the_sequential_update_for_equal_means_and_starts_new_classes_at_their_mean():
    from uda_dist.stats.centroids import momentum_update

    centroids = torch.randn(K, 3, dtype=torch.float64)
    seen = torch.tensor([True, True, False, True])
    count = torch.tensor([3.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    mean = torch.randn(K, 3, dtype=torch.float64)
    moved, now_seen = momentum_update(centroids, seen, count, mean * count[:, None], momentum=0.1)
    sequential = centroids[0].clone()
    for _ in range(3):  # the reference: c <- (1 - m) c + m v once per per-image mean
        sequential = 0.9 * sequential + 0.1 * mean[0]
    torch.testing.assert_close(moved[0], sequential)
    torch.testing.assert_close(moved[3], 0.9 * centroids[3] + 0.1 * mean[3])
    assert torch.equal(moved[1], centroids[1])  # not fed this step
    torch.testing.assert_close(moved[2], mean[2])  # first seen: its mean
    assert now_seen.tolist() == [True, True, True, True]


def test_centroids_reduce_once_per_commit_and_the_agreement_keeps_only_agreeing_labels():
    from uda_dist.methods.labelers import CentroidAgreement, TeacherView
    from uda_dist.stats.centroids import ClassCentroids

    calls = []

    def reducer(flat):
        calls.append(flat.numel())
        return flat

    centroids = ClassCentroids(K, 2, momentum=0.5, min_pixels=1, reducer=reducer)
    centroids.centroid_KD.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]]))
    centroids.seen_K.copy_(torch.tensor([True, True, True, False]))
    # four pixels whose nearest seen centroids are 0, 1, 2 and (class 3 unseen) 2
    feat = torch.tensor([[0.5, 9.0, 0.2, 48.0], [0.1, 0.3, 9.5, 49.0]]).view(1, 2, 1, 4)
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 2, 3]]]), K).permute(0, 3, 1, 2).float()
    selector = CentroidAgreement(centroids)
    label = torch.tensor([[[0, 2, 2, 3]]])
    selected, weight, log = selector.select(label, TeacherView(logits, feat, logits))
    assert selected.tolist() == [[[0, 255, 2, 255]]] and torch.equal(weight, torch.ones(1, 1, 4))
    assert float(log["pseudo.agreement_ratio"]) == 0.5
    assert calls == []  # contributions wait for the optimiser step
    selector.observe_source(TeacherView(logits, feat, logits), torch.tensor([[[0, 1, 1, 1]]]))
    selector.after_step()
    assert calls == [K + K * 2]  # one packed reduce: counts and sums
    # class 0 fed twice with feature (0.5, 0.1): moved by 1 - 0.5^2; class 2 once (target); class 1 once (source)
    torch.testing.assert_close(centroids.centroid_KD[0], torch.tensor([0.375, 0.075], dtype=torch.float64))
    torch.testing.assert_close(centroids.centroid_KD[1], torch.tensor([9.5, 0.15], dtype=torch.float64))
    torch.testing.assert_close(centroids.centroid_KD[2], torch.tensor([0.1, 9.75], dtype=torch.float64))
    assert not centroids.seen_K[3]  # the teacher said 3 where the source label said 1: not fed
    selector.after_step()
    assert len(calls) == 2  # a step with nothing to add still reduces (every rank takes part)
