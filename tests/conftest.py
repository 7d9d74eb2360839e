
import pytest

from uda_dist.config import apply_overrides
from tests.helpers import mlflow_server as start_mlflow_server, moto_server, tiny_overrides
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
    """moto's S3 server with a bucket "runs" (tests.helpers.moto_server) for the module's tests."""
    with moto_server("runs") as (env, _):
        yield env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend) on loopback for the module's tests; yields its URL."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
