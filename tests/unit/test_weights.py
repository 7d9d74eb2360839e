"""Published weight layouts into timm backbones: SegFormer MiT -> pvt_v2, mmseg ResNetV1c -> resnet*c,
torchvision ResNet -> resnet*. Each mapping is checked by building the reference network in its own module
structure (so its keys arise as the published files have them), loading its state dict through the project's
loader into the timm backbone, and comparing the features; the full-size configs are checked on the meta
device (names and shapes of every tensor, no memory)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from uda_dist.model import weights
from uda_dist.model.backbone import Backbone, load_backbone_weights, match_tensors, timm  # timm after the fix

import torchvision  # noqa: E402  (after uda_dist.model.backbone: its torchvision fix, uda_dist/_compat.py)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ SegFormer's MixVisionTransformer
# Module structure and forward of NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py (dropout and drop
# path left out: they are 0 / identity in eval); the published mit_b*.pth add the ImageNet classifier `head`.

class _DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        return self.dwconv(x.transpose(1, 2).view(B, C, H, W)).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.dwconv, self.act, self.fc2 = nn.Linear(dim, hidden), _DWConv(hidden), nn.GELU(), nn.Linear(
            hidden, dim)

    def forward(self, x, H, W):
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads, self.scale, self.sr_ratio = num_heads, (dim // num_heads) ** -0.5, sr_ratio
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1))
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(B, N, C))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # mit_b*: norm_layer=partial(nn.LayerNorm, eps=1e-6)
        self.attn = _Attention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class _OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class SegFormerMiT(nn.Module):
    """MixVisionTransformer with SegFormer's attribute names: patch_embed1-4, block1-4, norm1-4, head."""

    def __init__(self, embed_dims, depths, num_heads, mlp_ratios, sr_ratios, num_classes: int = 10):
        super().__init__()
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", _OverlapPatchEmbed(
                7 if i == 0 else 3, 4 if i == 0 else 2, 3 if i == 0 else embed_dims[i - 1], embed_dims[i]))
        for i in range(4):
            setattr(self, f"block{i + 1}", nn.ModuleList(
                _Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr_ratios[i]) for _ in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
        self.head = nn.Linear(embed_dims[3], num_classes)

    def forward(self, x):
        outs = []
        for i in range(1, 5):
            x, H, W = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i}")(x).reshape(x.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


# timm's pvt_v2_b0 config (mlp ratios 8, 8, 4, 4; MiT-B0 has 4 throughout, which the mapping does not see)
MIT_AS_PVT_V2_B0 = dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                        mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))
MIT_B5 = dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), num_heads=(1, 2, 5, 8),
              mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1))  # SegFormer's mit_b5


