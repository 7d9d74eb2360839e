"""Shared test settings."""


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
