"""Streaming shards from an S3 server through the reader pipeline against a raw boto3 download of the same bytes.

    .venv/bin/python tests/benchmarks/s3_read.py [--shards 12] [--repeats 7] [--profile]

Starts moto's S3 server on loopback, writes N shards of about 8 MB (samples of incompressible noise images,
0.7 MB PNG each, with a label and json, by uda_dist.data.schema), uploads them, then measures side by side,
in alternating order, R repeats (medians printed, and the median of the per-repeat ratios to raw boto3):
  raw boto3        get_object(...)["Body"].read() of every shard (the network/server ceiling)
  plain handler    webdataset's tar pipeline over s3:// with a gopen handler returning boto3's body as is
  uda_dist handler the same pipeline with uda_dist.data.s3's handler (the one training uses)
  local files      the same pipeline over local copies (the tar-parsing ceiling)
and the decode throughput of one core (schema.decode_sample on samples held in memory). --profile prints
where the time goes in the two s3 pipelines (cProfile, top functions by own time).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

import numpy as np
import webdataset as wds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers import moto_server  # noqa: E402
from uda_dist.data import s3, schema  # noqa: E402

BUCKET = "bench"  # moto refuses bucket names shorter than 3 characters


def write_shards(folder: str, num_shards: int) -> tuple[schema.Manifest, list[dict]]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(num_shards * 11):
        image = rng.integers(0, 256, (384, 640, 3), dtype=np.uint8)
        label = rng.integers(0, schema.NUM_CLASSES, (384, 640), dtype=np.uint8) // 4 * 4
        samples.append(schema.encode_sample(f"b{i:05d}", image, label, {}))
    manifest = schema.write_shards(samples, folder, dataset="bench", split="train", labeled=True, max_per_shard=11)
    s3.upload_files([(url, f"s3://{BUCKET}/{os.path.basename(url)}") for url in manifest.urls()])
    return manifest, samples


def plain_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    bucket, key = s3.split_url(url)
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"]


def raw_boto3(urls: list[str]) -> tuple[int, int]:
    total = 0
    for url in urls:
        bucket, key = s3.split_url(url)
        total += len(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    return total, 0


def pipeline(urls: list[str]) -> tuple[int, int]:
    count = total = 0
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        count += 1
        total += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    return total, count


def with_handler(handler, run):
    def go(urls: list[str]) -> tuple[int, int]:
        from webdataset.gopen import gopen_schemes

        gopen_schemes["s3"] = handler
        return run(urls)
    return go


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(run, urls: list[str], nbytes: int, server: int) -> tuple[float, float, float, float]:
    """(MB/s, samples/s, CPU seconds per wall second of this process, of the server)."""
    start, cpu, server_cpu = time.perf_counter(), time.process_time(), server_cpu_seconds(server)
    _, count = run(urls)
    seconds = time.perf_counter() - start
    return (nbytes / seconds / 1e6, count / seconds, (time.process_time() - cpu) / seconds,
            (server_cpu_seconds(server) - server_cpu) / seconds)


def decode_rate(samples: list[dict]) -> tuple[float, float]:
    nbytes = sum(len(v) for s in samples for k, v in s.items() if not k.startswith("__"))
    start = time.perf_counter()
    for sample in samples:
        schema.decode_sample(sample)
    seconds = time.perf_counter() - start
    return nbytes / seconds / 1e6, len(samples) / seconds


def profile(name: str, run, urls: list[str]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run(urls)
    profiler.disable()
    print(f"\n--- profile: {name} (top 12 by own time) ---")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with moto_server(BUCKET) as (_, server), tempfile.TemporaryDirectory() as folder:
        manifest, samples = write_shards(folder, args.shards)
        local = manifest.urls()
        remote = [f"s3://{BUCKET}/{os.path.basename(u)}" for u in local]
        nbytes = sum(os.path.getsize(u) for u in local)
        runs = {"raw boto3": (raw_boto3, remote), "plain handler": (with_handler(plain_gopen, pipeline), remote),
                "uda_dist handler": (with_handler(s3.gopen_s3, pipeline), remote), "local files": (pipeline, local)}
        rates: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in runs}
        for repeat in range(args.repeats):
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
            for name in order:
                rates[name].append(measure(*runs[name], nbytes, server.pid))
        report(rates, decode_rate(samples[:40]), nbytes, len(local), len(samples))
        if args.profile:
            profile("plain handler", *runs["plain handler"])
            profile("uda_dist handler", *runs["uda_dist handler"])


def report(rates: dict, decode: tuple[float, float], nbytes: int, num_shards: int, num_samples: int) -> None:
    """Medians over the repeats; the ratio to raw boto3 is the median of the per-repeat ratios (each
    repeat runs every reader once, back to back, so the ratio is measured side by side)."""
    print(f"{num_shards} shards, {num_samples} samples, {nbytes / 1e6:.1f} MB; moto_server on loopback; "
          f"{os.cpu_count()} cores; medians of {len(rates['raw boto3'])} repeats")
    print(f"{'reader':<18} {'MB/s':>7} {'samples/s':>10} {'vs raw boto3':>13} {'client CPU':>11} {'server CPU':>11}")
    raw = [r[0] for r in rates["raw boto3"]]
    for name, runs in rates.items():
        mbs, sps, cpu, server = (float(np.median([r[i] for r in runs])) for i in range(4))
        ratio = float(np.median([r[0] / base for r, base in zip(runs, raw)]))
        print(f"{name:<18} {mbs:>7.1f} {sps if sps else float('nan'):>10.1f} {ratio:>12.0%} {cpu:>10.0%} "
              f"{server:>10.0%}")
    print(f"{'decode, one core':<18} {decode[0]:>7.1f} {decode[1]:>10.1f}")


if __name__ == "__main__":
    main()
