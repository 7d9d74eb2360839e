import os
import socket
import subprocess
import sys
import time

import pytest

from uda_dist.config import apply_overrides
from tests.helpers import tiny_overrides
from uda_dist.recipes.synthetic import synthetic_source_only


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """One small synthetic benchmark shared by the training tests of a session."""
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def tiny_config(tiny_data_dir, tmp_path):
    return apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path / "out")))


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback, in its own process, with a bucket "runs"; the standard AWS environment
    (AWS_ENDPOINT_URL_S3, credentials, region) points this process at it while the fixture lives. Yields that
    environment (for Ray's runtime_env)."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="runs")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.3)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=30)
