"""The embedded default data: a procedural street-scene benchmark with a real domain shift, as shards.

Three domains share one layout prior (synthetic_scene.py and synthetic_objects.py, drawn with
synthetic_canvas.py: a perspective street with road, sidewalks, buildings, vegetation, poles, signs,
vehicles, people, labelled with the 19 Cityscapes trainIds) and differ in appearance (synthetic_look.py):
"source" looks rendered like GTA5, "target" looks captured like Cityscapes, "night" looks like Dark
Zurich. Each image is drawn from its own np.random.default_rng(SeedSequence([seed, domain, split, index])),
so images render in any order, and scene i of one domain shares no layout with scene i of another
(independent draws from the same prior).

Every split is written WITH labels (schema.write_shards, labeled=True; datasets "synthetic-<domain>"):
methods treat target train as unlabelled and read its labels only for the oracle upper bound. Shards go
to <cache>/synthetic/<hash of the content fields and GENERATOR_VERSION>/; a generation writes into a
private temporary folder and renames it into place, so concurrent callers never see a partial cache
(the loser of a race discards its copy) and a finished cache is never written again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np

from uda_dist.data import schema
from uda_dist.data.synthetic_look import NIGHT, SOURCE, TARGET, Style, render_look
from uda_dist.data.synthetic_objects import place_objects
from uda_dist.data.synthetic_scene import draw_background

GENERATOR_VERSION = 2  # bump whenever the shards or manifests change (2: per-sample index): part of the cache folder name
DOMAINS = ("source", "target", "night")
SPLITS = ("train", "val")
PREFIX = "synthetic:"
CACHE_ENV = "UDA_DIST_CACHE"
_STYLES = {"source": SOURCE, "target": TARGET, "night": NIGHT}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """The synthetic benchmark's content (all fields but cache_dir select the cached copy)."""

    seed: int = 0
    """Benchmark seed; image i of a domain and split is drawn from (seed, domain, split, i)."""
    height: int = 128
    """Image height in pixels."""
    width: int = 256
    """Image width in pixels."""
    num_train: int = 600
    """Images per domain in the train split."""
    num_val: int = 100
    """Images per domain in the val split."""
    shift: float = 0.5
    """Strength of the target/night appearance shift in [0, 1]: 0 renders every domain like the source."""
    cache_dir: str = ""
    """Cache root; "" = $UDA_DIST_CACHE, else ~/.cache/uda_dist. Shards go to <root>/synthetic/<hash>/."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"synthetic.seed must be >= 0, got {self.seed}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"synthetic.height and width must be >= 32 pixels, got {self.height}x{self.width}")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"synthetic.num_train and num_val must be >= 1, got {self.num_train}, {self.num_val}")
        if not 0.0 <= self.shift <= 1.0:
            raise ValueError(f"synthetic.shift must lie in [0, 1], got {self.shift}")

    def count(self, split: str) -> int:
        return self.num_train if split == "train" else self.num_val

    def content_hash(self) -> str:
        """Hash of everything that changes the shards' bytes."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cache_dir"}
        fields.update(shift=float(self.shift), version=GENERATOR_VERSION)  # shift=1 and shift=1.0: one content
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self) -> str:
        """Where this content's shards and manifests live."""
        default = os.path.join(os.path.expanduser("~"), ".cache", "uda_dist")
        root = self.cache_dir or os.environ.get(CACHE_ENV) or default
        return os.path.join(os.path.abspath(root), "synthetic", self.content_hash())


def render_scene(domain: str, index: int, split: str, *, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint8 HxWx3) and label (uint8 HxW trainIds, 255 ignore) of scene index of a domain's split."""
    check_name(domain, split)
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    sequence = np.random.SeedSequence([cfg.seed, DOMAINS.index(domain), SPLITS.index(split), index])
    layout_seq, look_seq = sequence.spawn(2)
    layout_rng = np.random.default_rng(layout_seq)
    canvas, street = draw_background(layout_rng, cfg.height, cfg.width)
    place_objects(canvas, layout_rng, street)
    maps = canvas.finish()
    image = render_look(maps, _style(domain, cfg.shift), np.random.default_rng(look_seq))
    return image, maps.label


