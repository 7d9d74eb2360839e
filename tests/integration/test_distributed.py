"""Ray Train V2 workers running DeepSpeed engines (gloo on CPU), on a local Ray started by the tests."""
import dataclasses
import glob
import json
import os
import time

import pytest
import ray
import ray.train
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from tests.helpers import tiny_overrides, upload_split
from uda_dist.config import apply_overrides
from uda_dist.data.sources import load_manifest
from uda_dist.launch import connect, launch, prepare_data
from uda_dist.parts import Parts
from uda_dist.methods.asanet import ASANetConfig
from uda_dist.methods.presets import asanet_adaptation
from uda_dist.methods.base import MethodConfig, SourceOnly
from uda_dist.recipes.synthetic import synthetic_fada, synthetic_pgpc_sepico_distcl, synthetic_source_only
from uda_dist.stats.class_stats import ClassStatistics

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def local_ray(s3_server):
    # 4 logical CPUs on the 2 cores: two 1-CPU workers plus Ray Train's controller; the workers see the S3
    # server through the standard AWS environment (for s3:// storage)
    connect(env=s3_server, num_cpus=4, include_dashboard=False)  # the launcher's local Ray
    yield
    ray.shutdown()


def _record_statistics_worker(config):
    """Per worker: the library's parts (DeepSpeed engine, all-reduced statistics), a few steps of a composed
    method (PGPC and SePiCo DistCL on self-training, both reading the same statistics), and what the statistics
    were fed locally, saved for the test to compare."""
    from uda_dist.parts import Parts
    from uda_dist.step import train_step

    torch.set_num_threads(1)
    cfg = config["cfg"]
    parts = Parts(cfg, torch.device("cpu"))
    fed, update = [], parts.method.stats.update

    def recording_update(feat_ND, label_N):
        fed.append((feat_ND.detach().clone(), label_N.clone()))
        return update(feat_ND, label_N)

    parts.method.stats.update = recording_update
    for step in range(cfg.train.iterations):
        losses, _ = train_step(parts.engine, parts.method, next(parts.source), next(parts.target), step)
    rank = ray.train.get_context().get_world_rank()
    torch.save({"stats": parts.method.stats.state_dict(), "teacher": parts.method.teacher.state_dict(),
                "fed": fed, "engine": type(parts.engine).__name__, "losses": sorted(losses),
                "terms": [type(term).__name__ for term in parts.method.terms]},
               os.path.join(config["out"], f"rank{rank}.pt"))
    # FADA and ASANet in the same worker group: the discriminator outside the engine, gradients accumulated
    # over 2 micro-batches, averaged over the ranks at each optimiser step
    from uda_dist.loop import _optimizer_step

    for name in ("fada", "asanet"):
        adv = Parts(config[name], torch.device("cpu"))
        initial = {k: v.clone() for k, v in adv.auxiliaries.modules[name].state_dict().items()}
        for step in range(config[name].train.iterations):
            _optimizer_step(adv, torch.device("cpu"), step)
        torch.save({"initial": initial, "disc": adv.auxiliaries.modules[name].state_dict(),
                    "adam": adv.auxiliaries.optimizers[name].state_dict(),
                    "student": adv.engine.module.state_dict()}, os.path.join(config["out"], f"{name}{rank}.pt"))
    _record_centroids(config["diga"], os.path.join(config["out"], f"diga{rank}.pt"))
    ray.train.report({"steps": cfg.train.iterations})


def _record_centroids(cfg, path):
    """DiGA's self-training on this worker: the centroids' initial pass and 3 optimiser steps; what this rank
    fed the centroids at each step, and the labels selected on one probe image (the same on every rank)."""
    from uda_dist.loop import _optimizer_step
    from uda_dist.parts import Parts
    from uda_dist.stats.centroids import agreement_selection

    cpu = torch.device("cpu")
    parts = Parts(cfg, cpu)
    centroids = parts.method.selector.centroids
    fed, contribute = [], centroids.contribute

    def recording_contribute(feat, logits, label):
        fed.append((feat.clone(), logits.clone(), label.clone()))
        return contribute(feat, logits, label)

    centroids.contribute = recording_contribute
    parts.start_method(cpu)
    initial = {k: v.clone() for k, v in centroids.state_dict().items()}
    steps = []
    for step in range(3):
        before = len(fed)
        _optimizer_step(parts, cpu, step)
        steps.append(fed[before:])
    probe = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    view = parts.method.teacher_view(probe)
    selected = agreement_selection(view.logits_BKHW.argmax(dim=1), centroids.nearest(view.fused_BChw, (32, 64)))
    torch.save({"initial": initial, "centroids": centroids.state_dict(), "steps": steps, "selected": selected}, path)


