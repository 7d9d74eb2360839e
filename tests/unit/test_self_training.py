"""Mean-teacher pieces: EMA formula, pseudo-label weight, ClassMix masks and labels, lr schedule."""
import math

import pytest
import torch
from torch import nn

from uda_dist.data.class_mix import class_mix_masks, mix
from uda_dist.methods.self_training import ema_alpha, ema_update, pseudo_labels
from uda_dist.optim import OptimConfig, lr_factor


def test_ema_alpha_follows_daformer():
    assert ema_alpha(1, 0.999) == 0.5
    assert ema_alpha(9, 0.999) == pytest.approx(0.9)
    assert ema_alpha(100_000, 0.999) == 0.999


def test_ema_update_formula_on_parameters_and_copies_buffers():
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student[1].running_mean.fill_(0.7)
    t_before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t_old, t_new, s in zip(t_before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s, rtol=0, atol=1e-7)
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)


def test_pseudo_label_weight_is_confident_fraction_with_crop_rows_zero():
    logits = torch.zeros(2, 3, 4, 5)
    logits[0, 1, :2] = 10.0  # 10 confident pixels of class 1 in image 0
    logits[1, 2, :, :1] = 10.0  # 4 confident pixels of class 2 in image 1
    label, weight, q = pseudo_labels(logits, threshold=0.968, crop_top=1, crop_bottom=1)
    assert q.item() == pytest.approx(14 / 40)
    assert (label[0, :2] == 1).all() and (label[1, :, 0] == 2).all()
    assert (weight[:, 0] == 0).all() and (weight[:, -1] == 0).all()
    assert torch.allclose(weight[:, 1:-1], torch.full_like(weight[:, 1:-1], 14 / 40))


def test_class_mix_takes_half_the_present_classes_and_never_ignore():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (6, 16, 16), generator=g)
    label[:, :, :3] = 255
    label[2] = torch.where(label[2] < 5, label[2], 7)  # few classes in one image
    mask = class_mix_masks(label, num_classes=19, generator=g)
    for b in range(label.shape[0]):
        present = set(label[b][label[b] != 255].tolist())
        chosen = set(label[b][mask[b]].tolist())
        assert chosen <= present and len(chosen) == math.ceil(len(present) / 2)
        inside = torch.isin(label[b], torch.tensor(sorted(chosen)))
        assert torch.equal(mask[b], inside)  # whole classes, exactly their pixels
        assert not mask[b][label[b] == 255].any()


def test_mixed_image_and_label_take_source_inside_mask():
    mask = torch.tensor([[[True, False], [False, True]]])
    src_img, tgt_img = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    src_lbl, pl = torch.full((1, 2, 2), 4), torch.full((1, 2, 2), 9)
    assert torch.equal(mix(mask, src_img, tgt_img)[0, :, 0, 0], torch.ones(3))
    assert torch.equal(mix(mask, src_img, tgt_img)[0, :, 0, 1], torch.zeros(3))
    assert mix(mask, src_lbl, pl).tolist() == [[[4, 9], [9, 4]]]


def test_class_mix_is_seeded():
    label = torch.randint(0, 19, (4, 8, 8), generator=torch.Generator().manual_seed(1))
    a = class_mix_masks(label, num_classes=19, generator=torch.Generator().manual_seed(5))
    b = class_mix_masks(label, num_classes=19, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_lr_schedule_warmup_then_poly_to_min():
    cfg = OptimConfig(lr=1e-3, warmup_iters=10, warmup_ratio=1e-6, poly_power=1.0)
    assert lr_factor(0, cfg=cfg, total=100) == pytest.approx(1e-6)
    assert lr_factor(10, cfg=cfg, total=100) == pytest.approx(0.9)
    assert lr_factor(5, cfg=cfg, total=100) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert lr_factor(100, cfg=cfg, total=100) == 0.0
    cfg_min = OptimConfig(lr=1e-3, warmup_iters=0, min_lr=1e-4)
    assert lr_factor(100, cfg=cfg_min, total=100) == pytest.approx(0.1)
