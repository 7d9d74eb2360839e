"""Shared test settings."""
import os


def tiny_overrides(cache_dir: str, out_dir: str) -> list[str]:
    """A run that takes seconds on a CPU: 32x64 images, a tiny backbone, few steps."""
    return [
        f"data.synthetic.cache_dir={cache_dir}", "data.synthetic.height=32", "data.synthetic.width=64",
        "data.synthetic.num_train=24", "data.synthetic.num_val=8",
        "data.loader.crop_size=32,64", "data.loader.scale_range=1,1", "data.loader.num_workers=0",
        "data.loader.batch_size=4", "data.loader.epoch_batches=5",
        "model.backbone=resnet10t", "model.embed_dim=32",
        "optim.warmup_iters=5", "train.iterations=40", "train.log_every=5", f"output_dir={out_dir}",
    ]


def upload_split(local_manifest, prefix: str) -> str:
    """Upload a local split's shards and manifest under s3://runs/<prefix>/; returns the manifest URL."""
    from uda_dist.data import s3

    pairs = [(url, f"s3://runs/{prefix}/{os.path.basename(url)}") for url in local_manifest.urls()]
    url = f"s3://runs/{prefix}/{os.path.basename(local_manifest.location)}"
    s3.upload_files(pairs + [(local_manifest.location, url)])
    return url
