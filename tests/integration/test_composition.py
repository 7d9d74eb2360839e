"""Methods as self-training plus plug-in terms: several terms in one step share its passes and its statistics."""
import pytest
import torch

from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.loop import train_loop
from uda_dist.methods.distillation import DistillationConfig
from uda_dist.methods.pgpc import PGPCConfig
from uda_dist.methods.self_training import SelfTrainingConfig
from uda_dist.methods.sepico import SePiCoContrastConfig
from uda_dist.model.segmentor import ModelConfig, build_segmentor
from uda_dist.recipes.synthetic import synthetic_pgpc_reliable


def _student():
    torch.manual_seed(0)
    return build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16, proj_dim=16))


def _batch(seed, B=2, H=32, W=32):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (B, 1, H // 8, W // 8), generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    return {"image": torch.rand(B, 3, H, W, generator=g), "label": label[:, 0]}


def _composed(pgpc=True, **changes):
    return SelfTrainingConfig(sepico=SePiCoContrastConfig(weight=1.0, start_step=0),
                              pgpc=PGPCConfig(weight=0.1 if pgpc else 0.0, start_step=0, threshold=0.0), **changes)


def _forwards(student):
    """Count the student's forward passes (after the teacher's copy was made)."""
    calls = []
    forward = student.forward
    student.forward = lambda image, **kw: calls.append(kw.get("with_proj", False)) or forward(image, **kw)
    return calls


def test_two_contrast_terms_and_distillation_reduce_the_statistics_once_per_step():
    student = _student()
    reduces = []
    method = _composed(distillation=DistillationConfig(weight=0.25)).build(
        student, seed=0, reducer=lambda flat: reduces.append(flat.numel()) or flat)
    for step in range(3):
        losses = method.losses(student, _batch(step), _batch(10 + step), step=step)
        method.after_step(student, step)
        assert len(reduces) == step + 1  # one reduce a step, whichever terms read the statistics
    assert set(losses) == {"source.ce", "source.distillation", "source.contrast", "target.contrast",
                           "source.pgpc", "mix.pgpc", "mix.ce"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    state = method.state_dict()
    assert {"stats", "bank", "teacher", "generator", "selector"} <= set(state)
    fresh = _composed(distillation=DistillationConfig(weight=0.25)).build(_student(), seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.stats.sum_KD, method.stats.sum_KD)
    assert torch.equal(fresh.terms[1].bank.bank_KMD, method.terms[1].bank.bank_KMD)


def test_pgpc_reads_the_step_s_passes_and_adds_none():
    counts = {}
    for pgpc in (False, True):
        student = _student()
        method = _composed(pgpc=pgpc).build(student, seed=0)
        calls = _forwards(student)
        method.losses(student, _batch(0), _batch(1), step=0)
        counts[pgpc] = calls
    # the source pass and the ClassMix pass (SePiCo's target projection goes through project(), not forward)
    assert len(counts[True]) == len(counts[False]) == 2
    assert counts[True] == [True, True] and counts[False] == [True, False]  # PGPC asks the mixed pass for z


def test_pgpc_with_every_target_pixel_unreliable_still_learns_from_them():
    student = _student()
    losses = {}
    for unreliable_weight in (0.0, 1.0):
        method = SelfTrainingConfig(pseudo_threshold=0.0, pgpc=PGPCConfig(weight=1.0, start_step=0, threshold=1.0,
                                                                           unreliable_weight=unreliable_weight)
                                    ).build(student, seed=0)  # q = 1: every target pixel weighs 1
        method.losses(student, _batch(0), _batch(1), step=0)  # statistics of step 0
        losses[unreliable_weight] = method.losses(student, _batch(2), _batch(3), step=1)["mix.pgpc"]
    assert losses[1.0] > losses[0.0] > 0  # pasted source pixels in both; the unreliable target only in one


def test_a_pgpc_recipe_trains_and_logs_its_terms(tiny_data_dir, tmp_path):
    cfg = apply_overrides(synthetic_pgpc_reliable(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=4", "train.log_every=1", "method.pgpc.start_step=2", "model.proj_dim=8",
        "model.proj_hidden=8"])
    result = train_loop(cfg)
    assert "source.pgpc" not in result.losses[1] and "mix.pgpc" in result.losses[2]
    assert 0.0 <= result.losses[2]["pgpc.reliable_ratio"] <= 1.0  # the target's share of reliable pixels
    assert result.losses[-1]["loss"] == pytest.approx(sum(result.losses[-1][k] for k in (
        "source.ce", "mix.ce", "source.pgpc", "mix.pgpc")), rel=1e-5)


def test_a_term_needs_the_projection_head():
    with pytest.raises(ValueError, match="PGPC needs a projection head"):
        SelfTrainingConfig(pgpc=PGPCConfig(weight=1.0)).build(
            build_segmentor(ModelConfig(backbone="resnet10t", embed_dim=16)), seed=0)


def test_diga_warmup_then_sepico_runs_as_a_staged_run(tiny_data_dir, tmp_path):
    """The combination's second stage starts from the warm-up's weights, which have no projection head (its
    head starts fresh), and trains with the contrast on."""
    from tests.helpers import for_every_stage
    from uda_dist.pipeline import run_pipeline
    from uda_dist.recipes.synthetic import synthetic_diga_sepico

    cfg = synthetic_diga_sepico()
    cfg = apply_overrides(cfg, for_every_stage(cfg, tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=3"]) + ["stages.sepico.method.sepico.start_step=1", "stages.sepico.model.proj_dim=8",
                                  "stages.sepico.model.proj_hidden=8"])
    summary = run_pipeline(cfg)
    assert [row["stage"] for row in summary["stages"]] == ["warmup", "sepico"]
    assert all(0.0 <= row["miou"] <= 1.0 for row in summary["stages"])
    weights = torch.load(summary["stages"][1]["final_weights"], weights_only=True)
    assert any(key.startswith("proj_head.") for key in weights)


def test_the_teacher_is_kept_only_when_something_reads_it():
    student = _student()
    without = SelfTrainingConfig(pseudo_weight=0.0).build(student, seed=0)
    assert without.teacher is None and "teacher" not in without.state_dict()
    losses = without.losses(student, _batch(1), _batch(2), step=0)
    assert set(losses) == {"source.ce"}
    without.after_step(student, 0)  # no teacher to update
    for cfg in (SelfTrainingConfig(), SelfTrainingConfig(pseudo_weight=0.0, distillation=DistillationConfig(weight=0.5)),
                SelfTrainingConfig(pseudo_weight=0.0, sepico=SePiCoContrastConfig(weight=1.0))):
        method = cfg.build(student, seed=0)
        assert method.teacher is not None and "teacher" in method.state_dict()


class _Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))