def test_statistics_identical_on_both_ranks_and_equal_to_one_process(local_ray, tiny_data_dir, tmp_path):
    """...FADA's and ASANet's discriminators (weights and Adam state) identical on both ranks after their
    steps, and DiGA's centroids (initial pass and online moves) identical on both ranks and equal to one
    process fed both ranks' inputs, with the same labels selected on both."""
    from tests.integration.test_stages import diga_self_training_stage
    cfg = apply_overrides(synthetic_pgpc_sepico_distcl(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=4", "method.sepico.start_step=2", "method.pgpc.start_step=2", "model.proj_dim=8",
        "model.proj_hidden=8"])
    fada = apply_overrides(synthetic_fada(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=3", "method.fada.from_scratch=true", "method.fada.disc_hidden=16", "engine.grad_accum=2",
        "data.loader.batch_size=2"])
    asanet = dataclasses.replace(fada, method=asanet_adaptation(
        asanet=ASANetConfig(adv_weight=0.001, disc_width=8, asc_weight=0.01)))
    prepare_data(cfg)  # generated once, before the workers read it
    diga = diga_self_training_stage(tiny_data_dir, tmp_path, "diga2", "data.loader.batch_size=2")
    TorchTrainer(_record_statistics_worker, train_loop_config={"cfg": cfg, "fada": fada, "asanet": asanet,
                                                               "diga": diga, "out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name="stats", storage_path=str(tmp_path / "ray"))).fit()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["engine"] == r1["engine"] == "DeepSpeedEngine"
    assert r0["terms"] == ["SePiCoContrast", "PGPCContrast"]
    assert {"source.contrast", "target.contrast", "source.pgpc", "mix.pgpc"} <= set(r0["losses"])
    assert len(r0["fed"]) == len(r1["fed"]) == 4  # two contrast terms, one statistics update (one reduce) a step
    assert not torch.equal(r0["fed"][0][0], r1["fed"][0][0])  # each rank its own data
    for name, value in r0["stats"].items():
        assert torch.equal(value, r1["stats"][name]), name  # bit-identical across ranks
    for name, value in r0["teacher"].items():
        assert torch.equal(value, r1["teacher"][name]), name  # EMA teacher (BN buffers included)
    one = ClassStatistics(cfg.model.num_classes, cfg.model.proj_dim, reducer=None).double()
    for (f0, l0), (f1, l1) in zip(r0["fed"], r1["fed"]):
        one.update(torch.cat([f0, f1]), torch.cat([l0, l1]))
    assert r0["stats"]["count_K"].sum() > 0
    for name, value in one.state_dict().items():
        torch.testing.assert_close(r0["stats"][name], value, rtol=1e-12, atol=1e-12)

    for method in ("fada", "asanet"):
        f0, f1 = (torch.load(tmp_path / f"{method}{r}.pt", weights_only=True) for r in (0, 1))
        assert not all(torch.equal(f0["disc"][k], f0["initial"][k]) for k in f0["disc"])  # it trained
        for part in ("disc", "student"):
            for name, value in f0[part].items():
                assert torch.equal(value, f1[part][name]), (method, part, name)  # bit-identical across ranks
        assert f0["adam"]["state"][0]["step"] == 3
        for index, state in f0["adam"]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, f1["adam"]["state"][index][key]), (method, index, key)

    d0, d1 = (torch.load(tmp_path / f"diga{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("initial", "centroids"):
        for name, value in d0[part].items():
            assert torch.equal(value, d1[part][name]), (part, name)  # bit-identical across ranks
    assert torch.equal(d0["selected"], d1["selected"]) and (d0["selected"] != 255).any()
    assert not torch.equal(d0["steps"][0][0][0], d1["steps"][0][0][0])  # each rank its own images
    one = Parts(diga, CPU)  # one process: the whole target split in its initial pass
    one.start_method(CPU)
    centroids = one.method.selector.centroids
    for name, value in centroids.state_dict().items():
        torch.testing.assert_close(value, d0["initial"][name], rtol=1e-5, atol=1e-6)
    centroids.load_state_dict(d0["initial"])
    for step in range(3):
        for rank in (d0, d1):
            for feat, logits, label in rank["steps"][step]:
                centroids.contribute(feat, logits, label)
        centroids.commit()
    assert d0["centroids"]["seen_K"].sum() >= 2
    for name, value in centroids.state_dict().items():
        torch.testing.assert_close(value, d0["centroids"][name], rtol=1e-12, atol=1e-12)


def test_launcher_trains_two_deepspeed_workers(local_ray, mlflow_server, tiny_data_dir, tmp_path, tmp_path_factory,
                                              monkeypatch, capfd):
    """ZeRO-2 (ZeRO-0, the default, trains in the other launches here), with two regressions in the same launch:
    with a relative output_dir the workers wrote their outputs into Ray's temp folder; a password in the
    tracking URI reached the MLflow params, config.json, summary.json, the console and the Ray worker log (it
    now reaches MLflow only as credentials)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    secret = f"pw-{os.urandom(6).hex()}"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    cfg = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, "rel-out") + [
        "train.iterations=10", "train.log_every=1", "launch.workers=2", "engine.zero_stage=2", "name=zero2",
        "tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=secrets"])
    summary = launch(cfg)
    captured = capfd.readouterr()
    losses = [entry["loss"] for entry in summary["losses"]]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3])
    assert 0.0 <= summary["miou"] <= 1.0 and summary["config"]["engine.zero_stage"] == 2
    outputs = os.path.abspath(os.path.join("rel-out", summary["run_name"]))
    assert summary["outputs"] == outputs and summary["run_name"].startswith("zero2")
    assert os.path.isfile(os.path.join(outputs, "student.pt"))

    assert summary["config"]["tracking.uri"] == mlflow_server.replace("http://", "http://***@")
    client = MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run.data.params["tracking.uri"] == summary["config"]["tracking.uri"]
    session = ray._private.worker._global_node.get_session_dir_path()
    time.sleep(2)  # Ray's log monitor flushes the workers' output every second or so
    leaks = [path for root in (str(tmp_path_factory.getbasetemp()), session)
             for path in _files(root) if secret.encode() in open(path, "rb").read()]
    assert leaks == [] and secret not in captured.out + captured.err


def _files(root):
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield path


def test_demo_trains_its_runs_on_two_workers(local_ray, tiny_data_dir, tmp_path, capsys):
    from uda_dist import demo

    overrides = tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=3", "data.loader.batch_size=2", "model.proj_dim=8", "model.proj_hidden=8",
        "launch.cpus_per_worker=1"]  # the demo's own choice (half the cores each) may not fit the test's Ray
    assert demo.main(overrides) == 0
    out = capsys.readouterr().out
    for name in ("synthetic_source_only", "synthetic_self_training", "synthetic_sepico_distcl"):
        assert name in out
        [folder] = glob.glob(str(tmp_path / f"{name}-*"))
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        assert summary["config"]["launch.workers"] == 2 and summary["steps"] == 3
    assert len(glob.glob(str(tmp_path / "demo-*" / "predictions.png"))) == 1


def test_predictions_for_a_server_on_two_workers_cover_the_split_once(local_ray, tiny_data_dir, tmp_path):
    from uda_dist import predict
    from uda_dist.model.segmentor import build_segmentor

    cfg = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "launch.workers=2", "eval.flip=true"])
    torch.save(build_segmentor(cfg.model).state_dict(), tmp_path / "student.pt")
    job = predict.PredictJob(weights=str(tmp_path / "student.pt"), split="synthetic:target/val",
                             out="s3://runs/preds2", format="trainids")
    index = predict.run(cfg, job)
    assert index["count"] == index["samples_in_split"] == 8  # every image once, over both ranks
    keys = [o["Key"] for o in boto3_client().list_objects_v2(Bucket="runs", Prefix="preds2/")["Contents"]]
    assert len([k for k in keys if k.endswith(".png")]) == 8 and "preds2/predictions.json" in keys


def boto3_client():
    from uda_dist.data import s3

    return s3.client()


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CrashOnceConfig(MethodConfig):
    """Source-only, but rank 1 exits hard (a dead worker process) after step `crash_step` the first time,
    and every rank writes the steps it trains to log_dir/rank{r}.steps."""

    log_dir: str = ""
    crash_step: int = 7

    def build(self, student, *, seed, reducer=None, total_steps=0):
        return _CrashOnce(self)


class _CrashOnce(SourceOnly):
    def after_step(self, student, step):
        rank = torch.distributed.get_rank()
        with open(os.path.join(self.cfg.log_dir, f"rank{rank}.steps"), "a") as f:
            f.write(f"{step}\n")
        marker = os.path.join(self.cfg.log_dir, "crashed")
        if rank == 1 and step == self.cfg.crash_step and not os.path.exists(marker):
            open(marker, "w").close()
            # Ray Train's controller collects reported checkpoints when it polls the workers (every 2 s): a
            # worker that dies sooner after a report takes that checkpoint with it. Outlive two polls.
            time.sleep(5)
            os._exit(1)


def _attempts(path):
    """The steps trained, split into attempts where the step counter goes back."""
    steps = [int(line) for line in open(path)]
    attempts = [[steps[0]]]
    for previous, step in zip(steps, steps[1:]):
        if step <= previous:
            attempts.append([])
        attempts[-1].append(step)
    return attempts


def _crash_config(tiny_data_dir, tmp_path, name, max_failures, storage=""):
    cfg = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=10", "train.log_every=1", "train.checkpoint_every=5", "launch.workers=2",
        f"launch.max_failures={max_failures}", f"name={name}", f"launch.run_name={name}",
        f"launch.storage_path={storage}"])
    return dataclasses.replace(cfg, method=_CrashOnceConfig(log_dir=str(tmp_path)))


def test_killed_worker_resumes_from_last_checkpoint(local_ray, tiny_data_dir, tmp_path):
    summary = launch(_crash_config(tiny_data_dir, tmp_path, "failover", max_failures=1))
    assert os.path.exists(tmp_path / "crashed")
    for rank in (0, 1):
        first, second = _attempts(tmp_path / f"rank{rank}.steps")
        assert first[0] == 0 and first[-1] >= 5  # got past the checkpoint at step 5, then died at 7
        assert second == list(range(5, 10))  # restarted from the checkpoint, not from step 0
    assert [entry["step"] for entry in summary["losses"]] == list(range(1, 11))  # history restored too


def test_more_workers_than_the_cluster_holds_fail_at_once(local_ray, tiny_data_dir, tmp_path):
    """Regression: launch.workers=64 on a 4-CPU Ray retried forever."""
    from uda_dist.errors import RunError

    base = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path)))
    start = time.monotonic()
    with pytest.raises(RunError, match=r"launch.workers=64 workers of 1 CPU each .* cannot fit .* 4 CPU"):
        launch(apply_overrides(base, ["launch.workers=64"]))
    with pytest.raises(RunError, match=r"launch.workers=1 workers of 1 CPU, 1 GPU each .* 0 GPU"):
        launch(apply_overrides(base, ["launch.workers=1", "launch.use_gpu=true"]))
    assert time.monotonic() - start < 60


def test_the_local_ray_listens_on_loopback_only(local_ray):
    """Regression: the local Ray the launcher starts had its GCS, raylet and worker ports on all interfaces.
    (Run last in this module: the workers that earlier tests left idle are listening too.)"""
    import psutil

    ours = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    listening = [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len(listening) >= 4  # GCS, raylet (node manager, object manager), a worker at least
    assert [entry for entry in listening if entry[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")] == []


def _stage(cfg, name, **changes):
    """cfg with stage ``name``'s fields replaced."""
    return dataclasses.replace(cfg, stages=tuple(dataclasses.replace(s, **changes) if s.name == name else s
                                                 for s in cfg.stages))


def test_a_staged_run_killed_in_stage_2_resumes_it_without_retraining_stage_1(local_ray, tiny_data_dir, tmp_path):
    """FADA's three stages with s3:// run storage on moto's server, their source and validation shards
    streamed from it too: stage 2 (its method swapped for one that loses rank 1 at step 7) dies, and the
    relaunch under the same name skips stage 1, resumes stage 2 at its checkpoint (step 5) read back from S3,
    labels the target train split on the 2 workers (every sample exactly once) and trains stage 3 on those
    labels; MLflow has one parent run with one nested run per stage, continued by the relaunch; the steps
    trained twice (after the checkpoint, before and after the crash) have the same losses. (A pickle planted in
    DeepSpeed's checkpoint files is refused: test_grad_accum.py, in one process.)"""
    import boto3
    from mlflow.tracking import MlflowClient

    from tests.helpers import for_every_stage
    from uda_dist.data.schema import read_manifest
    from uda_dist.pipeline import run_pipeline
    from uda_dist.recipes.synthetic import synthetic_fada_pipeline

    store = f"sqlite:///{tmp_path}/mlflow.db"
    base = synthetic_fada_pipeline()
    cfg = apply_overrides(base, for_every_stage(base, tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.log_every=1", "train.checkpoint_every=5", "launch.workers=2", "launch.run_name=staged",
        "launch.storage_path=s3://runs/staged", "tracking.enabled=true", f"tracking.uri={store}"]) + [
        "stages.source.train.iterations=4", "stages.adversarial.train.iterations=10",
        "stages.distill.train.iterations=3"])
    for name in ("source", "adversarial"):
        os.makedirs(tmp_path / name)
    data = cfg.stages[0].data
    data = dataclasses.replace(data, **{name: upload_split(load_manifest(getattr(data, name), data.synthetic),
                                                           f"data/{name}") for name in ("source", "val")})
    for stage in ("source", "adversarial"):
        cfg = _stage(cfg, stage, data=data)
    cfg = _stage(cfg, "distill", data=dataclasses.replace(cfg.stages[2].data, val=data.val))
    cfg = _stage(cfg, "source", method=_CrashOnceConfig(log_dir=str(tmp_path / "source"), crash_step=-1))
    cfg = _stage(cfg, "adversarial", method=_CrashOnceConfig(log_dir=str(tmp_path / "adversarial")))
    with pytest.raises(Exception):
        run_pipeline(cfg)  # stage 2's rank 1 dies at step 7, no retries: its checkpoint at step 5 is in S3
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="runs", Prefix="staged/")["Contents"]]
    assert any(k.startswith("staged/staged.adversarial/step_00000005/") and k.endswith("run.pt") for k in keys)
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("uda_dist")
    status = {r.data.tags["uda_dist.run_name"]: r.info.status for r in client.search_runs([experiment.experiment_id])}
    # the driver's word for stage 2 and the parent: the dead worker could not say it (was RUNNING)
    assert status == {"staged": "FAILED", "staged.source": "FINISHED", "staged.adversarial": "FAILED"}

    summary = run_pipeline(cfg)  # a new driver, the same run name
    assert not (tmp_path / "ray").exists()  # nothing went to the local default storage

    assert _attempts(tmp_path / "source" / "rank0.steps") == [[0, 1, 2, 3]]  # stage 1 trained once
    first, second = _attempts(tmp_path / "adversarial" / "rank0.steps")
    assert first[0] == 0 and first[-1] >= 5 and second == list(range(5, 10))  # resumed at its checkpoint
    stages = {row["stage"]: row for row in summary["stages"]}
    assert list(stages) == ["source", "adversarial", "distill"]
    assert stages["adversarial"]["final_weights"] == "s3://runs/staged/staged.adversarial/step_00000010/student.pt"

    # the pseudo-labels: in the bucket, manifest last, every target sample exactly once, from both workers
    labels = stages["adversarial"]["labels"]
    assert labels == "s3://runs/staged/staged.adversarial.labels/synthetic-target-train-pseudo.manifest.json"
    written, target = read_manifest(labels), load_manifest(cfg.stages[1].data.target, cfg.stages[1].data.synthetic)
    keys = [s.key for shard in written.shards for s in shard.samples]
    assert sorted(keys) == sorted(s.key for shard in target.shards for s in shard.samples)
    assert len(set(keys)) == len(keys) == target.num_samples == 24
    assert {shard.url.split("-r")[-1][:3] for shard in written.shards} == {"000", "001"}
    assert written.labeled and sum(written.class_pixels) == 24 * 32 * 64  # no threshold: every pixel labelled
    with open(os.path.join(stages["distill"]["outputs"], "summary.json")) as f:
        assert json.load(f)["config"]["data.source"] == labels  # stage 3 trained on them

    # MLflow: the relaunch continued the runs (one parent, one run per stage, not doubled)
    [parent] = client.search_runs([experiment.experiment_id], filter_string="tags.`uda_dist.run_name` = 'staged'")
    assert parent.info.status == "FINISHED" and parent.data.tags["uda_dist.pipeline"] == "source adversarial distill"
    assert parent.data.metrics["val.miou"] == pytest.approx(summary["miou"])
    nested = {r.data.tags["uda_dist.run_name"]: r for r in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(nested) == ["staged.adversarial", "staged.distill", "staged.source"]
    assert {r.info.status for r in nested.values()} == {"FINISHED"}
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "stage.distill.val.miou")] == [17]
    resumed = nested["staged.adversarial"]
    assert max(m.step for m in client.get_metric_history(resumed.info.run_id, "loss")) == 10
    assert resumed.data.tags["checkpoint"] == "s3://runs/staged/staged.adversarial"
    # Regression: the experiment made by a Ray worker had its artifacts in the worker's temp folder
    assert experiment.artifact_location == str(tmp_path / "mlruns" / "uda_dist")
    assert "summary.json" in os.listdir(tmp_path / "mlruns" / "uda_dist" / resumed.info.run_id / "artifacts")

    # exact resume: the steps trained before the crash and again after the relaunch (6, 7: past the checkpoint
    # at 5) logged the same losses
    logged = {}
    for metric in client.get_metric_history(resumed.info.run_id, "loss"):
        logged.setdefault(metric.step, []).append(metric.value)
    twice = sorted(step for step, values in logged.items() if len(values) == 2)
    assert sorted(logged) == list(range(1, 11)) and twice[:2] == [6, 7]
    assert all(logged[step][0] == logged[step][1] for step in twice), logged


