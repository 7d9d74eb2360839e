"""The discriminator phase in one process, for FADA and ASANet: the generator phase leaves the discriminator
alone, the discriminator's phase leaves the student alone, every trainable parameter has one optimiser, and a
resumed run equals an uninterrupted one with the discriminator included."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.helpers import assert_same_state, tiny_overrides
from uda_dist.auxiliary import check_one_optimizer_each
from uda_dist.checkpoint import load_state, save_state
from uda_dist.config import apply_overrides
from uda_dist.errors import ConfigError
from uda_dist.loop import _optimizer_step
from uda_dist.methods.asanet import ASANetConfig
from uda_dist.methods.presets import asanet_adaptation
from uda_dist.parts import Parts
from uda_dist.recipes.synthetic import synthetic_fada
from uda_dist.step import train_step

CPU = torch.device("cpu")
METHODS = ("fada", "asanet")


def _fada(tiny_data_dir, tmp_path, *extra):
    return apply_overrides(synthetic_fada(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "method.fada.from_scratch=true", "method.fada.disc_hidden=16", "train.iterations=6", *extra])


def _asanet(tiny_data_dir, tmp_path, *extra):
    cfg = dataclasses.replace(synthetic_fada(), method=asanet_adaptation(
        asanet=ASANetConfig(adv_weight=0.001, disc_width=8, asc_weight=0.01)))
    return apply_overrides(cfg, tiny_overrides(tiny_data_dir, str(tmp_path)) + ["train.iterations=6", *extra])


def _config(method, tiny_data_dir, tmp_path, *extra):
    return (_fada if method == "fada" else _asanet)(tiny_data_dir, tmp_path, *extra)


def _discriminator(parts, method):
    return parts.auxiliaries.modules[method]


@pytest.mark.parametrize("method", METHODS)
def test_the_generator_phase_gives_the_discriminator_no_gradient(method, tiny_data_dir, tmp_path):
    parts = Parts(_config(method, tiny_data_dir, tmp_path), CPU)
    disc = _discriminator(parts, method)
    for p in disc.parameters():
        p.grad = torch.full_like(p, 7.0)  # sentinels: the generator phase must leave them as they are
    seen = {}
    aux_losses = parts.method.auxiliary_losses

    def at_the_discriminator_phase(name):
        seen["grads"] = [p.grad.clone() for p in disc.parameters()]
        seen["requires_grad"] = all(p.requires_grad for p in disc.parameters())
        return aux_losses(name)

    parts.method.auxiliary_losses = at_the_discriminator_phase
    before_student = copy.deepcopy(parts.engine.module.state_dict())
    before_disc = copy.deepcopy(disc.state_dict())
    logged, stepped = train_step(parts.engine, parts.method, next(parts.source), next(parts.target), 0,
                                 parts.auxiliaries)
    assert stepped and logged[f"{method}.generator"] > 0 and logged[f"{method}.discriminator"] > 0
    assert all(torch.equal(g, torch.full_like(g, 7.0)) for g in seen["grads"])  # untouched by the generator
    assert seen["requires_grad"]  # unfrozen again for its own phase
    changed = [k for k, v in parts.engine.module.state_dict().items() if not torch.equal(v, before_student[k])]
    assert any(k.startswith("backbone.") for k in changed)  # the student stepped
    assert not all(torch.equal(v, before_disc[k]) for k, v in disc.state_dict().items())  # so did D
    assert parts.auxiliaries.optimizers[method].state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_the_generator_term_reaches_the_student_through_the_frozen_discriminator(method, tiny_data_dir, tmp_path):
    parts = Parts(_config(method, tiny_data_dir, tmp_path, "method.source_weight=0"), CPU)
    student = parts.engine.module
    with parts.auxiliaries.frozen():
        losses = parts.method.losses(student, next(parts.source), next(parts.target), 0)
    losses[f"{method}.generator"].backward()
    assert all(p.grad is None for p in _discriminator(parts, method).parameters())
    assert student.backbone.parameters().__next__().grad.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_the_discriminator_phase_gives_the_student_no_gradient(method, tiny_data_dir, tmp_path):
    parts = Parts(_config(method, tiny_data_dir, tmp_path), CPU)
    student = parts.engine.module
    with parts.auxiliaries.frozen():
        parts.method.losses(student, next(parts.source), next(parts.target), 0)
    parts.method.auxiliary_losses(method)[f"{method}.discriminator"].backward()
    assert all(p.grad is None for p in student.parameters())  # it reads the student's outputs detached
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _discriminator(parts, method).parameters())


def test_asanet_damps_its_adversarial_term_linearly_and_cleans_without_a_discriminator(tiny_data_dir, tmp_path):
    parts = Parts(_asanet(tiny_data_dir, tmp_path, "train.iterations=8"), CPU)
    source, target = next(parts.source), next(parts.target)
    with torch.no_grad(), parts.auxiliaries.frozen():
        terms = []
        for step in (0, 4):  # the same batch and weights at steps 0 and 4 of 8: half the weight
            torch.manual_seed(0)  # the same dropout
            terms.append(parts.method.losses(parts.engine.module, source, target, step))
    assert terms[1]["asanet.generator"].item() == pytest.approx(0.5 * terms[0]["asanet.generator"].item(), rel=1e-5)
    assert terms[1]["asanet.asc"].item() == pytest.approx(terms[0]["asanet.asc"].item(), rel=1e-6)
    assert terms[0]["asanet.asc"] > 0

    cleaning = Parts(_asanet(tiny_data_dir, tmp_path, "method.asanet.adv_weight=0"), CPU)
    assert cleaning.method.terms[0].discriminator is None and not cleaning.auxiliaries
    logged, stepped = train_step(cleaning.engine, cleaning.method, next(cleaning.source), next(cleaning.target), 0,
                                 cleaning.auxiliaries)
    assert stepped and set(logged) >= {"source.ce", "asanet.asc"} and "asanet.generator" not in logged
    with pytest.raises(ConfigError, match="affinity grid of at least 32 pixels a side, got \\(16, 32\\)"):
        small = Parts(_asanet(tiny_data_dir, tmp_path, "method.asanet.affinity_scale=0.5"), CPU)
        small.method.losses(small.engine.module, source, target, 0)


def test_every_trainable_parameter_has_exactly_one_optimizer():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    check_one_optimizer_each({"a": a, "b": b}, {"a": list(a.parameters()), "b": list(b.parameters())})
    with pytest.raises(RuntimeError, match=r"b\.weight is in 0 optimisers"):
        check_one_optimizer_each({"a": a, "b": b}, {"a": list(a.parameters()), "b": [b.bias]})
    with pytest.raises(RuntimeError, match=r"a\.weight is in 2 optimisers"):
        check_one_optimizer_each({"a": a, "b": b}, {"a": list(a.parameters()), "b": [a.weight, *b.parameters()]})
    with pytest.raises(RuntimeError, match="belong to no trained module"):
        check_one_optimizer_each({"a": a}, {"a": [*a.parameters(), *b.parameters()]})


def test_fada_without_source_weights_is_a_clear_error(tiny_data_dir, tmp_path):
    cfg = apply_overrides(synthetic_fada(), tiny_overrides(tiny_data_dir, str(tmp_path)))
    with pytest.raises(ConfigError, match="model.init_weights"):
        Parts(cfg, CPU)


def _states(parts, method):
    aux = parts.auxiliaries
    return {"student": parts.engine.module.state_dict(), "disc": aux.modules[method].state_dict(),
            "disc_optim": aux.optimizers[method].state_dict()["state"],
            "disc_lr": aux.lr(method), "lr": parts.engine.lr()}


@pytest.mark.parametrize("method", METHODS)
def test_a_resumed_run_equals_an_uninterrupted_one_with_the_discriminator(method, tiny_data_dir, tmp_path):
    cfg = _config(method, tiny_data_dir, tmp_path)
    straight = Parts(cfg, CPU)
    for step in range(3):
        _optimizer_step(straight, CPU, step)
    save_state(straight, str(tmp_path / "ckpt"), 3, {"evaluations": [], "losses": []})
    for step in range(3, 6):
        _optimizer_step(straight, CPU, step)
    expected = copy.deepcopy(_states(straight, method))

    resumed = Parts(cfg, CPU)
    assert load_state(resumed, str(tmp_path / "ckpt"))["step"] == 3
    for step in range(3, 6):
        _optimizer_step(resumed, CPU, step)
    assert_same_state(_states(resumed, method), expected)
    assert expected["disc_optim"][0]["step"] == 6
