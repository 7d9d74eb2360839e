"""Inference as the papers evaluate: resize, scales, flip, sliding windows, scoring at the label's resolution,
class subsets, and a confusion matrix that refuses values out of range."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uda_dist.data import schema
from uda_dist.data.webdataset import LoaderConfig, eval_loader
from uda_dist.evaluation import evaluate
from uda_dist.inference import EvalConfig, predict, slide_logits, window_starts
from uda_dist.metrics import CLASS_SETS, class_set_mious, confusion_matrix, iou_per_class, mean_iou
from uda_dist.report import format_iou_table

K = 4


class Pointwise(torch.nn.Module):
    """Logits at half the input's resolution (a head's grid), each a function of its pixel's colour only, plus
    a left-to-right ramp per class when ``ramp`` (so that a flip matters). Records the sizes it sees."""

    def __init__(self, ramp: bool = False):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, K, 1)
        self.ramp, self.seen = ramp, []

    def forward(self, image_B3HW):
        self.seen.append(tuple(image_B3HW.shape[-2:]))
        logits = self.mix(F.avg_pool2d(image_B3HW, 2))
        if self.ramp:
            ramp_K = torch.arange(K, dtype=logits.dtype).view(1, K, 1, 1)  # class k rises k times as fast
            logits = logits + ramp_K * torch.linspace(0, 3, logits.shape[-1]).view(1, 1, 1, -1)
        return types.SimpleNamespace(logits_BKhw=logits)


def _image(H=32, W=48, seed=0):
    return torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_window_starts_cover_the_side_with_the_last_window_flush():
    assert window_starts(2048, 1024, 512) == [0, 512, 1024]
    assert window_starts(1024, 512, 341) == [0, 341, 512]
    assert window_starts(300, 512, 256) == [0]  # shorter than the window: one
    for length, window, stride in ((100, 30, 20), (64, 64, 10), (97, 16, 7)):
        starts = window_starts(length, window, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered.all() and starts[-1] + window == length and np.all(np.diff(starts) <= stride)


def test_sliding_windows_average_overlaps_exactly():
    """Each window's logits summed where windows overlap and divided by the count: a model whose logits are
    the pixel's position gives that position back; every window is the configured size."""
    class Position(torch.nn.Module):  # logits = this pixel's (row, column) in the full image, via the colour
        def forward(self, x):
            self.seen = getattr(self, "seen", []) + [tuple(x.shape[-2:])]
            return types.SimpleNamespace(logits_BKhw=x[:, :2].repeat(1, 2, 1, 1))

    H, W = 32, 48
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                                indexing="ij")
    image = torch.stack([rows, cols, rows * 0]).expand(2, 3, H, W)
    model = Position()
    slid = slide_logits(model, image, window=(16, 16), stride=(8, 12))
    assert len(model.seen) == 3 * 4 and set(model.seen) == {(16, 16)}
    torch.testing.assert_close(slid, image[:, :2].repeat(1, 2, 1, 1))
    counting = slide_logits(lambda x: types.SimpleNamespace(logits_BKhw=torch.ones(x.shape[0], K, 4, 4)), image,
                            window=(16, 16), stride=(8, 12))
    torch.testing.assert_close(counting, torch.ones_like(counting))  # the overlap count divides exactly
    whole = predict(model, image, EvalConfig(window=(64, 64)), size=(H, W))  # larger than the image: one pass
    assert model.seen[-1] == (H, W) and whole.shape == (2, 4, H, W)


def test_predict_resizes_for_inference_and_returns_the_labels_resolution():
    torch.manual_seed(0)
    model = Pointwise()
    image = _image(32, 48)
    probs = predict(model, image, EvalConfig(resize=(16, 24)), size=(64, 96))
    assert model.seen == [(16, 24)] and probs.shape == (2, K, 64, 96)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 96))
    by_hand = F.interpolate(model(F.interpolate(image, size=(16, 24), mode="bilinear", align_corners=False)
                                  ).logits_BKhw, size=(64, 96), mode="bilinear", align_corners=False).softmax(1)
    # (once, from the head's grid to the label's size)
    torch.testing.assert_close(probs, by_hand)


