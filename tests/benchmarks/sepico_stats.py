"""SePiCo class statistics + DistCL at DAFormer scale: ours (float64 sums, two matmuls) vs the straightforward
N x K x D way of the reference code (BIT-DA/SePiCo ProtoEstimator.update_proto and dist_contrastive).

Usage: .venv/bin/python tests/benchmarks/sepico_stats.py [--device cpu|cuda] [--repeats R] [--N 51200] [--K 19]
       [--D 512] [--tau 100] [--threads 1]
One call = one training step's share: update the class statistics with teacher features and labels, then
DistCL forward + backward on student features with the updated mean/variance. Each variant runs in a fresh
subprocess (a hidden --child flag) on the same seeded inputs, so its peak memory is its own: on cpu the rise of
the peak RSS (VmHWM, reset after the inputs exist) over the RSS with the inputs allocated; on cuda
torch.cuda.max_memory_allocated over the allocation with the inputs. The parent then checks that both
variants end with the same statistics, loss and input gradient, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from uda_dist.losses.contrast import dist_contrast
from uda_dist.stats.class_stats import ClassStatistics

IGNORE = 255


# ---------------------------------------------------------------- the straightforward (reference) way

class StraightforwardStats:
    """ProtoEstimator.update_proto as the reference writes it: N x K x D expansions, float32 running mean/var."""

    def __init__(self, K: int, D: int, device: torch.device):
        self.mean = torch.zeros(K, D, device=device)
        self.var = torch.zeros(K, D, device=device)
        self.amount = torch.zeros(K, device=device)

    def update(self, feat: torch.Tensor, label: torch.Tensor) -> None:
        keep = label != IGNORE
        feat, label = feat[keep], label[keep]  # contrast_preparations' boolean filtering
        N, D = feat.shape
        K = self.mean.shape[0]
        feat_NKD = feat.view(N, 1, D).expand(N, K, D)
        onehot = torch.zeros(N, K, device=feat.device)
        onehot.scatter_(1, label.view(-1, 1), 1)
        onehot_NKD = onehot.view(N, K, 1).expand(N, K, D)
        by_sort = feat_NKD.mul(onehot_NKD)
        amount_KD = onehot_NKD.sum(0)
        amount_KD[amount_KD == 0] = 1
        ave_KD = by_sort.sum(0) / amount_KD
        var_temp = (by_sort - ave_KD.expand(N, K, D).mul(onehot_NKD)).pow(2).sum(0).div(amount_KD)
        n_KD = onehot.sum(0).view(K, 1).expand(K, D)
        w = n_KD.div(n_KD + self.amount.view(K, 1).expand(K, D))
        w[w != w] = 0
        additional = w.mul(1 - w).mul((self.mean - ave_KD).pow(2))
        self.var = (self.var.mul(1 - w) + var_temp.mul(w)).detach() + additional.detach()
        self.mean = (self.mean.mul(1 - w) + ave_KD.mul(w)).detach()
        self.amount = self.amount + onehot.sum(0)


def straightforward_dist(z: torch.Tensor, label: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                         tau: float) -> torch.Tensor:
    """dist_contrastive with the variance term materialised as N x K x D."""
    keep = label != IGNORE
    z, label = z[keep], label[keep]
    sim = z @ mean.T
    spread = 0.5 * (z[:, None, :] ** 2 * var[None]).sum(-1) / tau
    ce = F.cross_entropy((sim + spread) / tau, label, reduction="none")
    jcl = 0.5 * (z ** 2 * var[label]).sum(1) / tau / tau
    return (ce + jcl).mean()


# ---------------------------------------------------------------- one variant in its own process

def make_inputs(N: int, K: int, D: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(K, (N,), generator=g)
    label[torch.rand(N, generator=g) < 0.1] = IGNORE
    centers = F.normalize(torch.randn(K, D, generator=g), dim=1)
    feat_t = F.normalize(centers[label.clamp_max(K - 1)] + 0.8 * torch.randn(N, D, generator=g), dim=1)
    z = F.normalize(feat_t + 0.3 * torch.randn(N, D, generator=g), dim=1)
    return feat_t.to(device), z.to(device).requires_grad_(), label.to(device)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _reset_peak(device: torch.device) -> int:
    """Reset the peak counter; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return 1024 * _rss_kib("VmRSS:")
    except OSError:  # no reset: the peak so far (input creation's temporaries included) is the baseline
        return 1024 * _rss_kib("VmHWM:")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return 1024 * _rss_kib("VmHWM:")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_child(variant: str, args: argparse.Namespace, out_path: str) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    feat_t, z, label = make_inputs(args.N, args.K, args.D, device)
    if variant == "ours":
        stats = ClassStatistics(args.K, args.D).to(device)

        def update():
            stats.update(feat_t, label)

        def loss():
            return dist_contrast(z, label, stats.mean_KD, stats.var_KD, tau=args.tau, class_mask_K=stats.seen_K)

        def result():
            return stats.mean_KD.float(), stats.var_KD.float(), stats.count_K.float()
    else:
        ref = StraightforwardStats(args.K, args.D, device)

        def update():
            ref.update(feat_t, label)

        def loss():
            return straightforward_dist(z, label, ref.mean, ref.var, args.tau)

        def result():
            return ref.mean, ref.var, ref.amount
    baseline = _reset_peak(device)
    times = []
    for _ in range(1 + args.repeats):  # the first call is a warm-up
        z.grad = None
        _sync(device)
        t0 = time.perf_counter()
        update()
        _sync(device)
        t1 = time.perf_counter()
        value = loss()
        value.backward()
        _sync(device)
        times.append((t1 - t0, time.perf_counter() - t1))
    peak = _peak(device) - baseline
    mean, var, count = result()
    torch.save({"mean": mean.cpu(), "var": var.cpu(), "count": count.cpu(), "loss": value.detach().cpu(),
                "grad": z.grad.cpu()}, out_path)
    upd, los = (statistics.median(t[i] for t in times[1:]) for i in (0, 1))
    print(json.dumps({"update_s": upd, "loss_s": los, "peak_bytes": peak}))


