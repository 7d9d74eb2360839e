"""mIoU against a naive per-pixel reference on random predictions."""
import numpy as np
import torch

from uda_dist.metrics import confusion_matrix, iou_per_class, mean_iou


def _naive_iou(pred, label, num_classes):
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for p, l in zip(pred.ravel(), label.ravel()):
            if l == 255:
                continue
            inter += (p == c) and (l == c)
            union += (p == c) or (l == c)
        ious.append(inter / union if union else float("nan"))
    return np.array(ious)


def test_iou_matches_naive_reference_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    K = 7
    label = torch.randint(0, K, (3, 12, 17), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.2] = 255
    label[label == 5] = 255  # class 5 never in ground truth
    pred = torch.randint(0, K - 1, label.shape, generator=g)  # class 6 never predicted
    cm = confusion_matrix(pred, label, num_classes=K)
    assert cm.sum() == (label != 255).sum()
    expected = _naive_iou(pred.numpy(), label.numpy(), K)
    np.testing.assert_allclose(iou_per_class(cm.numpy()), expected, equal_nan=True)
    assert mean_iou(cm.numpy()) == np.nanmean(expected)


def test_class_absent_everywhere_is_left_out_of_the_mean():
    label = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 0]])
    cm = confusion_matrix(pred, label, num_classes=3).numpy()
    iou = iou_per_class(cm)
    assert np.isnan(iou[2])
    np.testing.assert_allclose(iou[:2], [2 / 3, 1 / 2])
    assert mean_iou(cm) == (2 / 3 + 1 / 2) / 2
    assert mean_iou(cm, classes=[0]) == 2 / 3