def _perturb(model: nn.Module) -> nn.Module:
    """Every parameter moved off its init (LayerNorm/BN weights off 1, biases off 0), BN statistics random."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(tmp_path, state: dict, name: str = "weights.pth") -> str:
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def _mit_file(tmp_path, **changes) -> tuple[SegFormerMiT, str]:
    reference = _perturb(SegFormerMiT(**MIT_AS_PVT_V2_B0))
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    for key, value in changes.items():
        state.pop(key) if value is None else state.__setitem__(key, value)
    return reference, _save(tmp_path, state, "mit.pth")


def test_segformer_mit_file_gives_segformers_features_in_timm_pvt_v2(tmp_path):
    reference, path = _mit_file(tmp_path)
    backbone = Backbone("pvt_v2_b0").eval()
    report = load_backbone_weights(backbone, path)
    assert report.format == "segformer_mit" and report.loaded == len(backbone.model.state_dict())
    assert report.missing == report.mismatched == 0 and report.unexpected == 2  # head.weight, head.bias
    image = torch.rand(2, 3, 64, 96)  # not square: H and W must not swap
    with torch.no_grad():
        for ours, theirs in zip(backbone(image), reference(image), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_mit_b5_maps_onto_pvt_v2_b5_tensor_for_tensor():
    """The full-size configs (meta device): every MiT-B5 tensor but the classifier has a pvt_v2_b5 tensor of its
    shape and the reverse; the renames agree with timm's own pvt_v2.checkpoint_filter_fn and invert exactly."""
    with torch.device("meta"):
        reference = SegFormerMiT(**MIT_B5, num_classes=1000).state_dict()
        target = Backbone("pvt_v2_b5").model.state_dict()
    converted = weights.to_timm(reference)
    assert converted.format == "segformer_mit" and converted.classifier == ("head.weight", "head.bias")
    match = match_tensors(target, converted.tensors)
    assert (match.missing, match.misshaped, match.unused, match.optional) == ((), (), (), 0)
    assert len(match.matched) == len(target) == len(reference) - 2
    timm_names = timm.models.pvt_v2.checkpoint_filter_fn(dict(reference), None)
    assert set(converted.tensors) == set(timm_names) - {"head.weight", "head.bias"}
    assert all(weights.file_name("segformer_mit", name) == key for name, key in converted.origin.items())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(**{"block2.0.attn.kv.weight": None}),
         r"1 backbone tensor not in the file, first: block2\.0\.attn\.kv\.weight "
         r"\(backbone stages_1\.blocks\.0\.attn\.kv\.weight\)"),
        (dict(**{"block1.0.attn.q.weight": torch.zeros(32, 16)}),
         r"1 file tensor of another shape, first: block1\.0\.attn\.q\.weight \(32, 16\) for "
         r"stages_0\.blocks\.0\.attn\.q\.weight \(32, 32\)"),
        (dict(**{"block1.0.attn.extra": torch.zeros(3)}),
         r"1 file entry unused \(not the classifier\), first: block1\.0\.attn\.extra"),
    ],
    ids=["missing", "wrong_shape", "extra_entry"],
)
def test_mit_file_that_does_not_fill_the_backbone_is_refused_naming_the_key(tmp_path, changes, message):
    _, path = _mit_file(tmp_path, **changes)
    with pytest.raises(ValueError, match=rf"'{path}' \(SegFormer MiT names\) does not fit backbone 'pvt_v2_b0': "
                                         + message) as err:
        load_backbone_weights(Backbone("pvt_v2_b0"), path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ ResNets
def _resnet_features(model: nn.Module, image: torch.Tensor, stem: nn.Module) -> list[torch.Tensor]:
    x = model.maxpool(stem(image))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("arch, output_stride", [("resnet18", 32), ("resnet50", 8)])
def test_torchvision_resnet_file_gives_torchvisions_features_in_timm(tmp_path, arch, output_stride):
    """FADA's start: torchvision's resnet (replace_stride_with_dilation=[False, True, True] at OS 8) is timm's
    plain-stem resnet at output_stride=8. The file lacks num_batches_tracked, as files saved before 0.4.1."""
    dilate = [False, True, True] if output_stride == 8 else None
    reference = _perturb(getattr(torchvision.models, arch)(replace_stride_with_dilation=dilate))
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    backbone = Backbone(arch, output_stride=output_stride).eval()
    report = load_backbone_weights(backbone, _save(tmp_path, state))
    assert report.format == "torchvision_resnet" and report.missing == report.mismatched == 0
    assert report.unexpected == 2  # fc.weight, fc.bias
    image = torch.rand(1, 3, 64, 96)
    stem = nn.Sequential(reference.conv1, reference.bn1, reference.relu)
    with torch.no_grad():
        for ours, theirs in zip(backbone(image), _resnet_features(reference, image, stem), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


class MMSegResNetV1c(nn.Module):
    """mmseg's ResNetV1c module structure (mmseg/models/backbones/resnet.py, deep_stem=True, stem_channels=64):
    ``stem`` = Sequential(conv 3->32 s2, BN, ReLU, conv 32->32, BN, ReLU, conv 32->64, BN, ReLU), the max-pool,
    then layers of pytorch-style Bottlenecks named conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/1 (torchvision's
    layers are those: the same names and strides, and replace_stride_with_dilation gives the first block of
    layer3/layer4 dilation 1/2, as mmseg's dilations (1, 1, 2, 4) with contract_dilation=True do)."""

    def __init__(self, arch: str = "resnet50", dilated: bool = True):
        super().__init__()
        def conv(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.stem = nn.Sequential(conv(3, 32, 2), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                  conv(32, 32), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                  conv(32, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        body = getattr(torchvision.models, arch)(replace_stride_with_dilation=[False, dilated, dilated])
        self.layer1, self.layer2, self.layer3, self.layer4, self.fc = (
            body.layer1, body.layer2, body.layer3, body.layer4, body.fc)


def test_mmseg_resnet_v1c_file_gives_mmsegs_features_in_timm_resnet_c(tmp_path):
    """SePiCo's / DAFormer's DeepLab-V2 start: mmseg's ResNetV1c (stem.0/1/3/4/6/7) into timm's deep-stem
    resnet50c at output_stride=8 (resnet101c is the same with 23 layer3 blocks, checked below on meta)."""
    reference = _perturb(MMSegResNetV1c())
    assert [k for k in reference.state_dict() if k.startswith("stem.") and k.endswith("weight")] == [
        "stem.0.weight", "stem.1.weight", "stem.3.weight", "stem.4.weight", "stem.6.weight", "stem.7.weight"]
    backbone = Backbone("resnet50c", output_stride=8).eval()
    report = load_backbone_weights(backbone, _save(tmp_path, {"state_dict": reference.state_dict()}))
    assert report.format == "mmseg_resnet_v1c" and report.loaded == len(backbone.model.state_dict())
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(backbone(image), _resnet_features(reference, image, reference.stem), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_reference, backbone, fmt", [
    (lambda: torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True]), "resnet101",
     "torchvision_resnet"),
    (lambda: MMSegResNetV1c("resnet101"), "resnet101c", "mmseg_resnet_v1c"),
], ids=["torchvision_resnet101", "mmseg_resnet101_v1c"])
def test_resnet101_files_map_onto_the_recipes_backbones_tensor_for_tensor(make_reference, backbone, fmt):
    with torch.device("meta"):
        reference = make_reference().state_dict()
        target = Backbone(backbone, output_stride=8).model.state_dict()
    converted = weights.to_timm(reference)
    assert converted.format == fmt and converted.classifier == ("fc.weight", "fc.bias")
    match = match_tensors(target, converted.tensors)
    assert (match.missing, match.misshaped, match.unused) == ((), (), ())
    assert all(weights.file_name(fmt, name) == key for name, key in converted.origin.items())


def test_mmseg_file_missing_a_stem_tensor_is_refused_naming_it(tmp_path):
    state = _perturb(MMSegResNetV1c("resnet50", dilated=False)).state_dict()
    del state["stem.7.running_var"]
    path = _save(tmp_path, state)
    with pytest.raises(ValueError, match=r"\(mmseg ResNetV1c names\) does not fit backbone 'resnet50c': 1 backbone "
                                         r"tensor not in the file, first: stem\.7\.running_var \(backbone "
                                         r"bn1\.running_var\)"):
        load_backbone_weights(Backbone("resnet50c"), path)


def test_torchvision_file_into_a_deep_stem_backbone_is_refused(tmp_path):
    path = _save(tmp_path, torchvision.models.resnet18().state_dict())
    with pytest.raises(ValueError, match=r"\(torchvision ResNet names\) does not fit backbone 'resnet18d': "
                                         r"\d+ backbone tensors not in the file, first: conv1\.0\.weight.*"
                                         r"\d+ file entries unused \(not the classifier\), first: conv1\.weight"):
        load_backbone_weights(Backbone("resnet18d"), path)


def test_caffe_deeplab_file_is_refused_with_the_reason(tmp_path):
    """AdaptSegNet's DeepLab_resnet_pretrained_init (ASANet's and DiGA's start): names fit, network does not."""
    state = {f"Scale.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc")}
    state["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(19, 512, 3, 3)
    path = _save(tmp_path, state)
    with pytest.raises(ValueError, match=rf"pretrained weight file '{path}' is DeepLab-V2's Caffe-converted "
                                         r"ResNet-101 .*use torchvision's ImageNet resnet101 file"):
        load_backbone_weights(Backbone("resnet18"), path)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("keys, fmt", [
    (["patch_embed1.proj.weight", "block1.0.attn.q.weight", "norm1.weight", "head.weight"], "segformer_mit"),
    (["stem.0.weight", "stem.1.weight", "layer1.0.conv1.weight", "fc.weight"], "mmseg_resnet_v1c"),
    (["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"], "torchvision_resnet"),
    (["conv1.0.weight", "bn1.weight", "layer1.0.conv1.weight"], "timm"),  # timm's own deep-stem names
    (["patch_embed.proj.weight", "stages.0.blocks.0.attn.q.weight"], "timm"),
])
def test_format_is_recognised_by_its_keys(keys, fmt):
    assert weights.detect_format(keys) == fmt


def test_explicit_format_and_unknown_format():
    state = {"stem.0.weight": torch.zeros(1), "stem.7.bias": torch.zeros(1), "fc.bias": torch.zeros(1)}
    converted = weights.to_timm(state, "mmseg_resnet_v1c")
    assert set(converted.tensors) == {"conv1.0.weight", "bn1.bias"} and converted.classifier == ("fc.bias",)
    assert set(weights.to_timm(state, "timm").tensors) == set(state)
    with pytest.raises(ValueError, match="unknown weight format 'mit'; known: segformer_mit, mmseg_resnet_v1c"):
        weights.to_timm(state, "mit")


def test_real_recipes_name_the_backbone_their_published_file_fits():
    """pvt_v2_b5 <- SegFormer's mit_b5.pth, resnet101c <- mmseg's resnet101_v1c, resnet101 <- torchvision's."""
    from uda_dist.pipeline import PipelineConfig
    from uda_dist.recipes import real

    expected = {"pvt_v2_b5": "weights/mit_b5.pth", "resnet101c": "weights/resnet101c.pth",
                "resnet101": "weights/resnet101-torchvision.pth"}
    names = [n for n in dir(real) if n.startswith(("gta_", "synthia_", "cs_"))]
    recipes = [getattr(real, n)() for n in names]
    models = [s.model for r in recipes for s in (r.stages if isinstance(r, PipelineConfig) else [r])]
    assert models and all(expected[m.backbone] == m.pretrained for m in models)
    fada_like = [r for n, r in zip(names, recipes, strict=True) if any(
        part in n for part in ("fada", "asanet", "diga_deeplabv2"))]  # FADA's DeepLab-V2 and its start
    assert len(fada_like) == 11
    assert all(s.model.backbone == "resnet101" for r in fada_like for s in getattr(r, "stages", [r]))