# ---------------------------------------------------------------- parent: spawn, check, print

def spawn(variant: str, args: argparse.Namespace, out_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--device", args.device,
           "--repeats", str(args.repeats), "--N", str(args.N), "--K", str(args.K), "--D", str(args.D),
           "--tau", str(args.tau), "--threads", str(args.threads), "--out", out_path]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(ours: dict, straight: dict) -> str:
    diffs = {}
    for key, rtol, atol in (("count", 0, 0), ("mean", 1e-4, 1e-6), ("var", 1e-3, 1e-6), ("loss", 1e-5, 1e-6),
                            ("grad", 1e-3, 1e-9)):
        a, b = ours[key].double(), straight[key].double()
        assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{key} differs: max |diff| {(a - b).abs().max():.3g}"
        diffs[key] = (a - b).abs().max().item()
    return ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--N", type=int, default=51_200)
    p.add_argument("--K", type=int, default=19)
    p.add_argument("--D", type=int, default=512)
    p.add_argument("--tau", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    p.add_argument("--child", choices=("ours", "straightforward"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return run_child(args.child, args, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        res, out = {}, {}
        for variant in ("ours", "straightforward"):
            res[variant] = spawn(variant, args, os.path.join(tmp, f"{variant}.pt"))
            out[variant] = torch.load(os.path.join(tmp, f"{variant}.pt"))
        diffs = check(out["ours"], out["straightforward"])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} thread(s))"
    print(f"SePiCo class statistics + DistCL, N={args.N} K={args.K} D={args.D}, {device}, "
          f"median of {args.repeats} calls after 1 warm-up, torch {torch.__version__}")
    print(f"{'variant':<32}{'stats update':>14}{'DistCL f+b':>12}{'total':>10}{'peak memory':>14}")
    rows = {}
    for name, r in (("ours (sums + 2 matmuls)", res["ours"]),
                    ("straightforward (N x K x D)", res["straightforward"])):
        rows[name] = (r["update_s"], r["loss_s"], r["update_s"] + r["loss_s"], r["peak_bytes"] / 2 ** 20)
        u, l_, t, m = rows[name]
        print(f"{name:<32}{u * 1e3:>11.1f} ms{l_ * 1e3:>9.1f} ms{t * 1e3:>7.0f} ms{m:>10.0f} MiB")
    (ou, ol, ot, om), (su, sl, st, sm) = rows.values()
    print(f"{'ratio straightforward / ours':<32}{su / ou:>13.1f}x{sl / ol:>11.1f}x{st / ot:>9.1f}x{sm / om:>13.1f}x")
    print(f"check: same statistics, loss and z-gradient (max |diff|: {diffs})")


if __name__ == "__main__":
    main()
