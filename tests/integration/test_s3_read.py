"""Shards in S3-compatible storage (moto's server on loopback): read through the same pipeline as local files,
resumed exactly through injected faults, and a short training run streaming its data from the server."""
import multiprocessing
import os

import numpy as np
import pytest
import webdataset as wds

from tests.helpers import tiny_overrides, upload_split
from tests.s3_faults import FaultProxy
from uda_dist.config import apply_overrides
from uda_dist.data import reading, s3, schema
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import LoaderConfig, eval_loader, train_loader
from uda_dist.loop import train_loop
from uda_dist.recipes.synthetic import synthetic_self_training


@pytest.fixture(scope="module")
def big_split(s3_server, tmp_path_factory):
    """12 samples of 256x384 noise (about 0.3 MB each as PNG) in 3 shards, locally and in the bucket."""
    rng = np.random.default_rng(0)
    samples, raw = [], {}
    for i in range(12):
        image = rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)
        label = rng.integers(0, schema.NUM_CLASSES, (256, 384), dtype=np.uint8)
        label[:64] = i % schema.NUM_CLASSES
        samples.append(schema.encode_sample(f"s{i:03d}", image, label, {}))
        raw[f"s{i:03d}"] = (image, label)
    local = schema.write_shards(samples, str(tmp_path_factory.mktemp("big")), dataset="big", split="train",
                                labeled=True, max_per_shard=4)
    return local, schema.read_manifest(upload_split(local, "big")), raw


def members(urls: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def strip(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "__url__"}


def test_s3_shards_read_like_local_ones(big_split):
    local, remote, _ = big_split
    assert remote.shards == local.shards and remote.urls()[0].startswith("s3://runs/big/")
    assert load_manifest(remote.location, None).location == remote.location
    assert [strip(s) for s in members(remote.urls())] == [strip(s) for s in members(local.urls())]


def eval_pass(urls: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    seen = {}
    for batch in eval_loader(urls, cfg=LoaderConfig(eval_batch_size=2, num_workers=0)):
        for key, image, label in zip(batch["key"], batch["image"], batch["label"]):
            assert key not in seen, f"{key} delivered twice"
            seen[key] = ((image * 255).round().byte().permute(1, 2, 0).numpy(), label.byte().numpy())
    return seen


def test_an_epoch_through_cut_and_refused_gets_delivers_every_sample_once(big_split):
    _, remote, raw = big_split
    with FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], cut_every=2, fail_every=5, cut_after=150_000) as proxy:
        seen = eval_pass(remote.urls())
    assert proxy.cuts >= 3 and proxy.failures >= 1, (proxy.cuts, proxy.failures, proxy.gets)
    assert sorted(seen) == sorted(raw)
    for key, (image, label) in seen.items():
        np.testing.assert_array_equal(image, raw[key][0])
        np.testing.assert_array_equal(label, raw[key][1])


def test_sample_ranges_read_exactly_through_cut_gets(big_split):
    local, remote, raw = big_split
    cfg = LoaderConfig(batch_size=1, crop_size=(256, 384), flip=False, cat_max_ratio=1.0, num_workers=0,
                       epoch_batches=8, shuffle_buffer=0, rcs_temperature=0.01, rcs_min_pixels=0)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], cut_every=2, cut_after=100_000) as proxy:
        batches = list(train_loader(remote, cfg=cfg, labeled=True, seed=0))
    assert proxy.cuts >= 3
    for batch in batches:
        key = batch["key"][0]
        np.testing.assert_array_equal((batch["image"][0] * 255).round().byte().permute(1, 2, 0).numpy(), raw[key][0])


def test_a_range_read_across_cut_gets_is_exact(s3_server):
    data = os.urandom(3 << 20)
    s3.write_bytes("s3://runs/ranged", data)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], cut_every=1, cut_after=300_000) as proxy:
        with s3.open_range("s3://runs/ranged", 123_457, 2_000_000) as stream:
            assert stream.read() == data[123_457:2_123_457]
            assert stream.raw.resumes >= 5
    assert proxy.cuts >= 5
    with pytest.raises(OSError, match="s3://runs/ranged .*the server sent 1000"):
        s3.open_range("s3://runs/ranged", len(data) - 1000, 2000).read()


@pytest.mark.parametrize("strip_if_match", [False, True])
def test_an_object_replaced_before_a_resume_is_detected_not_spliced(s3_server, strip_if_match):
    """The object is replaced after the first GET, whose body is then cut: the resuming GET fails on If-Match
    (412), or, from a server that ignores If-Match (the proxy drops it), on the ETag of its response."""
    s3.write_bytes("s3://runs/replaced", os.urandom(1 << 20))
    with FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], cut_every=1, cut_after=200_000,
                    strip_if_match=strip_if_match):
        stream = s3.S3Stream("s3://runs/replaced")
        assert stream.readinto(bytearray(1000)) == 1000
        s3.write_bytes("s3://runs/replaced", os.urandom(1 << 20))
        with pytest.raises(OSError, match="changed while it was read" if strip_if_match else "PreconditionFailed"):
            while stream.readinto(bytearray(1 << 20)):
                pass
        assert stream.pos == 200_000


def _child_client(queue) -> None:
    client = s3.client()
    queue.put(([owner[0] for owner in s3._clients] == [os.getpid()], client is s3.client(), s3.exists("s3://runs/replaced")))


def test_one_lazily_made_client_per_process(s3_server):
    s3.write_bytes("s3://runs/replaced", b"x")
    assert s3.client() is s3.client()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_client, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == (True, True, True)
    child.join(timeout=60)


def test_clear_errors_for_writes_and_missing_objects(s3_server):
    with pytest.raises(ValueError, match="reading only"):
        s3.gopen_s3("s3://runs/x.tar", "wb")
    with pytest.raises(OSError, match="s3://runs/missing.tar"):
        s3.read_bytes("s3://runs/missing.tar")
    with pytest.raises(reading.BadDataError, match="s3://runs/missing.tar"):
        list(eval_loader(["s3://runs/missing.tar"], cfg=LoaderConfig(num_workers=0)))
    with pytest.raises(FileNotFoundError, match="does not exist in the bucket"):
        load_manifest("s3://runs/missing.manifest.json", None)


def test_a_short_run_streams_its_data_from_the_server(s3_server, tiny_data_dir, tmp_path):
    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path)))
    locations = {}
    for name in ("source", "target", "val"):
        manifest = load_manifest(getattr(cfg.data, name), cfg.data.synthetic)
        locations[name] = upload_split(manifest, f"tiny/{name}")
    overrides = [f"data.{name}={url}" for name, url in locations.items()]
    result = train_loop(apply_overrides(cfg, overrides + ["train.iterations=10", "data.loader.num_workers=1"]))
    assert np.isfinite(result.losses[-1]["loss"]) and 0.0 <= result.miou <= 1.0
    assert result.losses[-1]["data.broken_shards"] == 0.0


def test_a_changed_endpoint_gets_a_new_client(s3_server, monkeypatch):
    """Regression: the client was cached per process only, so after one test module's S3 server stopped and
    the next module's started on another port, every request still went to the old port (refused)."""
    first = s3.client()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert s3.client() is not first and s3.client().meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.undo()
    assert s3.client().meta.endpoint_url == s3_server["AWS_ENDPOINT_URL_S3"]
