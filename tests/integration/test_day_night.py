"""SePiCo's Cityscapes -> Dark Zurich day/night pseudo-label fusion, end to end on a tiny Dark Zurich tree: night
train images built with their daytime pairs (corresp/), the pair given the image's augmentation, the fused
pseudo-labels and the class prior, and a run that trains on them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shards import check
from shards.cli import main as shards_main
from tests import dataset_trees as trees
from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.data import reading, schema
from uda_dist.data.reading import BadDataError
from uda_dist.data.webdataset import LoaderConfig, train_loader
from uda_dist.losses.segmentation import cross_entropy
from uda_dist.loop import train_loop
from uda_dist.methods.labelers import DayNightConfig, fuse_day_night, log_frequency_weights
from uda_dist.methods.self_training import SelfTrainingConfig
from uda_dist.model.segmentor import ModelConfig, build_segmentor
from uda_dist.recipes.real import CITYSCAPES_CLASS_FREQUENCY, cs_to_darkzurich_sepico_daformer
from uda_dist.recipes.synthetic import synthetic_self_training


@pytest.fixture(scope="module")
def dz(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dark_zurich"))
    return root, trees.make_darkzurich_unpacked_tree(root, np.random.default_rng(3))


def _build(root, out, *extra):
    return shards_main(["build", "--layout", "darkzurich", "--root", root, "--split", "train", "--condition",
                        "night", "--out", str(out), "--workers", "1", "--samples-per-shard", "2", "--no-labels",
                        *extra])


def _resized(image, hw):
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR)) if image.shape[:2] != hw else image


def test_night_train_builds_with_its_day_pairs_and_verifies(dz, tmp_path, capsys):
    root, tree = dz
    assert _build(root, tmp_path / "paired", "--day-pairs", "--resize", "24", "40") == 0
    location = str(tmp_path / "paired" / schema.manifest_name("darkzurich-night", "train"))
    manifest = schema.read_manifest(location)
    assert manifest.extra_members == ("day",) and manifest.num_samples == 3
    raws = list(reading.read_samples([{"url": u} for u in manifest.urls()], reading.BadData("fail")))
    for raw in raws:
        night = tree[("train", "night")][raw["__key__"]].image
        day = tree[("train", "day")][trees.DARKZURICH_DAY_PAIRS[raw["__key__"]]].image
        image, _, meta = reading.decoded(raw, labeled=False)
        np.testing.assert_array_equal(schema.decode_day(raw, (24, 40)),
                                      _resized(_resized(day, night.shape[:2]), (24, 40)))
        assert image.shape == (24, 40, 3) and meta["day_relpath"].startswith("rgb_anon/train/day/")
    assert check.verify(location, workers=1) == []
    assert _build(root, tmp_path / "plain") == 0  # without --day-pairs: no day member, a manifest as before
    plain = tmp_path / "plain" / schema.manifest_name("darkzurich-night", "train")
    assert "extra_members" not in plain.read_text() and schema.read_manifest(str(plain)).extra_members == ()
    capsys.readouterr()
    assert shards_main(["build", "--layout", "darkzurich", "--root", root, "--split", "val", "--out",
                        str(tmp_path / "val"), "--day-pairs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "day pairs exist for Dark Zurich's night train images only" in err


def _paired_split(folder, offset: int):
    """Six random images whose day pair is the image itself plus ``offset`` (no overflow), with the day member."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        image = rng.integers(0, 200, (20 + 2 * i, 30, 3), dtype=np.uint8)
        samples.append(schema.encode_sample(f"n{i}", image, None, {}, day_HW3=image + np.uint8(offset)))
    return schema.write_shards(samples, str(folder), dataset="pairs", split="train", labeled=False,
                               max_per_shard=3, extra_members=("day",))


def test_the_day_pair_gets_the_night_image_s_resize_crop_and_flip(tmp_path):
    manifest = _paired_split(tmp_path, offset=0)
    cfg = LoaderConfig(resize=(24, 36), scale_range=(0.5, 2.0), crop_size=(16, 16), flip=True, num_workers=0,
                       batch_size=2, epoch_batches=6, shuffle_buffer=0)
    paired = list(train_loader(manifest, cfg=cfg, labeled=False, seed=4, day_pairs=True))
    alone = list(train_loader(manifest, cfg=cfg, labeled=False, seed=4))
    assert len(paired) == 6 and all("day_image" not in batch for batch in alone)
    for with_day, without in zip(paired, alone):  # the same draws with or without the pair
        assert torch.equal(with_day["image"], without["image"]) and with_day["key"] == without["key"]
        assert torch.equal(with_day["day_image"], with_day["image"])
    plain = schema.write_shards([schema.encode_sample("n0", np.zeros((8, 8, 3), np.uint8), None, {})],
                                str(tmp_path / "plain"), dataset="plain", split="train", labeled=False)
    with pytest.raises(BadDataError, match="sample 'n0' of .*plain-train-000000.tar is unusable: .*expected one "
                                           "paired day image member"):
        next(iter(train_loader(plain, cfg=cfg, labeled=False, seed=0, day_pairs=True)))


