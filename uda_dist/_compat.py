"""Make timm importable next to a torchvision whose C++ extension cannot load.

timm imports torchvision at import time. The registry's torchvision 0.28.0 (the release paired with
torch 2.13.0) is a CUDA build; with the CPU torch its ``_C`` extension fails to load, and
``torchvision/_meta_registrations.py`` then registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` without checking, so ``import torchvision`` raises "operator torchvision::nms does
not exist" (README, "Environment notes"). Declaring those two operator schemas first lets the pure-Python
parts of torchvision (and therefore all of timm) import. ``torchvision.ops.nms`` and torchvision's image
decoding stay unavailable; uda_dist uses neither (images are decoded with Pillow).

Applied only when needed: on a machine whose torchvision extension loads, this does nothing.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the life of the process


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch (timm will say what is missing)
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except OSError:
                    return False
    return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's nms/qnms schemas if its extension cannot load; idempotent."""
    global _library
    if _library is not None or _extension_loads():
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already declared by someone else
        return
    except (AttributeError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