@functools.lru_cache(maxsize=16)
def _style(domain: str, shift: float) -> Style:
    return SOURCE.blend(_STYLES[domain], shift)


def ensure_synthetic(cfg: SyntheticConfig) -> dict[str, str]:
    """Generate the benchmark unless cached; {"<domain>/<split>": manifest path} for the six splits."""
    folder = cfg.folder()
    paths = _manifest_paths(folder)
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    total = sum(cfg.count(s) for s in SPLITS) * len(DOMAINS)
    print(f"uda_dist: generating the synthetic benchmark ({total} images, {cfg.height}x{cfg.width}) in {folder}",
          flush=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-", dir=os.path.dirname(folder))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stay on the cache folder after the rename
        start = time.perf_counter()
        _generate(cfg, tmp)
        _write_info(cfg, tmp, time.perf_counter() - start)
        _move_into_place(tmp, folder, paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def resolve_manifest(url: str, cfg: SyntheticConfig) -> str:
    """"synthetic:<domain>/<split>" (the prefix is optional) -> its manifest path, generating if needed."""
    name = url[len(PREFIX):] if url.startswith(PREFIX) else url
    valid = [f"{PREFIX}{d}/{s}" for d in DOMAINS for s in SPLITS]
    if f"{PREFIX}{name}" not in valid:
        raise ValueError(f"unknown synthetic split {url!r}; valid names: {', '.join(valid)}")
    return ensure_synthetic(cfg)[name]


def check_name(domain: str, split: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; valid: {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; valid: {', '.join(SPLITS)}")


def _manifest_paths(folder: str) -> dict[str, str]:
    return {f"{d}/{s}": os.path.join(folder, f"synthetic-{d}-{s}{schema.MANIFEST_SUFFIX}")
            for d in DOMAINS for s in SPLITS}


def _generate(cfg: SyntheticConfig, out_dir: str) -> None:
    """Render and encode in a small process pool (images are independent; order and bytes are kept)."""
    processes = min(2, os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for domain in DOMAINS:
            for split in SPLITS:
                encode = functools.partial(_encode, domain, split, cfg=cfg)
                samples = pool.imap(encode, range(cfg.count(split)), chunksize=8)
                schema.write_shards(samples, out_dir, dataset=f"synthetic-{domain}", split=split,
                                    labeled=True, max_per_shard=100)


def _encode(domain: str, split: str, index: int, *, cfg: SyntheticConfig) -> dict:
    image, label = render_scene(domain, index, split, cfg=cfg)
    meta = {"dataset": f"synthetic-{domain}", "split": split, "path": f"{PREFIX}{domain}/{split}/{index}"}
    return schema.encode_sample(f"{domain}-{split}-{index:06d}", image, label, meta)


def _write_info(cfg: SyntheticConfig, out_dir: str, seconds: float) -> None:
    """A human-readable note of what the folder holds (not read by the library)."""
    info = dict(dataclasses.asdict(cfg), generator_version=GENERATOR_VERSION, seconds=round(seconds, 1))
    info.pop("cache_dir")
    with open(os.path.join(out_dir, "synthetic.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def _move_into_place(tmp: str, folder: str, paths: dict[str, str]) -> None:
    """Rename the finished folder into place; if another process got there first, keep theirs. A folder
    left incomplete (say, a manifest deleted by hand) is moved aside and removed first."""
    if os.path.isdir(folder) and not all(os.path.exists(p) for p in paths.values()):
        stale = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-stale-", dir=os.path.dirname(folder))
        try:
            os.rename(folder, os.path.join(stale, "old"))
        except FileNotFoundError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not all(os.path.exists(p) for p in paths.values()):
            raise