def test_the_fusion_is_the_reference_s_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    day, night = (torch.softmax(torch.randn(2, 19, 3, 4, generator=g) * 3, dim=1) for _ in range(2))
    weight_K = torch.rand(19, generator=g) + 0.5
    cfg = DayNightConfig(enabled=True)
    fused = fuse_day_night(day, night, cfg=cfg, class_weight_K=weight_K)
    for k in range(19):
        if k in (0, 1, 2, 3, 4, 8, 9, 10):  # road .. fence, vegetation .. sky
            w = torch.where(day[:, k] > 0.4, 0.8, 0.2)
            want = (w * day[:, k] + (1 - w) * night[:, k]) * weight_K[k]
        else:
            want = night[:, k] * weight_K[k]
        torch.testing.assert_close(fused[:, k], want)
    assert torch.equal(fuse_day_night(day, night, cfg=DayNightConfig(classes=())), night)


def test_the_class_prior_is_the_log_frequency_weighting():
    weights = np.array(log_frequency_weights(CITYSCAPES_CLASS_FREQUENCY, spread=0.05))
    log_f = np.log(CITYSCAPES_CLASS_FREQUENCY)
    np.testing.assert_allclose(weights, (log_f.mean() - log_f) / log_f.std(ddof=1) * 0.05 + 1.0, rtol=1e-12)
    assert weights[0] < 1 < weights[17] and weights.argmin() == 0 and weights.argmax() == 17  # road, motorcycle
    recipe = cs_to_darkzurich_sepico_daformer()
    assert recipe.method.class_weight == tuple(weights) and recipe.method.day_night.enabled
    assert recipe.method.reads_day_pairs and recipe.method.class_balanced_crops == 10


def _student():
    torch.manual_seed(0)
    return build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16))


@pytest.mark.parametrize("day_ratio", [1.0, 0.0])
def test_pseudo_labels_follow_the_day_image_as_far_as_the_fusion_weighs_it(day_ratio):
    student = _student()
    cfg = SelfTrainingConfig(day_night=DayNightConfig(enabled=True, day_ratio=day_ratio, day_confidence=0.0,
                                                      classes=tuple(range(19))), pseudo_threshold=0.1)
    method = cfg.build(student, seed=0)
    g = torch.Generator().manual_seed(1)
    night, day = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    label, _, _, log = method.target_pseudo_labels({"image": night, "day_image": day})
    followed = method.teacher_view(day if day_ratio else night).logits_BKHW
    assert torch.equal(label, followed.argmax(dim=1))
    share = (torch.softmax(followed.float(), dim=1).amax(dim=1) >= 0.1).float().mean()
    torch.testing.assert_close(log["pseudo.confident_ratio"], share)


def test_the_class_balanced_crop_cuts_the_day_pair_at_the_night_image_s_windows():
    student = _student()
    method = SelfTrainingConfig(class_balanced_crops=4, day_night=DayNightConfig(enabled=True)).build(student, seed=0)
    image = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    cropped = method.class_balanced_target({"image": image, "day_image": image + 1.0}, size=(32, 32))
    assert cropped["image"].shape == cropped["day_image"].shape == (2, 3, 32, 32)
    assert torch.equal(cropped["day_image"], cropped["image"] + 1.0)


def test_class_weights_weigh_each_pixel_s_cross_entropy():
    g = torch.Generator().manual_seed(3)
    logits, weight_K = torch.randn(2, 19, 4, 5, generator=g), torch.rand(19, generator=g) + 0.5
    label = torch.randint(0, 19, (2, 4, 5), generator=g)
    label[0, 0] = 255
    ce = F.cross_entropy(logits, label.clamp(max=18), reduction="none") * weight_K[label.clamp(max=18)]
    valid = label != 255
    torch.testing.assert_close(cross_entropy(logits, label, class_weight_K=weight_K), ce[valid].sum() / valid.sum())
    pixel_weight = torch.rand(2, 4, 5, generator=g)
    torch.testing.assert_close(cross_entropy(logits, label, weight_BHW=pixel_weight, class_weight_K=weight_K),
                               (ce * valid * pixel_weight).mean())


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="day_night fuses the teacher's predictions: it needs pseudo_source='teacher'"):
        SelfTrainingConfig(day_night=DayNightConfig(enabled=True), pseudo_source="offline")
    with pytest.raises(ValueError, match="method.class_weight has 3 weights for 19 classes"):
        SelfTrainingConfig(class_weight=(1.0, 1.0, 1.0)).build(_student(), seed=0)
    with pytest.raises(ValueError, match="class_weight must be positive"):
        SelfTrainingConfig(class_weight=(1.0, 0.0))


def test_a_run_trains_on_night_shards_with_fused_pseudo_labels(dz, tiny_data_dir, tmp_path):
    root, _ = dz
    assert _build(root, tmp_path / "dz", "--day-pairs") == 0
    target = tmp_path / "dz" / schema.manifest_name("darkzurich-night", "train")
    weights = ",".join(str(w) for w in log_frequency_weights(CITYSCAPES_CLASS_FREQUENCY, spread=0.05))
    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path / "out")) + [
        f"data.target={target}", "data.loader.crop_size=32,32", "data.loader.target_resize=32,64",
        "data.loader.target_crop_size=32,64", "method.class_balanced_crops=2", "method.day_night.enabled=true",
        f"method.class_weight={weights}", "train.iterations=3", "train.log_every=1", "train.eval_every=0"])
    result = train_loop(cfg)
    assert len(result.losses) == 3
    for entry in result.losses:
        assert np.isfinite(entry["mix.ce"]) and 0 <= entry["pseudo.confident_ratio"] <= 1
