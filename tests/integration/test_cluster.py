"""`ray job submit` against the local two-node cluster of cluster/local.sh (started and stopped here)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def two_node_cluster():
    # one CPU per node: the two 1-CPU workers can only run one on each node
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_PORT="6391", DASHBOARD_PORT="8291", HEAD_CPUS="1",
               WORKER_CPUS="1", HEAD_AGENT_PORT="52391", WORKER_AGENT_PORT="52392",  # not Ray's default 52365
               RAY_TMPDIR=tempfile.mkdtemp(prefix="ray", dir="/tmp"),  # AF_UNIX paths <= 107 B
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env["RAY_READY_TIMEOUT"] = os.environ.get("RAY_READY_TIMEOUT", "300")  # local.sh waits for 2 alive nodes
    script = os.path.join(ROOT, "cluster", "local.sh")
    # bounded by local.sh itself (each `ray start` and the readiness wait); the timeout here is only a backstop
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=1500)
    try:
        if started.returncode != 0:
            pytest.fail(f"cluster/local.sh start exited {started.returncode}\n"
                        f"--- stdout (tail)\n{started.stdout[-4000:]}\n--- stderr (tail)\n{started.stderr[-4000:]}",
                        pytrace=False)
        yield env
    finally:
        # only this cluster's processes (its session in RAY_TMPDIR; also after a failed start, which stops its
        # own): `local.sh stop` is `ray stop --force`, which would kill every Ray process of the machine
        subprocess.run([script, "stop-session"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_ray_job_submit_runs_a_short_job_on_two_nodes(two_node_cluster, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    overrides = tiny_overrides(tiny_data_dir, str(out)) + ["train.iterations=6", "train.log_every=2",
                                                          "launch.workers=2", "name=job"]
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit",
           "--address", "http://127.0.0.1:8291", "--submission-id", "uda-test-job", "--working-dir", ROOT,
           "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "outputs"]}),
           "--", "python", "-m", "uda_dist.train", "--recipe", "synthetic_source_only", "--set", *overrides]
    try:
        done = subprocess.run(cmd, env=two_node_cluster, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"ray job submit did not end in 600 s\n--- output (tail)\n{(e.stdout or b'')[-3000:].decode()}"
                    f"\n--- stderr (tail)\n{(e.stderr or b'')[-3000:].decode()}", pytrace=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Job 'uda-test-job' succeeded" in done.stdout + done.stderr
    summary = json.load(open(out / "uda-test-job" / "summary.json"))  # the run's folder: its run name
    assert summary["steps"] == 6 and len(summary["losses"]) == 3
    assert os.path.isdir(out / "ray" / "uda-test-job")  # the run is named by the submission id
