"""The shard reader: epoch lengths, determinism, per-rank streams, exact evaluation splits."""
import numpy as np
import pytest
import torch

from uda_dist.data import schema
from uda_dist.data.reading import BadDataError
from uda_dist.data.webdataset import LoaderConfig, eval_loader, train_loader

H, W = 16, 24


def write_split(out_dir, n: int, *, labeled: bool = True, max_per_shard: int = 3, size=(H, W)) -> list[str]:
    rng = np.random.default_rng(n)
    samples = []
    for i in range(n):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, schema.NUM_CLASSES, size, dtype=np.uint8) if labeled else None
        samples.append(schema.encode_sample(f"k{i:03d}", image, label, {}))
    return schema.write_shards(samples, str(out_dir), dataset="toy", split="s", labeled=labeled,
                               max_per_shard=max_per_shard).urls()


def train_cfg(**overrides) -> LoaderConfig:
    fields = dict(batch_size=2, crop_size=(8, 12), scale_range=(0.75, 1.5), num_workers=0, epoch_batches=4,
                  shuffle_buffer=4)
    return LoaderConfig(**{**fields, **overrides})


def epoch(loader) -> list[dict]:
    return list(loader)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"] and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        for x, y in zip(a, b))


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("labeled"), 10)


def test_train_batches_have_the_documented_shapes(urls):
    batch = next(iter(train_loader(urls, cfg=train_cfg(), labeled=True, seed=0)))
    assert batch["image"].shape == (2, 3, 8, 12) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].shape == (2, 8, 12) and batch["label"].dtype == torch.int64
    assert len(batch["key"]) == 2 and all(isinstance(k, str) for k in batch["key"])


@pytest.mark.parametrize("num_workers, epoch_batches", [(0, 4), (2, 5)])
def test_train_epoch_has_exactly_epoch_batches(urls, num_workers, epoch_batches):
    loader = train_loader(urls, cfg=train_cfg(num_workers=num_workers, epoch_batches=epoch_batches),
                          labeled=True, seed=0)
    assert len(loader) == epoch_batches
    assert [len(epoch(loader)) for _ in range(2)] == [epoch_batches, epoch_batches]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_stream_is_reproducible_and_each_iteration_is_a_new_epoch(urls, num_workers):
    cfg = train_cfg(num_workers=num_workers)
    first = train_loader(urls, cfg=cfg, labeled=True, seed=3)
    second = train_loader(urls, cfg=cfg, labeled=True, seed=3)
    epoch0, epoch1 = epoch(first), epoch(first)
    assert first.epoch == 1
    assert same_batches(epoch0, epoch(second))
    assert not same_batches(epoch0, epoch1)
    resumed = train_loader(urls, cfg=cfg, labeled=True, seed=3, first_epoch=1)
    assert same_batches(epoch1, epoch(resumed))


def test_ranks_and_seeds_draw_different_streams(urls):
    cfg = train_cfg()
    rank0 = epoch(train_loader(urls, cfg=cfg, labeled=True, seed=3, rank=0, world_size=2))
    rank1 = epoch(train_loader(urls, cfg=cfg, labeled=True, seed=3, rank=1, world_size=2))
    other_seed = epoch(train_loader(urls, cfg=cfg, labeled=True, seed=4, rank=0, world_size=2))
    assert not same_batches(rank0, rank1)
    assert not same_batches(rank0, other_seed)


def test_unlabeled_stream_has_no_label_even_if_the_shard_has_one(urls):
    for batch in train_loader(urls, cfg=train_cfg(epoch_batches=2), labeled=False, seed=0):
        assert set(batch) == {"image", "key", "bad_data"}


def test_labeled_stream_over_unlabeled_shards_names_the_sample(tmp_path):
    urls = write_split(tmp_path, 3, labeled=False)
    with pytest.raises(BadDataError, match="k00.*no 'label.png' member"):
        next(iter(train_loader(urls, cfg=train_cfg(), labeled=True, seed=0)))


def eval_keys(urls, *, rank: int, world_size: int, **cfg) -> tuple[list[str], list[str], int]:
    """(valid keys, padded keys, number of batches) of one rank's evaluation pass."""
    valid, padded, batches = [], [], 0
    for batch in eval_loader(urls, cfg=LoaderConfig(**cfg), rank=rank, world_size=world_size):
        assert batch["image"].shape[-2:] == (H, W) and batch["label"].shape[-2:] == (H, W)
        batches += 1
        for key, ok in zip(batch["key"], batch["valid"].tolist()):
            (valid if ok else padded).append(key)
    return valid, padded, batches


def test_eval_yields_each_sample_once_in_order(urls):
    valid, padded, batches = eval_keys(urls, rank=0, world_size=1, eval_batch_size=4, num_workers=0)
    assert valid == [f"k{i:03d}" for i in range(10)] and padded == [] and batches == 3


@pytest.mark.parametrize("world_size, num_workers", [(2, 0), (3, 2)])
def test_eval_splits_samples_over_ranks_without_overlap(urls, world_size, num_workers):
    results = [eval_keys(urls, rank=r, world_size=world_size, eval_batch_size=2, num_workers=num_workers)
               for r in range(world_size)]
    all_valid = [key for valid, _, _ in results for key in valid]
    assert sorted(all_valid) == [f"k{i:03d}" for i in range(10)]  # each exactly once
    per_rank = -(-10 // world_size)
    assert {len(valid) + len(padded) for valid, padded, _ in results} == {per_rank}
    assert len({batches for _, _, batches in results}) == 1  # every rank runs the same number of steps


def test_eval_requires_labels_and_names_the_sample(tmp_path):
    urls = write_split(tmp_path, 2, labeled=False)
    with pytest.raises(BadDataError, match="'k000'.*no 'label.png' member"):
        list(eval_loader(urls, cfg=LoaderConfig(num_workers=0)))


def test_eval_refuses_to_batch_mixed_sizes(tmp_path):
    urls = write_split(tmp_path / "a", 1) + write_split(tmp_path / "b", 2, size=(H, W + 2))
    with pytest.raises(ValueError, match="eval_batch_size=1"):
        list(eval_loader(urls, cfg=LoaderConfig(eval_batch_size=2, num_workers=0)))
    assert len(list(eval_loader(urls, cfg=LoaderConfig(eval_batch_size=1, num_workers=0)))) == 3


@pytest.mark.parametrize("fields, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(crop_size=(0, 8)), "crop_size"),
    (dict(resize=(8,)), "resize"),
    (dict(target_resize=(8, -1)), "target_resize"),
    (dict(scale_range=(2.0, 1.0)), "low <= high"),
    (dict(scale_range=(0.0, 1.0)), "scale_range"),
    (dict(cat_max_ratio=0.0), "cat_max_ratio"),
    (dict(num_workers=-1), "num_workers"),
])
def test_loader_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LoaderConfig(**fields)


def test_loader_config_stores_pairs_as_tuples():
    cfg = LoaderConfig(crop_size=[8, 12], scale_range=[1, 2], target_resize=[16, 32])
    assert cfg.crop_size == (8, 12) and cfg.scale_range == (1.0, 2.0) and cfg.target_resize == (16, 32)


def test_loader_arguments_are_checked(urls):
    with pytest.raises(ValueError, match="rank"):
        train_loader(urls, cfg=train_cfg(), labeled=True, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="urls"):
        eval_loader(urls[0], cfg=train_cfg())
