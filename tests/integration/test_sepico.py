"""SePiCo end to end in one process: statistics from step 0, contrast from start_step, state checkpointed."""
import numpy as np
import pytest
import torch

from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.loop import train_loop
from uda_dist.methods.self_training import SelfTrainingConfig
from uda_dist.methods.terms import pl_crop_rows
from uda_dist.methods.sepico import SePiCoContrastConfig
from uda_dist.model.segmentor import ModelConfig, build_segmentor
from uda_dist.recipes.synthetic import synthetic_sepico_bankcl, synthetic_sepico_distcl, synthetic_sepico_protocl


@pytest.mark.parametrize("recipe", [synthetic_sepico_protocl, synthetic_sepico_bankcl, synthetic_sepico_distcl])
def test_sepico_recipe_trains_with_contrast_after_start(recipe, tiny_data_dir, tmp_path):
    cfg = apply_overrides(recipe(), tiny_overrides(tiny_data_dir, str(tmp_path)) +
                          ["train.iterations=8", "train.log_every=1", "method.sepico.start_step=4", "method.sepico.tau=1",
                           "train.time_stats_reduce=true"])
    result = train_loop(cfg)
    for entry in result.losses:  # speed at log cadence: global samples/s and the statistics reduce's share
        assert entry["samples_per_s"] > 0 and 0 < entry["time.stats_reduce_share"] < 1
    before, after = result.losses[3], result.losses[4]
    assert "source.contrast" not in before and "target.contrast" not in before
    assert np.isfinite(after["source.contrast"]) and np.isfinite(after["target.contrast"])
    assert after["source.contrast"] > 0 and after["stats.classes_seen"] >= 2
    assert after["loss"] == pytest.approx(sum(after[k] for k in ("source.ce", "mix.ce", "source.contrast",
                                                                  "target.contrast")), rel=1e-5)


def _sepico(start_step=3000, **changes):
    """SePiCo's DistCL on self-training, the source pass on the strongly augmented source (as the paper)."""
    return SelfTrainingConfig(strong_source=changes.pop("strong_source", True),
                              sepico=SePiCoContrastConfig(weight=1.0, start_step=start_step), **changes)


def _student(proj_dim=16):
    torch.manual_seed(0)
    return build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16, proj_dim=proj_dim))


def _batch(seed, B=2, H=32, W=32):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (B, 1, H // 8, W // 8), generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    label = label[:, 0]
    return {"image": torch.rand(B, 3, H, W, generator=g), "label": label}


def test_statistics_fed_from_step_zero_and_saved():
    student = _student()
    method = _sepico(start_step=100).build(student, seed=0)
    losses = method.losses(student, _batch(0), _batch(1), step=0)
    assert set(losses) == {"source.ce", "mix.ce"}
    counted = method.stats.count_K.clone()
    assert counted[:4].sum() > 0 and counted[4:].sum() == 0
    bank = method.terms[0].bank
    assert (bank.size_K[:4] == 1).all()
    state = method.state_dict()
    fresh = _sepico(start_step=100).build(_student(), seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.stats.count_K, counted) and torch.equal(fresh.terms[0].bank.bank_KMD, bank.bank_KMD)


def test_injected_reducer_is_called_once_per_step():
    calls = []
    student = _student()
    method = _sepico(start_step=0).build(student, seed=0, reducer=lambda flat: calls.append(1) or flat)
    losses = method.losses(student, _batch(0), _batch(1), step=0)
    assert len(calls) == 1 and {"source.contrast", "target.contrast"} <= set(losses)


def test_pl_crop_rows_are_ignored_in_the_target_contrast():
    label = torch.zeros(1, 10, 4, dtype=torch.long)
    cropped = label.masked_fill(pl_crop_rows(10, top=2, bottom=3).view(1, -1, 1), 255)
    assert (cropped[0, :2] == 255).all() and (cropped[0, -3:] == 255).all() and (cropped[0, 2:7] == 0).all()


def test_needs_a_projection_head():
    with pytest.raises(ValueError, match="proj_dim"):
        _sepico().build(_student(proj_dim=0), seed=0)


def test_class_balanced_window_prefers_the_window_with_more_classes():
    from uda_dist.methods.self_training import class_balanced_windows
    label = torch.zeros(1, 8, 16, dtype=torch.long)  # left half: one class
    label[0, :, 8:] = torch.arange(8).repeat(8, 1)  # right half: eight classes in columns
    label[0, 0, :] = 255
    tops, lefts = class_balanced_windows(label, size=(8, 8), candidates=20, num_classes=19,
                                         generator=torch.Generator().manual_seed(0))
    assert tops.tolist() == [0] and lefts.tolist() == [8]
    tops, lefts = class_balanced_windows(label.repeat(3, 1, 1), size=(4, 5), candidates=1, num_classes=19,
                                         generator=torch.Generator().manual_seed(1))
    assert ((tops >= 0) & (tops <= 4)).all() and ((lefts >= 0) & (lefts <= 11)).all()
    with pytest.raises(ValueError, match="target_crop_size"):
        class_balanced_windows(label, size=(9, 8), candidates=2, num_classes=19, generator=torch.Generator())


def test_class_balanced_crop_cuts_a_larger_target_to_the_source_size():
    student = _student()
    method = _sepico(start_step=0, class_balanced_crops=4).build(student, seed=0)
    target = _batch(1, H=48, W=64)
    losses = method.losses(student, _batch(0), target, step=0)
    assert {"source.contrast", "target.contrast", "mix.ce"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("strong_source", [True, False])
def test_source_pass_sees_the_weak_image_only_when_asked(strong_source):
    student = _student()
    method = _sepico(start_step=0, strong_source=strong_source).build(student, seed=0)
    seen = []
    forward = student.forward
    student.forward = lambda image, **kw: seen.append(image) or forward(image, **kw)  # after the teacher copy
    source = _batch(0)
    method.losses(student, source, _batch(1), step=0)
    assert torch.equal(seen[0], source["image"]) != strong_source
