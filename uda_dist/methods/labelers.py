"""Pseudo-label selection: how self-training turns the target's pseudo-labels into labels and pixel weights.

A part that the self-training config chooses (``method.pseudo_selection``), not a subclass override, so that
every self-training method (DAFormer's, SePiCo's, DiGA's) can use either:

- ``"confidence"`` (DAFormer, the default): every pixel keeps its label and is weighted by q, the share of
  the batch's pixels whose teacher confidence is >= ``method.pseudo_threshold`` (one scalar per batch).

A selector sees the pseudo-labels and the teacher's view of the same target images (logits at image size),
returns (label_BHW, weight_BHW, values to log), and may keep state (``state_dict``), which the method saves
with its own. The PL-crop rows get weight 0 whichever selector runs.

Legend: B batch, K classes, H, W image size.
"""
from __future__ import annotations

from typing import Any

import torch


class ConfidenceWeight:
    """DAFormer's quality weight: q = share of pixels with max teacher probability >= threshold, on every pixel."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def select(self, label_BHW: torch.Tensor, logits_BKHW: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        max_prob_BHW = torch.softmax(logits_BKHW.detach().float(), dim=1).amax(dim=1)
        q = (max_prob_BHW >= self.threshold).float().mean()
        return label_BHW, q.expand_as(max_prob_BHW), {"pseudo.confident_ratio": q}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the confidence weight has no state, but got keys {sorted(state)}")
