"""Shared test settings and parts."""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_overrides(cache_dir: str, out_dir: str) -> list[str]:
    """A run that takes seconds on a CPU: 32x64 images, a tiny backbone, few steps."""
    return [
        f"data.synthetic.cache_dir={cache_dir}", "data.synthetic.height=32", "data.synthetic.width=64",
        "data.synthetic.num_train=24", "data.synthetic.num_val=8",
        "data.loader.crop_size=32,64", "data.loader.scale_range=1,1", "data.loader.num_workers=0",
        "data.loader.batch_size=4", "data.loader.epoch_batches=5",
        "model.backbone=resnet10t", "model.embed_dim=32",
        "optim.warmup_iters=5", "train.iterations=40", "train.log_every=5", f"output_dir={out_dir}",
        "tracking.enabled=false",
    ]


def upload_split(local_manifest, prefix: str) -> str:
    """Upload a local split's shards and manifest under s3://runs/<prefix>/; returns the manifest URL."""
    from uda_dist.data import s3

    pairs = [(url, f"s3://runs/{prefix}/{os.path.basename(url)}") for url in local_manifest.urls()]
    url = f"s3://runs/{prefix}/{os.path.basename(local_manifest.location)}"
    s3.upload_files(pairs + [(local_manifest.location, url)])
    return url


@contextlib.contextmanager
def moto_server(bucket: str):
    """moto's S3 server on loopback, in its own process, with one bucket; the standard AWS environment
    (AWS_ENDPOINT_URL_S3, credentials, region) points this process at it while the context lives. Yields
    (that environment, for Ray's runtime_env; the server's process)."""
    import boto3

    port = free_port()
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    log = tempfile.TemporaryFile()  # the server's own output, shown when it does not start
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError("moto_server did not start; its output:\n"
                                       + log.read().decode(errors="replace")[-4000:])
                time.sleep(0.3)
        yield env, proc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def mlflow_server(folder):
    """`mlflow server` on loopback with a SQLite backend and artifacts under ``folder``, in its own process
    (job execution off: 490 MB instead of 1.6 GB); yields its URL once healthy."""
    import urllib.request

    port = free_port()
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
               f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_same_state(a, b, *, exact: bool = True, path: str = "") -> None:
    """Nested dicts/lists of tensors and numbers are equal: bit for bit, or close (rtol 1e-4, atol 1e-6)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], exact=exact, path=f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, exact=exact, path=f"{path}[{i}]")
    elif torch.is_tensor(a):
        if exact:
            assert torch.equal(a, b), path
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=path)
    else:
        assert a == (b if exact else pytest.approx(b)), path


def for_every_stage(cfg, overrides: list[str]) -> list[str]:
    """A staged run's overrides from a plain run's: keys of its own fields (output_dir, tracking.*, launch.*,
    seed, name) as they are, every other key once per stage (stages.<stage>.<key>)."""
    import dataclasses

    shared = {f.name for f in dataclasses.fields(cfg)}  # "stages": a key of one stage already
    out = []
    for text in overrides:
        if text.partition("=")[0].split(".")[0] in shared:
            out.append(text)
        else:
            out += [f"stages.{stage.name}.{text}" for stage in cfg.stages]
    return out
