"""Losses and weights of a few recipes over 4 steps, as digits and hashes, to check that a restructure changes
nothing a method computes: run it on both trees (PYTHONPATH=<tree> OMP_NUM_THREADS=1 .venv/bin/python
tests/benchmarks/step_digest.py [names]) and diff the outputs. Each step's logged values are printed sorted
by value (a renamed loss still matches); then a hash of the student's and of the auxiliary modules' weights.
A restructure that renames config keys edits ``cases`` on the new tree to reach the same configs."""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile

import torch

from tests.helpers import tiny_overrides
from uda_dist.config import apply_overrides
from uda_dist.methods.asanet import ASANetConfig
from uda_dist.methods.presets import asanet_adaptation, diga_warmup
from uda_dist.parts import Parts, to_device
from uda_dist.recipes import synthetic as syn
from uda_dist.step import train_step

STEPS = 4


def cases(data: str, out: str):
    base = tiny_overrides(data, out) + [f"train.iterations={STEPS}"]
    yield "fada", apply_overrides(syn.synthetic_fada(), base + ["method.fada.from_scratch=true",
                                                                "method.fada.disc_hidden=16"])
    for name, adv, asc in (("asanet", 0.001, 0.01), ("asanet_asc", 0.0, 0.01), ("asanet_asa", 0.001, 0.0)):
        yield name, dataclasses.replace(apply_overrides(syn.synthetic_fada(), base), method=asanet_adaptation(
            asanet=ASANetConfig(adv_weight=adv, asc_weight=asc, disc_width=8)))
    yield "st", apply_overrides(syn.synthetic_self_training(), base)
    contrast = ["method.sepico.start_step=1", "model.proj_dim=16"]
    yield "sepico_distcl", apply_overrides(syn.synthetic_sepico_distcl(), base + contrast)
    yield "pgpc_sepico", apply_overrides(syn.synthetic_pgpc_sepico_distcl(), base + contrast + ["method.pgpc.start_step=1"])
    yield "diga_warmup", dataclasses.replace(apply_overrides(syn.synthetic_source_only(), base),
                                             method=diga_warmup(ema_alpha=0.99))


def _hash(tensors) -> str:
    return hashlib.sha1(b"".join(t.detach().double().contiguous().numpy().tobytes() for t in tensors)).hexdigest()[:10]


def main(only: list[str]) -> None:
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as out:
        for name, cfg in cases(tempfile.gettempdir() + "/uda_dist_step_digest", out):
            if only and name not in only:
                continue
            torch.manual_seed(0)
            parts = Parts(cfg, cpu)
            steps = []
            for step in range(STEPS):
                source = to_device(next(parts.source), cpu)
                target = to_device(next(parts.target), cpu) if parts.target is not None else None
                logged, _ = train_step(parts.engine, parts.method, source, target, step, parts.auxiliaries)
                steps.append(" ".join(sorted(f"{v.item():.10g}" for k, v in logged.items()
                                             if not k.startswith("stats.") and not k.endswith("_ratio"))))
            student = _hash(v for v in parts.engine.module.state_dict().values() if v.is_floating_point())
            aux = sorted(_hash(m.state_dict().values()) for m in parts.auxiliaries.modules.values())
            print(f"{name} keys: {sorted(logged)}\n{name} losses: {' | '.join(steps)}\n{name} student {student} "
                  f"aux {aux}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
