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
