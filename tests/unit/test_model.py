"""Segmentor: shapes of both heads, projection norm, output stride, local pretrained weights, param groups."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from uda_dist.model.backbone import Backbone, load_backbone_weights, timm  # timm after the torchvision fix
from uda_dist.model.segmentor import ModelConfig, Segmentor, build_segmentor

SMALL = dict(embed_dim=16, num_classes=5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "backbone, head, proj_dim, stride",
    [
        ("test_resnet", "daformer", 0, 4),
        ("test_resnet", "deeplabv2", 32, 32),
        ("test_convnext", "daformer", 32, 4),
        ("pvt_v2_b0", "daformer", 32, 4),
        ("resnet18", "deeplabv2", 0, 32),
    ],
)
def test_output_shapes(backbone, head, proj_dim, stride):
    """proj_dim >= 32: after the final ReLU a pixel is the zero vector with chance about 2**-proj_dim."""
    model = build_segmentor(ModelConfig(backbone=backbone, head=head, proj_dim=proj_dim, **SMALL))
    image_B3HW = torch.rand(2, 3, 64, 128)
    out = model(image_B3HW, with_proj=True)
    assert model.head_stride == stride
    assert out.logits_BKhw.shape == (2, 5, 64 // stride, 128 // stride)
    if proj_dim:
        assert out.proj_BDhw.shape == (2, proj_dim, 64 // stride, 128 // stride)
        torch.testing.assert_close(out.proj_BDhw.norm(dim=1), torch.ones(2, 64 // stride, 128 // stride))
    else:
        assert out.proj_BDhw is None
    assert model(image_B3HW).proj_BDhw is None  # not asked
    model.eval()
    assert model.segment(image_B3HW).shape == (2, 5, 64, 128)


def test_output_stride_8_resnet():
    model = build_segmentor(ModelConfig(backbone="resnet18", head="deeplabv2", output_stride=8, proj_dim=8, **SMALL))
    out = model(torch.rand(1, 3, 64, 96), with_proj=True)
    assert model.backbone.strides == (4, 8, 8, 8)
    assert out.logits_BKhw.shape[-2:] == (8, 12) and out.proj_BDhw.shape[-2:] == (8, 12)


@pytest.mark.parametrize("head, hidden, expected", [("daformer", 0, 240), ("daformer", 16, 16), ("deeplabv2", 0, 512)])
def test_projection_hidden_width(head, hidden, expected):
    """The reference width (resnet10t's levels 64+128+256+512 concatenated, // 4 = 240; DeepLab-V2: layer4's
    512) or the given one."""
    model = build_segmentor(ModelConfig(backbone="resnet10t", head=head, proj_dim=8, proj_hidden=hidden, **SMALL))
    convs = [m for m in model.proj_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(convs[0].in_channels, expected), (expected, 8)]
    assert convs[0].in_channels == (960 if head == "daformer" else 512)


@pytest.mark.parametrize("train", [True, False])
def test_projection_head_convolves_each_level_before_resizing_as_the_concatenation_would(train):
    """The first 1x1 conv on each level at its own grid, resized and summed, equals the conv of the resized
    concatenation (the reference's order), forward and backward, in train (batch statistics) and eval mode: in
    float64, to round-off."""
    model = build_segmentor(ModelConfig(backbone="resnet10t", head="daformer", proj_dim=8, proj_hidden=16, **SMALL))
    head = model.proj_head.train(train).double()
    feats = [torch.randn(2, c, 24 // 2 ** i, 40 // 2 ** i, dtype=torch.float64, requires_grad=True)
             for i, c in enumerate((64, 128, 256, 512))]
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    fast, reference = head(feats), head.reference_forward(feats)
    assert fast.shape == (2, 8, 24, 40)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)
    weight = torch.randn_like(fast)
    grads = torch.autograd.grad((fast * weight).sum(), [*feats, *head.parameters()])
    reference_grads = torch.autograd.grad((reference * weight).sum(), [*feats, *head.parameters()])
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-10, atol=1e-10)


def test_output_stride_unsupported_is_a_clear_error():
    with pytest.raises(ValueError, match="pvt_v2_b0.*does not support output_stride=8"):
        build_segmentor(ModelConfig(backbone="pvt_v2_b0", output_stride=8))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(head="segformer"), r"head must be one of \['daformer', 'deeplabv2'\]"),
        (dict(proj_dim=-1), "proj_dim must be >= 0"),
        (dict(proj_hidden=-1), "proj_hidden must be >= 0"),
        (dict(embed_dim=0), "embed_dim must be > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(output_stride=4), "output_stride must be 8, 16 or 32"),
        (dict(aspp_dilations=()), "aspp_dilations must be a non-empty tuple"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm model 'not_a_model'"):
        build_segmentor(ModelConfig(backbone="not_a_model"))


@pytest.mark.parametrize("backbone, suffix", [("test_resnet", ".pth"), ("test_convnext", ".safetensors")])
def test_pretrained_classifier_checkpoint_loads(tmp_path, backbone, suffix):
    """A classifier state dict of the same architecture loads (test_convnext: features_only renames keys)."""
    classifier = timm.create_model(backbone, pretrained=False)
    saved = {k: v.clone() for k, v in classifier.state_dict().items()}
    path = str(tmp_path / f"weights{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(saved, path)
    else:
        torch.save({"state_dict": saved}, path)
    model = build_segmentor(ModelConfig(backbone=backbone, pretrained=path, **SMALL))
    report = model.load_report
    assert report.loaded == len(model.backbone.model.state_dict()) and report.missing == report.mismatched == 0
    assert report.unexpected > 0  # the classifier
    for name, param in model.backbone.named_parameters():
        original = name.removeprefix("model.").replace("stages_", "stages.").replace("stem_", "stem.")
        torch.testing.assert_close(param, saved[original], rtol=0, atol=0)


def test_pretrained_missing_file_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=f"pretrained weight file '{missing}' does not exist"):
        build_segmentor(ModelConfig(backbone="test_resnet", pretrained=missing))


def test_pretrained_other_architecture_is_a_clear_error(tmp_path):
    path = str(tmp_path / "convnext.pth")
    torch.save(timm.create_model("test_convnext", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=f"'{path}' does not fit backbone 'test_resnet': only 0 of"):
        load_backbone_weights(Backbone("test_resnet"), path)


@pytest.mark.parametrize("backbone, head", [("test_convnext", "daformer"), ("test_resnet", "deeplabv2")])
def test_param_groups_partition_trainable_parameters(backbone, head):
    model = build_segmentor(ModelConfig(backbone=backbone, head=head, proj_dim=8, **SMALL))
    next(model.backbone.model.children()).requires_grad_(False)  # a frozen stem must be in no group
    groups = model.param_groups(lr=1e-3, weight_decay=0.01, head_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 1e-3 and by_name["backbone"]["weight_decay"] == 0.01
    assert by_name["head"]["lr"] == pytest.approx(1e-2) and by_name["head_no_decay"]["lr"] == pytest.approx(1e-2)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))]
    assert norms and all(id(p) in no_decay for m in norms for p in m.parameters() if p.requires_grad)
    head_ids = {id(p) for m in (model.decode_head, model.proj_head) for p in m.parameters()}
    assert head_ids == {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]}


@pytest.mark.parametrize("backbone, head", [("test_convnext", "daformer"), ("test_resnet", "deeplabv2")])
def test_gradients_reach_backbone_and_heads(backbone, head):
    model = build_segmentor(ModelConfig(backbone=backbone, head=head, proj_dim=8, drop_path=0.1, **SMALL))
    out = model(torch.rand(2, 3, 64, 64), with_proj=True)
    (out.logits_BKhw.square().mean() + out.proj_BDhw[:, 0].mean()).backward()
    for part in (model.backbone, model.decode_head, model.proj_head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_config_is_frozen_and_normalises_dilations():
    cfg = ModelConfig(fusion_dilations=[1, 6])
    assert cfg.fusion_dilations == (1, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.head = "deeplabv2"


@pytest.mark.parametrize(
    "cfg, stride",
    [
        (ModelConfig(backbone="pvt_v2_b5", head="daformer", proj_dim=512), 4),
        (ModelConfig(backbone="resnet101", head="deeplabv2", output_stride=8, proj_dim=512), 8),
    ],
    ids=["daformer_pvt_v2_b5", "deeplabv2_resnet101_os8"],
)
def test_real_scale_recipes_construct_and_run(cfg, stride):
    model = Segmentor(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), with_proj=True)
    assert out.logits_BKhw.shape == (1, 19, 64 // stride, 64 // stride)
    assert out.proj_BDhw.shape == (1, 512, 64 // stride, 64 // stride)


def test_features_follow_the_image_memory_format():
    """Regression: timm ConvNeXt emits channels_last maps, which made the DAFormer head 1.7x slower on CPU."""
    backbone = Backbone("test_convnext")
    image_B3HW = torch.rand(1, 3, 32, 32)
    assert all(f.is_contiguous() for f in backbone(image_B3HW))
    channels_last = image_B3HW.contiguous(memory_format=torch.channels_last)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in backbone(channels_last))


def test_init_weights_warm_start_keeps_fresh_projection_head(tmp_path):

    cfg = ModelConfig(backbone="resnet10t", embed_dim=16)
    torch.manual_seed(0)
    warm = build_segmentor(cfg)
    path = str(tmp_path / "student.pt")
    torch.save(warm.state_dict(), path)
    torch.manual_seed(1)
    started = build_segmentor(dataclasses.replace(cfg, init_weights=path, proj_dim=8))
    for name, tensor in warm.state_dict().items():
        assert torch.equal(started.state_dict()[name], tensor), name
    assert started.proj_head is not None


def test_init_weights_errors_name_the_problem(tmp_path):

    with pytest.raises(FileNotFoundError, match="init_weights"):
        build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16, init_weights=str(tmp_path / "nope.pt")))
    path = str(tmp_path / "other.pt")
    torch.save(build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=8)).state_dict(), path)
    with pytest.raises(ValueError, match="different shape"):
        build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16, init_weights=path))


@pytest.mark.parametrize("head, fused_channels", [("daformer", 16), ("deeplabv2", None)])
def test_features_and_fused_feature_when_asked(head, fused_channels):
    """with_features returns the encoder levels (finest first) and the feature the classifier reads: DAFormer's
    fused embedding, DeepLab-V2's last level; the logits are the classifier applied to that fused feature."""
    model = build_segmentor(ModelConfig(backbone="test_resnet", head=head, **SMALL)).eval()
    image_B3HW = torch.rand(2, 3, 64, 128)
    out = model(image_B3HW, with_features=True)
    assert [f.shape[1] for f in out.features] == list(model.backbone.channels)
    assert [f.shape[-1] for f in out.features] == [128 // s for s in model.backbone.strides]
    expected_C = fused_channels or model.backbone.channels[-1]
    assert out.fused_BChw.shape == (2, expected_C, *out.logits_BKhw.shape[-2:])
    if head == "deeplabv2":
        assert out.fused_BChw is out.features[-1]
    torch.testing.assert_close(model.decode_head.classify(out.fused_BChw), out.logits_BKhw)
    torch.testing.assert_close(model(image_B3HW).logits_BKhw, out.logits_BKhw)
    plain = model(image_B3HW)
    assert plain.features is None and plain.fused_BChw is None  # not asked


@pytest.mark.parametrize("head", ["daformer", "deeplabv2"])
def test_two_scale_inference_is_the_elementwise_max_of_each_scales_logits(head):
    import torch.nn.functional as F

    from uda_dist.inference import EvalConfig, predict

    model = Segmentor(ModelConfig(backbone="resnet10t", head=head, embed_dim=16, num_classes=5)).eval()
    assert model.fused_channels == model(torch.rand(1, 3, 32, 32), with_features=True).fused_BChw.shape[1]
    image = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        one = model.segment(image)
        small = F.interpolate(image, size=(32, 48), mode="bilinear", align_corners=False)
        half = F.interpolate(model(small).logits_BKhw, size=(64, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(predict(model, image, EvalConfig(), (64, 96)), one.softmax(1))
        torch.testing.assert_close(predict(model, image, EvalConfig(scales=(1.0, 0.5), combine="max"), (64, 96)),
                                   torch.maximum(one, half).softmax(1))
