"""Evaluation on the target validation split: the confusion matrix (on the device, reduced over workers once),
its record in the run's history, and the plots a tracker records (confusion, per-class IoU, predictions)."""
from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from uda_dist import report
from uda_dist.data.schema import IGNORE_INDEX, NUM_CLASSES
from uda_dist.dist import collectives
from uda_dist.inference import EvalConfig, predict
from uda_dist.metrics import class_set_mious, confusion_matrix, iou_per_class, mean_iou
from uda_dist.parts import to_device

if TYPE_CHECKING:
    from uda_dist.parts import Parts


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, cfg: EvalConfig, *, device: torch.device, max_batches: int = 0,
             bad_data: collections.Counter | None = None) -> np.ndarray:
    """Confusion matrix of the model's predictions over the loader (uda_dist.inference.predict as ``cfg``
    says); the loader's bad-data counts are added to ``bad_data``."""
    was_training = model.training
    model.eval()
    confusion_KK = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        counts = batch.pop("bad_data", {})
        if bad_data is not None:
            bad_data.update(counts)
        batch = to_device(batch, device)
        pred_BHW = predict(model, batch["image"], cfg, batch["label"].shape[-2:]).argmax(dim=1)
        label_BHW = batch["label"].masked_fill(~batch["valid"].view(-1, 1, 1), IGNORE_INDEX)  # padding items
        confusion_KK += confusion_matrix(pred_BHW, label_BHW, num_classes=NUM_CLASSES)
    model.train(was_training)
    return collectives.all_reduce_sum_(confusion_KK).cpu().numpy()  # every rank's share, reduced once


def evaluation_record(step: int, confusion_KK: np.ndarray, class_sets: tuple[int, ...] = ()) -> dict[str, Any]:
    """{"step", "miou" (19 classes), "iou" (per class), and "miou16" / "miou13" for the class sets asked}."""
    iou_K = iou_per_class(confusion_KK)
    return {"step": step, "miou": mean_iou(confusion_KK), "iou": iou_K.tolist(), **class_set_mious(iou_K, class_sets)}


@torch.no_grad()
def pictures(parts: Parts, confusion_KK: np.ndarray, out_dir: str, device: torch.device, cfg: EvalConfig
             ) -> list[str]:
    """The tracker's plots: confusion matrix, per-class IoU bars, and the first validation batch's predictions
    overlaid on the images, at the image's size (this rank's share of the split)."""
    batch = to_device(next(iter(parts.val)), device)
    batch.pop("bad_data", None)
    model = parts.engine.module
    was_training = model.training
    size = batch["image"].shape[-2:]
    pred_BHW = predict(model.eval(), batch["image"], cfg, size).argmax(dim=1)
    model.train(was_training)
    label_BHW = F.interpolate(batch["label"][:, None].float(), size=size, mode="nearest")[:, 0].byte()
    images_BHW3 = (batch["image"].permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
    return [report.save_confusion_plot(os.path.join(out_dir, "confusion.png"), confusion_KK),
            report.save_iou_bars(os.path.join(out_dir, "iou.png"), iou_per_class(confusion_KK).tolist()),
            report.save_overlays(os.path.join(out_dir, "predictions.png"), images_BHW3,
                                 label_BHW.cpu().numpy(), pred_BHW.byte().cpu().numpy())]