def test_a_terms_auxiliary_module_is_the_methods_and_reads_the_shared_target_pass(monkeypatch):
    from uda_dist.auxiliary import Auxiliary
    from uda_dist.methods import self_training
    from uda_dist.methods.terms import Term
    from uda_dist.optim import AuxOptimConfig

    class Adversary(Term):
        def __init__(self, name):
            self.name, self.module, self.seen = name, _Probe(), []

        def auxiliaries(self):
            return {self.name: Auxiliary(self.module, AuxOptimConfig())}

        def losses(self, ctx):
            self.seen.append(ctx.student_target())
            return {f"{self.name}.generator": ctx.student_target().logits_BKHW.mean() * 0}

        def auxiliary_losses(self, name):
            return {f"{name}.discriminator": self.module.w.sum()}

    terms = (Adversary("a"), Adversary("b"))
    monkeypatch.setattr(self_training.SelfTrainingConfig, "terms", lambda self, student, total_steps=0: terms)
    student = _student()
    calls = _forwards(student)
    method = SelfTrainingConfig(pseudo_weight=0.0).build(student, seed=0)
    target = _batch(2)
    losses = method.losses(student, _batch(1), target, step=0)
    assert len(calls) == 2  # the source pass and ONE target pass for both terms
    assert terms[0].seen[0] is terms[1].seen[0] and terms[0].seen[0].out.features is not None
    assert terms[0].seen[0].logits_BKHW.shape[-2:] == target["image"].shape[-2:]
    assert {"a.generator", "b.generator"} <= set(losses)
    assert {name: aux.module for name, aux in method.auxiliaries().items()} == {"a": terms[0].module,
                                                                                 "b": terms[1].module}
    assert set(method.auxiliary_losses("b")) == {"b.discriminator"}
    with pytest.raises(NotImplementedError, match="'c'"):
        method.auxiliary_losses("c")
    clash = (Adversary("a"), Adversary("a"))
    monkeypatch.setattr(self_training.SelfTrainingConfig, "terms", lambda self, student, total_steps=0: clash)
    with pytest.raises(ValueError, match="two terms declare an auxiliary module 'a'"):
        SelfTrainingConfig(pseudo_weight=0.0).build(student, seed=0)


