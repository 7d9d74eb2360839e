"""MLflow tracking against a real `mlflow server` (SQLite backend) on loopback, started by the fixture (conftest.py)."""

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.loop import train_loop
from uda_dist.recipes.synthetic import synthetic_self_training


def tracked_config(tiny_data_dir, tmp_path, url, run_name):
    return apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=10", "train.eval_every=5", "tracking.enabled=true", f"tracking.uri={url}",
        "tracking.experiment=tests", f"launch.run_name={run_name}"])


def test_a_run_logs_params_metrics_tags_and_artifacts(mlflow_server, tiny_data_dir, tmp_path):
    cfg = apply_overrides(tracked_config(tiny_data_dir, tmp_path, mlflow_server, "tracked"), [
        "eval.class_sets=16,13", "eval.flip=true"])  # SYNTHIA's subsets, reported beside the 19 classes
    result = train_loop(cfg)
    client = MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                               filter_string="tags.`uda_dist.run_name` = 'tracked'")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.iterations"] == "10" and run.data.params["method.pseudo_threshold"]
    assert run.data.tags["recipe"] == "synthetic_self_training" and len(run.data.tags["git_commit"]) == 40
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [5, 10]
    assert losses[-1].value == pytest.approx(result.losses[-1]["loss"])
    for key in ("lr", "pseudo.confident_ratio", "samples_per_s", "data.skipped_samples"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val.miou")] == [5, 10]
    assert run.data.metrics["val.miou"] == pytest.approx(result.miou)
    assert "val.iou.traffic_light" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val.miou16")] == [5, 10]
    assert run.data.metrics["val.miou13"] == pytest.approx(result.class_mious["miou13"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json", "confusion.png", "iou.png", "predictions.png"} <= artifacts
    # the UI opens the experiment on its training runs, not on MLflow 3's GenAI traces page
    assert client.get_experiment_by_name("tests").tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_same_run_name_continues_the_same_mlflow_run(mlflow_server, tiny_data_dir, tmp_path):
    for attempt in range(2):
        train_loop(tracked_config(tiny_data_dir, tmp_path / str(attempt), mlflow_server, "twice"))
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                              filter_string="tags.`uda_dist.run_name` = 'twice'")
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [5, 10, 5, 10]


def test_an_older_experiment_is_marked_as_training_runs_unless_its_kind_was_chosen(mlflow_server):
    from uda_dist.tracking import TrackingConfig, _experiment_id

    client = MlflowClient(tracking_uri=mlflow_server)
    older = client.create_experiment("made-before-the-kind")
    chosen = client.create_experiment("chosen-kind", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("made-before-the-kind", "chosen-kind"):
        _experiment_id(client, TrackingConfig(uri=mlflow_server, experiment=name))
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"
