"""ClassMix (Olsson et al., WACV 2021), as DACS and DAFormer use it: masks of half the source label's classes,
and the paste of source pixels onto target pixels; and SePiCo's class-balanced crop windows, scored by the
classes a window's labels hold.

Differences on purpose (DAFormer's mmseg/models/utils/dacs_transforms.py): the classes are picked from a
presence vector instead of torch.unique (no host sync), and the ignore label 255 is never picked as a class.

Legend: B batch, K classes, H, W image size, N pixels.
"""
from __future__ import annotations

import torch

from uda_dist.losses.segmentation import IGNORE_INDEX


def class_mix_masks(label_BHW: torch.Tensor, *, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """ClassMix masks (bool BHW): per image, a random half (rounded up) of the classes present in the source
    label; the mask covers those classes' pixels. Ignore pixels are never in the mask."""
    B = label_BHW.shape[0]
    valid_BHW = label_BHW != IGNORE_INDEX
    flat_BN = torch.where(valid_BHW, label_BHW, num_classes).reshape(B, -1)
    present_BK = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=label_BHW.device)
    present_BK.scatter_(1, flat_BN, True)
    present_BK = present_BK[:, :num_classes]
    scores_BK = torch.rand(B, num_classes, generator=generator).to(label_BHW.device)
    scores_BK = scores_BK.masked_fill(~present_BK, -1.0)
    ranks_BK = scores_BK.argsort(dim=1, descending=True).argsort(dim=1)
    n_pick_B1 = (present_BK.sum(dim=1, keepdim=True) + 1) // 2
    chosen_BK = present_BK & (ranks_BK < n_pick_B1)
    chosen_BK = torch.cat([chosen_BK, chosen_BK.new_zeros(B, 1)], dim=1)  # the ignore slot is never chosen
    return torch.gather(chosen_BK, 1, flat_BN).reshape(label_BHW.shape)


def mix(mask_BHW: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Paste `inside` where the mask is set; works for images (B3HW) and per-pixel maps (BHW)."""
    mask = mask_BHW.unsqueeze(1) if inside.dim() == 4 else mask_BHW
    return torch.where(mask, inside, outside)


def class_balanced_windows(label_BHW: torch.Tensor, *, size: tuple[int, int], candidates: int, num_classes: int,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the top-left corner (tops_B, lefts_B, CPU) of the best of ``candidates`` random windows of
    ``size``, scored as in SePiCo by sum over the classes present in the window of log(pixel count); ties go to
    the first drawn window. Ignored pixels (255) do not count. Reads the best window's index on the host (one sync per
    step, only when the option is on)."""
    B, H, W = label_BHW.shape
    h, w = size
    if h > H or w > W:
        raise ValueError(f"class-balanced crop of {h}x{w} does not fit target images of {H}x{W}: set "
                         f"data.loader.target_crop_size to at least the source crop")
    tops_BC = torch.randint(0, H - h + 1, (B, candidates), generator=generator)
    lefts_BC = torch.randint(0, W - w + 1, (B, candidates), generator=generator)
    slot_BHW = torch.where(label_BHW == IGNORE_INDEX, num_classes, label_BHW)
    counts_BCK = torch.stack([
        torch.stack([torch.bincount(slot_BHW[b, t:t + h, l:l + w].reshape(-1), minlength=num_classes + 1)
                     for t, l in zip(tops_BC[b].tolist(), lefts_BC[b].tolist())])
        for b in range(B)])[..., :num_classes].double()
    scores_BC = torch.where(counts_BCK > 0, counts_BCK.log(), 0.0).sum(dim=-1)
    best_B = scores_BC.argmax(dim=1).cpu()
    rows_B = torch.arange(B)
    return tops_BC[rows_B, best_B], lefts_BC[rows_B, best_B]