def test_flip_and_scales_combine_as_configured():
    torch.manual_seed(0)
    model = Pointwise(ramp=True)
    image = _image(32, 48)

    def view(x, flip=False):
        logits = model(x.flip(-1) if flip else x).logits_BKhw
        return F.interpolate(logits.flip(-1) if flip else logits, size=(32, 48), mode="bilinear",
                             align_corners=False)

    half = F.interpolate(image, size=(16, 24), mode="bilinear", align_corners=False)
    mean = predict(model, image, EvalConfig(flip=True), size=(32, 48))
    torch.testing.assert_close(mean, (view(image).softmax(1) + view(image, True).softmax(1)) / 2)
    assert not torch.allclose(mean, view(image).softmax(1))  # the ramp makes the flip count
    maximum = predict(model, image, EvalConfig(scales=(1.0, 0.5), combine="max"), size=(32, 48))
    torch.testing.assert_close(maximum, torch.maximum(view(image), view(half)).softmax(1))


def test_confusion_matrix_refuses_values_out_of_range():
    label = torch.tensor([[0, 1, 255, 3]])
    confusion = confusion_matrix(torch.tensor([[0, 1, 2, 3]]), label, num_classes=K)
    assert confusion.sum() == 3 and confusion[3, 3] == 1
    with pytest.raises(ValueError, match=r"label values \[7\] are outside the classes 0\.\.3"):
        confusion_matrix(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 7, 255, 3]]), num_classes=K)
    with pytest.raises(ValueError, match=r"prediction values \[4\] are outside"):
        confusion_matrix(torch.tensor([[0, 4, 2, 3]]), label, num_classes=K)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), label, num_classes=K)


def test_synthia_class_subsets():
    assert len(CLASS_SETS[16]) == 16 and len(CLASS_SETS[13]) == 13
    assert not {9, 14, 16} & set(CLASS_SETS[16]) and not {3, 4, 5, 9, 14, 16} & set(CLASS_SETS[13])
    confusion = np.diag(np.arange(1, 20)).astype(np.int64)
    confusion[9, 14] = confusion[9, 9]  # terrain taken for truck: IoU 10/20 and 15/25, both out of the 16
    assert mean_iou(confusion) == pytest.approx((17 + 0.5 + 0.6) / 19)
    assert class_set_mious(iou_per_class(confusion), (16, 13)) == {"miou16": 1.0, "miou13": 1.0}
    iou = [1.0] * 19
    iou[3] = 0.0  # wall: in the 16, not in the 13
    table = format_iou_table({"run": iou}, class_sets=(16, 13)).splitlines()
    assert table[-2].split() == ["mIoU16", "93.8"] and table[-1].split() == ["mIoU13", "100.0"]
    with pytest.raises(ValueError, match="class_sets"):
        EvalConfig(class_sets=(15,))


def test_scoring_is_at_the_labels_full_resolution(tmp_path):
    """Shards whose images are stored at half the label's size: evaluation upsamples the prediction to the
    label and never downscales the label (a one-pixel-wide class would vanish)."""
    image = np.zeros((8, 16, 3), np.uint8)
    label = np.zeros((16, 32), np.uint8)
    label[:, 1::2] = 1  # alternate columns: no half-size label could hold them
    sample = schema.encode_sample("k0", image, label, {"dataset": "t", "split": "val"})
    assert schema.decode_sample({**sample, "json": sample["json"]})[1].shape == (16, 32)
    schema.write_shards([sample], str(tmp_path), dataset="t", split="val", labeled=True)
    urls = sorted(str(p) for p in tmp_path.glob("*.tar"))
    loader = eval_loader(urls, cfg=LoaderConfig(num_workers=0, eval_batch_size=1))
    batch = next(iter(loader))
    assert batch["image"].shape[-2:] == (8, 16) and batch["label"].shape[-2:] == (16, 32)

    class Stripes(torch.nn.Module):  # predicts class 1 everywhere
        def forward(self, x):
            return types.SimpleNamespace(logits_BKhw=torch.tensor([0.0, 1.0, 0, 0]).view(1, K, 1, 1).expand(
                x.shape[0], K, *x.shape[-2:]))

    confusion = evaluate(Stripes(), loader, EvalConfig(), device=torch.device("cpu"))
    assert confusion[:K, :K].sum() == 16 * 32 and confusion[1, 1] == 16 * 16 and confusion[0, 1] == 16 * 16