def test_fada_and_asanet_terms_ride_on_daformer_self_training_in_one_step():
    """Both adversarial terms on the full self-training step: one shared target pass, each term its own
    discriminator phase, and the step's other losses as they are."""
    from uda_dist.methods.asanet import ASANetConfig
    from uda_dist.methods.fada import FADAConfig

    student = _student()
    cfg = SelfTrainingConfig(fada=FADAConfig(adv_weight=0.01, from_scratch=True, disc_hidden=8),
                             asanet=ASANetConfig(adv_weight=0.01, asc_weight=0.01, disc_width=4))
    method = cfg.build(student, seed=0, total_steps=4)
    calls = _forwards(student)
    losses = method.losses(student, _batch(1), _batch(2), step=0)
    assert len(calls) == 3  # the source pass, ONE target pass for both terms, the ClassMix pass
    assert set(losses) == {"source.ce", "mix.ce", "fada.generator", "asanet.generator", "asanet.asc"}
    assert set(method.auxiliaries()) == {"fada", "asanet"} and method.teacher is not None
    for name in ("fada", "asanet"):
        disc_losses = method.auxiliary_losses(name)
        assert set(disc_losses) == {f"{name}.discriminator"} and disc_losses[f"{name}.discriminator"] > 0
    with pytest.raises(ValueError, match="model.init_weights"):
        SelfTrainingConfig(fada=FADAConfig(adv_weight=0.01)).build(student, seed=0)


def test_target_pass_makes_the_students_target_pass_with_no_term():
    """The control of the adversarial terms: their weights 0 and the student's train-mode target pass kept,
    which moves its BatchNorm statistics towards the target."""
    running = {}
    for target_pass in (False, True):
        student = _student()
        method = SelfTrainingConfig(pseudo_weight=0.0, target_pass=target_pass).build(student, seed=0)
        calls = _forwards(student)
        losses = method.losses(student, _batch(1), _batch(2), step=0)
        assert len(calls) == 1 + target_pass and set(losses) == {"source.ce"}
        running[target_pass] = [b.clone() for n, b in student.named_buffers() if n.endswith("running_mean")]
    assert running[False] and any(not torch.equal(a, b) for a, b in zip(running[False], running[True]))


def test_the_self_training_fada_recipe_trains_with_both_phases(tiny_data_dir, tmp_path):
    from uda_dist.recipes.synthetic import synthetic_self_training_fada

    cfg = apply_overrides(synthetic_self_training_fada(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=2", "train.log_every=1", "method.fada.disc_hidden=8"])
    result = train_loop(cfg)
    logged = result.losses[-1]
    assert {"source.ce", "mix.ce", "fada.generator", "fada.discriminator"} <= set(logged)
    assert logged["loss"] == pytest.approx(logged["source.ce"] + logged["mix.ce"] + logged["fada.generator"],
                                           rel=1e-5)  # the discriminator's loss is its own phase's
