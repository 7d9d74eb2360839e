"""Where a run's data comes from: the source, target and validation splits as manifests.

A split is named by a manifest location (a local path or an s3://bucket/prefix/ URL of a ``*.manifest.json``
written by ``python -m shards build``; its shards are read from next to it), or by
``synthetic:<domain>/<split>`` for the project's embedded benchmark, which is generated (once, then cached)
from ``data.synthetic``.
"""
from __future__ import annotations

import dataclasses
import os

from uda_dist.data import s3
from uda_dist.data.schema import DAY, MANIFEST_SUFFIX, Manifest, read_manifest
from uda_dist.errors import ConfigError
from uda_dist.data.synthetic import SyntheticConfig, resolve_manifest
from uda_dist.data.webdataset import LoaderConfig

SYNTHETIC_PREFIX = "synthetic:"
SPLIT_SUFFIX = "-pseudo"
"""The split name of a pseudo-label split: <split>-pseudo (written by uda_dist.pseudo_labels)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    source: str = "synthetic:source/train"
    """Labelled source split: a manifest path or s3:// URL, or synthetic:<domain>/<split>."""
    target: str = "synthetic:target/train"
    """Unlabelled target split (its ground truth, if any, is never read by adaptation methods; a pseudo-label
    split's labels are, with method.pseudo_source=offline)."""
    val: str = "synthetic:target/val"
    """Labelled target validation split (reported mIoU)."""
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)

    def __post_init__(self) -> None:
        for name in ("source", "target", "val"):
            if not getattr(self, name):
                raise ValueError(f"data.{name} must name a manifest or synthetic:<domain>/<split>")


def load_manifest(location: str, synthetic: SyntheticConfig) -> Manifest:
    """Read the manifest of a split, generating the synthetic benchmark first when it is named."""
    if location.startswith(SYNTHETIC_PREFIX):
        location = resolve_manifest(location, synthetic)
    if location.startswith("s3://"):
        if not s3.exists(location):
            raise FileNotFoundError(f"manifest {location!r} does not exist in the bucket (endpoint from "
                                    f"AWS_ENDPOINT_URL_S3): write it with `python -m shards build ... --out s3://...`")
    elif not os.path.isfile(location):
        raise FileNotFoundError(f"manifest {location!r} does not exist: point data.source/target/val at a "
                                f"*{MANIFEST_SUFFIX} written by the shard builder, or use synthetic:<domain>/<split>")
    return read_manifest(location)


def check_pseudo_label_target(target: Manifest, location: str) -> None:
    """A method that reads the target's labels (offline pseudo-labels) must be given a pseudo-label split,
    never the target's own ground truth: ConfigError otherwise."""
    if not target.split.endswith(SPLIT_SUFFIX):
        raise ConfigError(f"method.pseudo_source='offline' trains on offline pseudo-labels, but data.target "
                          f"({location}) is the split {target.split!r}, not a pseudo-label split: point data.target "
                          f"at a *{SPLIT_SUFFIX}.manifest.json written by a run with label.enabled=true, or use a "
                          f"staged run's labels_from with labels_as='target'")


def check_day_pairs(target: Manifest, location: str) -> None:
    """The day/night pseudo-label fusion reads each night image's daytime pair: data.target must be a split
    built with them (its manifest lists the "day" member); ConfigError otherwise."""
    if DAY not in target.extra_members:
        raise ConfigError(f"method.day_night fuses each night image's daytime pair, but data.target ({location}) "
                          f"holds no day images: build it with python -m shards build --layout darkzurich "
                          f"--split train --condition night --day-pairs")