def test_a_sweep_over_a_stage_2_key_sees_one_step_that_only_grows(local_ray, tiny_data_dir, tmp_path, capsys):
    """Two trials of FADA's first two stages, differing in a stage-2 key: what each reported to Tune runs on
    across the stages (stage 2's steps after stage 1's), as ASHA needs it; the same sweep name again resumes
    the sweep, with nothing left to run."""
    from tests.helpers import for_every_stage
    from tune.sweep import SweepOptions, run_sweep
    from uda_dist.recipes.synthetic import synthetic_fada_pipeline

    base = synthetic_fada_pipeline()
    base = dataclasses.replace(base, stages=base.stages[:2])
    base = apply_overrides(base, for_every_stage(base, tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=4", "train.eval_every=2", "launch.workers=1"]) + ["stages.adversarial.label.enabled=false"])
    space = {"stages.adversarial.method.fada.adv_weight": "grid(0.001, 0.01)"}
    options = SweepOptions(name="staged-sweep", trials=1, scheduler="fifo", max_concurrent=2,
                           storage=str(tmp_path / "tune"))
    rows = run_sweep(base, space, options, recipe="synthetic_fada_pipeline", overrides=[])
    assert [row["status"] for row in rows] == ["FINISHED", "FINISHED"]
    assert sorted(row["params"]["stages.adversarial.method.fada.adv_weight"] for row in rows) == [0.001, 0.01]
    results = glob.glob(str(tmp_path / "tune" / "staged-sweep" / "*" / "result.json"))
    assert len(results) == 2
    for path in results:
        steps = [json.loads(line)["step"] for line in open(path)]
        assert steps == [2, 4, 6, 8], (path, steps)  # evaluations at 2 and 4 of each stage, one after the other
    before = {path: open(path).read() for path in results}
    capsys.readouterr()
    again = run_sweep(base, space, options, recipe="synthetic_fada_pipeline", overrides=[])
    assert "[sweep] resuming" in capsys.readouterr().out
    assert [row["status"] for row in again] == ["FINISHED", "FINISHED"]
    assert {path: open(path).read() for path in results} == before  # no trial trained again
