"""Optimiser-step boundaries on a real DeepSpeed engine (a one-rank gloo group in this process): grad_accum=2
with micro-batches of b equals grad_accum=1 with batches of 2b, the discriminator, its Adam and the EMA
teacher included; and the loop's schedule runs its full length with grad_accum=2."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist

from tests.helpers import assert_same_state, free_port, tiny_overrides
from uda_dist.auxiliary import Auxiliaries
from uda_dist.config import apply_overrides
from uda_dist.dist.engine import EngineConfig, build_engine
from uda_dist.loop import train_loop
from uda_dist.methods.fada import FADAConfig
from uda_dist.methods.presets import fada_adversarial
from uda_dist.methods.self_training import SelfTraining
from uda_dist.model.segmentor import ModelConfig, build_segmentor
from uda_dist.optim import OptimConfig, lr_factor
from uda_dist.recipes.synthetic import synthetic_source_only
from uda_dist.step import train_step

CPU = torch.device("cpu")
STEPS, K = 3, 5


@pytest.fixture(scope="module")
def one_rank_group():
    """torch's own gloo process group of one rank, so that DeepSpeed runs in this process, with the variables
    torch's launcher would set, and this interpreter's bin first on PATH as the launcher gives its workers
    (DeepSpeed rebuilds its cached CPU op when another ninja binary runs)."""
    port = free_port()
    saved = dict(os.environ)
    os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port),
                       "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


class _FADAWithTeacher(SelfTraining):
    """FADA's adversarial stage plus an EMA teacher (it keeps none: nothing reads it), updated by self-training
    after each optimiser step, recording when after_step runs."""

    def __init__(self, cfg, student):
        super().__init__(cfg, student)
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.updates = []

    def after_step(self, student, step):
        super().after_step(student, step)
        self.updates.append(step)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [({"image": torch.rand(4, 3, 32, 32, generator=g), "label": torch.randint(0, K, (4, 32, 32), generator=g)},
             {"image": torch.rand(4, 3, 32, 32, generator=g)}) for _ in range(STEPS)]


def _train(grad_accum: int, micro: int, batches):
    """A BatchNorm-free student (its loss over 2b images is the mean of its losses over two halves)."""
    torch.manual_seed(0)
    student = build_segmentor(ModelConfig(backbone="test_convnext", head="deeplabv2", num_classes=K))
    method = _FADAWithTeacher(fada_adversarial(ema_alpha=0.9, fada=FADAConfig(
        adv_weight=0.1, from_scratch=True, disc_hidden=16)), student)
    optim = OptimConfig(lr=1e-3, warmup_iters=2)
    aux = Auxiliaries(method.auxiliaries(), total_steps=STEPS, grad_accum=grad_accum)
    engine = build_engine(student, EngineConfig(backend="deepspeed", grad_accum=grad_accum), optim,
                          total_steps=STEPS, micro_batch=micro, device=CPU)
    lrs = []
    for step, (source, target) in enumerate(batches):
        for m in range(grad_accum):
            part = slice(m * micro, (m + 1) * micro)
            _, stepped = train_step(engine, method, {k: v[part] for k, v in source.items()},
                                    {k: v[part] for k, v in target.items()}, step, aux)
            assert stepped == (m == grad_accum - 1)
        lrs.append((engine.lr(), aux.lr("fada")))
    return {"student": engine.module.state_dict(), "teacher": method.teacher.state_dict(),
            "disc": aux.modules["fada"].state_dict(),
            "disc_adam": aux.optimizers["fada"].state_dict()["state"], "lrs": lrs, "updates": method.updates}


def test_two_micro_batches_of_b_equal_one_batch_of_2b(one_rank_group):
    batches = _batches()
    accumulated, whole = _train(2, 2, batches), _train(1, 4, batches)
    assert accumulated["updates"] == whole["updates"] == list(range(STEPS))  # the teacher: once per step
    assert [lr for lr, _ in whole["lrs"]] == pytest.approx([1e-3 * lr_factor(s + 1, cfg=OptimConfig(
        lr=1e-3, warmup_iters=2), total=STEPS) for s in range(STEPS)])
    assert accumulated["disc_adam"][0]["step"] == STEPS
    assert_same_state(accumulated, whole, exact=False)
    moved = _train(1, 4, batches[:1])["disc"]
    assert not all(torch.equal(moved[k], whole["disc"][k]) for k in moved)  # the comparison has teeth


def test_the_loop_runs_the_whole_schedule_with_gradient_accumulation(one_rank_group, tiny_data_dir, tmp_path):
    cfg = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "engine.grad_accum=2", "data.loader.batch_size=2", "train.iterations=4", "train.log_every=1",
        "optim.warmup_iters=2"])
    result = train_loop(cfg)
    expected = [cfg.optim.lr * lr_factor(step, cfg=cfg.optim, total=4) for step in range(1, 5)]
    assert [entry["lr"] for entry in result.losses] == pytest.approx(expected)
    assert [entry["step"] for entry in result.losses] == [1, 2, 3, 4]


def test_a_planted_pickle_in_deepspeeds_checkpoint_files_is_refused_unread(one_rank_group, tiny_data_dir, tmp_path):
    """Regression: DeepSpeed unpickled its files in full (not weights-only), so a file replaced in the run
    storage ran its code on relaunch. Now each of its files is refused, unread, with the one-line error."""
    from tests.integration.test_bad_inputs import assert_each_planted_file_refused
    from uda_dist.checkpoint import load_state, save_state
    from uda_dist.parts import Parts

    cfg = apply_overrides(synthetic_source_only(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "engine.grad_accum=2", "data.loader.batch_size=2", "train.iterations=4"])
    parts = Parts(cfg, CPU)
    assert type(parts.engine).__name__ == "DeepSpeedEngine"
    save_state(parts, str(tmp_path / "ckpt"), 2, {"evaluations": [], "losses": []})
    files = sorted(os.path.relpath(os.path.join(folder, name), tmp_path / "ckpt")
                   for folder, _, names in os.walk(tmp_path / "ckpt" / "engine") for name in names
                   if name.endswith(".pt"))
    assert any(name.endswith("mp_rank_00_model_states.pt") for name in files), files
    assert load_state(parts, str(tmp_path / "ckpt"))["step"] == 2  # the real files load
    assert_each_planted_file_refused(parts, tmp_path / "ckpt", files, tmp_path / "ran")
