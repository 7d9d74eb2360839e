"""The sweep and comparison commands end to end: `python -m tune.sweep` (a local Ray, Tune, one TorchTrainer
per trial) against a real `mlflow server` (conftest.py), then `python -m uda_dist.compare`."""
import os
import shlex
import subprocess
import sys

from mlflow.tracking import MlflowClient

from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.recipes.synthetic import synthetic_sepico_distcl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_a_two_trial_sweep_is_a_parent_run_with_nested_trials_stopped_early_and_compared(
        mlflow_server, tiny_data_dir, tmp_path):
    """Two trials one after the other: SePiCo's temperature drawn at random, the learning rate a grid of a
    working one and one too small to move the model, so ASHA (rungs at steps 10 and 20) stops the second.
    Regression: --max-concurrent was ignored for random search, both trials ran at once and ASHA, with no
    earlier trial's rung to compare with, often let the second finish."""
    overrides = tiny_overrides(tiny_data_dir, str(tmp_path / "out")) + [
        "train.iterations=30", "train.eval_every=10", "method.sepico.start_step=5", "tracking.enabled=true",
        f"tracking.uri={mlflow_server}", "tracking.experiment=sweeps"]
    sweep = ["tune.sweep", "--recipe", "synthetic_sepico_distcl", "--space", "temperature",
             "--param", "optim.lr=grid(0.002, 1e-9)", "--trials", "1", "--max-concurrent", "1", "--grace", "10",
             "--name", "sw", "--set", *overrides]
    out = run(sweep, tmp_path)
    assert "Sweep sw: 2 trials, 1 stopped early by ASHA" in out, out[out.find("Sweep sw"):][-3000:] or out[-3000:]

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    [parent] = client.search_runs([experiment], filter_string="tags.`uda_dist.run_name` = 'sw'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.method.sepico.tau"] == "loguniform(25, 400)"
    assert parent.data.tags["uda_dist.sweep"] == "method.sepico.tau=loguniform(25, 400) optim.lr=grid(0.002, 1e-9)"
    assert parent.data.params["sweep.search"] == "BasicVariantGenerator"  # a grid: random search
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"trials.txt", "compare.png"}
    trials = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_lr = {float(t.data.params["optim.lr"]): t for t in trials}
    assert sorted(by_lr) == [1e-9, 0.002]
    good, stopped = by_lr[0.002], by_lr[1e-9]
    assert good.info.end_time <= stopped.info.start_time  # --max-concurrent 1: one trial after the other
    assert good.info.status == "FINISHED" and stopped.info.status == "KILLED"
    assert stopped.data.tags["uda_dist.early_stopped"] == "true"
    assert [m.step for m in client.get_metric_history(good.info.run_id, "val.miou")] == [10, 20, 30]
    steps = [m.step for m in client.get_metric_history(stopped.info.run_id, "val.miou")]
    assert steps[0] == 10 and steps[-1] < 30
    plots = {"confusion.png", "iou.png", "predictions.png"}
    assert plots | {"summary.json"} <= {a.path for a in client.list_artifacts(good.info.run_id)}
    assert plots <= {a.path for a in client.list_artifacts(stopped.info.run_id)}  # from its last evaluation

    # The best trial is printed as the training command that reproduces it exactly.
    line = next(text for text in out.splitlines() if text.startswith("python -m uda_dist.train"))
    assert parent.data.tags["best_command"] == line
    words = shlex.split(line)
    assert words[:6] == ["python", "-m", "uda_dist.train", "--recipe", "synthetic_sepico_distcl", "--set"]
    best = apply_overrides(synthetic_sepico_distcl(), words[6:])
    assert best.method.sepico.tau == float(good.data.params["method.sepico.tau"]) and best.optim.lr == 0.002

    table = run(["uda_dist.compare", "--experiment", "sweeps", "--sweep", "sw", "--uri", mlflow_server,
                 "--plot", str(tmp_path / "cmp.png")], tmp_path).splitlines()
    header = table[0].split()
    assert header[:2] == ["run", "status"] and {"method.sepico.tau", "optim.lr", "val.miou"} <= set(header)
    rows = [line.split() for line in table[2:4]]
    assert [row[0] for row in rows] == [good.data.tags["uda_dist.run_name"], stopped.data.tags["uda_dist.run_name"]]
    assert [row[1] for row in rows] == ["FINISHED", "KILLED"]
    with open(tmp_path / "cmp.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
