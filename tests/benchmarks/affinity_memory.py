"""Memory of ASANet's affinity space at real scale: one image's generator term (softmax on the affinity grid,
the 8K-channel affinity space, the affinity discriminator, backward to the logits), for each affinity_scale,
uda_dist's affinity space (each neighbour's group checkpointed) beside the same formula as one autograd graph
(the reference's way), side by side. Measured on this machine's CPU as the peak resident memory of a fresh
one-thread process over its baseline, with glibc returning every large block on free
(MALLOC_MMAP_THRESHOLD_), so the peak is that of live tensors; a GPU allocates the same tensors, plus cuDNN's
workspaces.

Usage: .venv/bin/python tests/benchmarks/affinity_memory.py [--size 720 1280] [--classes 19]
       [--scales 1 0.5 0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 1024 ** 2


def one_graph(p):
    """The affinity space as one autograd graph (every group's intermediates kept for the backward pass)."""
    import torch

    from uda_dist.losses.affinity import affinity_group, neighbours

    return torch.cat([affinity_group(shifted, p) for shifted in neighbours(p)], dim=1)


def measure(height: int, width: int, classes: int, scale: float, way: str) -> dict[str, float]:
    """In this process: the peak resident memory one generator term adds, and its time."""
    import torch

    from uda_dist.losses.affinity import affinity_space, asa_generator_loss
    from uda_dist.model.discriminator import AffinityDiscriminator

    torch.set_num_threads(1)
    torch.manual_seed(0)
    disc = AffinityDiscriminator(8 * classes)
    for p in disc.parameters():
        p.requires_grad_(False)  # the generator phase: frozen
    logits = torch.randn(1, classes, height, width, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    grid = logits if scale == 1 else torch.nn.functional.interpolate(
        logits, scale_factor=scale, mode="bilinear", align_corners=False)
    p = torch.softmax(grid, dim=1)
    affinity = (affinity_space if way == "uda_dist" else one_graph)(p)
    asa_generator_loss(disc(affinity)).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"way": way, "scale": scale, "grid": list(affinity.shape[-2:]), "affinity_mib": affinity.numel() * 4 / MIB,
            "peak_mib": (peak - base) / MIB, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(measure(*args.size, args.classes, float(args.child[0]), args.child[1])))
        return
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    rows = []
    for scale in args.scales:  # each in a fresh process: its own high-water mark
        for way in ("uda_dist", "one graph"):
            out = subprocess.run([sys.executable, __file__, "--size", *map(str, args.size), "--classes",
                                  str(args.classes), "--child", str(scale), way], check=True, capture_output=True,
                                 text=True, env=env)
            rows.append(json.loads(out.stdout))
    H, W = args.size
    print(f"one {H}x{W} image, K = {args.classes}: generator term (affinity space + discriminator + backward)")
    print(f"{'scale':>6} {'grid':>11} {'A(p) MiB':>9} {'uda_dist MiB':>13} {'one graph MiB':>14} {'ratio':>6} "
          f"{'seconds':>14}")
    for ours, theirs in zip(rows[::2], rows[1::2]):
        grid = "x".join(map(str, ours["grid"]))
        print(f"{ours['scale']:>6} {grid:>11} {ours['affinity_mib']:9.0f} {ours['peak_mib']:13.0f} "
              f"{theirs['peak_mib']:14.0f} {theirs['peak_mib'] / ours['peak_mib']:6.2f} "
              f"{ours['seconds']:6.1f} / {theirs['seconds']:5.1f}")


if __name__ == "__main__":
    main()
