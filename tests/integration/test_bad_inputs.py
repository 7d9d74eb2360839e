"""Bad runtime inputs through the command line: each a clear one-line error naming the setting, no
traceback, no hang; files that would run code when loaded are refused unread; a stopped run is marked."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import tiny_overrides
from uda_dist import train
from uda_dist.config import apply_overrides
from uda_dist.errors import CheckpointError
from uda_dist.recipes.synthetic import synthetic_self_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Planted:
    """A pickle that runs a command when unpickled (what a replaced checkpoint or weight file could hold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    torch.save({"state": Planted(marker)}, path)


def assert_each_planted_file_refused(parts, folder, names, marker):
    """Each file ``names`` (relative to the checkpoint ``folder``), replaced in turn by a pickle that would
    run code, is refused unread by load_state with the one-line error naming it; each is put back after."""
    from uda_dist.checkpoint import load_state

    for name in names:
        path = folder / name
        original = path.read_bytes()
        plant(path, marker)
        with pytest.raises(CheckpointError, match=f"not a checkpoint: .*{name}.*posix.system"):
            load_state(parts, str(folder))
        path.write_bytes(original)
    assert not marker.exists()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err and all(n in lines[0] for n in needles), err


@pytest.fixture
def cli(tiny_data_dir, tmp_path, capsys):
    """train.main in this process on the tiny benchmark: (exit code, stderr, seconds)."""
    def run(*overrides, recipe="synthetic_source_only"):
        start = time.monotonic()
        code = train.main(["--recipe", recipe, "--set", *tiny_overrides(tiny_data_dir, str(tmp_path / "out")),
                           *overrides])
        return code, capsys.readouterr().err, time.monotonic() - start
    return run


def test_unreachable_tracking_server_is_one_line_within_seconds(cli):
    code, err, seconds = cli("tracking.enabled=true", f"tracking.uri=http://user:secret@127.0.0.1:{closed_port()}")
    assert_one_line_error(code, err, "tracking.uri http://***@127.0.0.1:", "no tracking server answered")
    assert "secret" not in err and seconds < 60


def test_unreachable_s3_endpoint_is_one_line_naming_data_source(cli, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    code, err, seconds = cli("data.source=s3://bucket/gta5/gta5-train.manifest.json")
    assert_one_line_error(code, err, "data.source", f"cannot reach the S3 endpoint {endpoint}")
    assert seconds < 60


def test_weight_files_that_are_not_checkpoints(cli, tmp_path):
    noise = tmp_path / "noise.pt"
    for seed in range(8):  # random bytes fail in many places of torch's reader (IndexError for some)
        noise.write_bytes(np.random.default_rng(seed).bytes(4096))
        assert_one_line_error(*cli(f"model.init_weights={noise}")[:2], f"not a checkpoint: {noise}")
    marker = tmp_path / "ran"
    for key in ("model.init_weights", "model.pretrained"):
        plant(tmp_path / "planted.pt", marker)
        assert_one_line_error(*cli(f"{key}={tmp_path / 'planted.pt'}")[:2], "not a checkpoint", "nothing in it was run")
    assert not marker.exists()


def test_unknown_backbone_names_close_matches(cli):
    assert_one_line_error(*cli("model.backbone=resnet10x")[:2], "model.backbone", "close matches: resnet10t")


def test_a_batch_that_cannot_fit_is_refused_before_it_is_allocated(cli):
    code, err, seconds = cli("data.loader.batch_size=100000", "data.loader.crop_size=1024,2048")
    assert_one_line_error(code, err, "data.loader.batch_size=100000", "GiB available")
    assert seconds < 60


def test_missing_manifest_names_the_setting(cli, tmp_path):
    assert_one_line_error(*cli(f"data.val={tmp_path / 'none.manifest.json'}")[:2], "data.val: manifest", "does not exist")


def test_a_planted_pickle_in_a_run_checkpoint_is_refused_unread(tiny_data_dir, tmp_path):
    """Regression: run.pt and rank{r}.pt were unpickled without weights_only, so a file replaced in the run
    storage ran its code on relaunch. Every file of the project's checkpoint is now refused unread."""
    from uda_dist.checkpoint import load_state, save_state
    from uda_dist.parts import Parts

    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path / "out")))
    parts = Parts(cfg, torch.device("cpu"))
    save_state(parts, str(tmp_path / "ckpt"), 3, {"evaluations": [], "losses": [{"step": 3, "loss": 1.0}]})
    assert load_state(parts, str(tmp_path / "ckpt"))["step"] == 3  # the real files load
    assert_each_planted_file_refused(parts, tmp_path / "ckpt", ("run.pt", "rank0.pt",
                                                                os.path.join("engine", "state.pt")), tmp_path / "ran")


@pytest.mark.parametrize("sig, code, status", [(signal.SIGTERM, 143, "KILLED"), (signal.SIGINT, 130, "KILLED")])
def test_a_stopped_run_is_marked_killed_in_mlflow(tiny_data_dir, tmp_path, sig, code, status):
    """Regression: a run stopped by SIGTERM or Ctrl-C stayed RUNNING in MLflow (and in compare) forever.
    (Also pins the lost stop: Ctrl-C landing in a finaliser, where Python drops its exception, left the run
    training; the loop now checks for a received stop every step.)"""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = tiny_overrides(tiny_data_dir, str(tmp_path / "out")) + [
        "train.iterations=100000", "tracking.enabled=true", f"tracking.uri={store}", "launch.run_name=stopped"]
    proc = subprocess.Popen([sys.executable, "-m", "uda_dist.train", "--recipe", "synthetic_source_only", "--set",
                             *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:  # wait for training to be under way
            seen.append(line)
            if "took" in line:
                break
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never left running, whatever happened
    assert proc.returncode == code, "".join(seen) + rest
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == (
        "stopped: SIGTERM" if sig == signal.SIGTERM else "stopped: interrupted")
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("uda_dist").experiment_id])
    assert run.info.status == status
    assert not os.path.exists(tmp_path / "out" / "stopped" / "summary.json")  # nothing looks complete


def test_offline_pseudo_labels_never_read_the_targets_own_labels(cli):
    code, err, _ = cli("method.pseudo_source=offline", recipe="synthetic_self_training")
    assert_one_line_error(code, err, "method.pseudo_source='offline'", "'train', not a pseudo-label split")


def test_day_night_fusion_on_a_target_without_day_pairs_names_the_build_flag(cli):
    code, err, _ = cli("method.day_night.enabled=true", recipe="synthetic_self_training")
    assert_one_line_error(code, err, "method.day_night", "data.target", "holds no day images", "--day-pairs")
