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
