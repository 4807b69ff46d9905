"""Grad-CAM explanations (pytorch-grad-cam) of the PyTorch network.

Explanations need gradients, so they always run in PyTorch, on a copy of the prediction network
that holds the hooks (predictions never pass through them); calls are serialised by a lock.
Only the layers from the target layer to the logits get gradients, so the backward pass stops
there (several times cheaper than through the whole backbone).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch
from PIL import Image

__all__ = ["GradCamExplainer", "cam_target_layer", "paste_heatmap"]


def cam_target_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage: where Grad-CAM reads activations and gradients."""
    for name in ("bn2", "conv_head", "norm_pre"):
        layer = getattr(net, name, None)
        if isinstance(layer, torch.nn.Module) and not isinstance(layer, torch.nn.Identity):
            return layer
    # Plain convolutional networks (core.nets.SmallCNN, timm's VGG): the last layer of
    # ``features`` that is not a pooling layer.
    features = getattr(net, "features", None)
    if isinstance(features, torch.nn.Sequential):
        for layer in reversed(features):
            if not isinstance(layer, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
                return layer
    raise ValueError(f"No Grad-CAM target layer known for {type(net).__name__}.")


def _gradient_source(net: torch.nn.Module, layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameters start the gradient at the target layer: the layer itself,
    or (a folded batch norm, now only its activation) the convolution before it."""
    if any(True for _ in layer.parameters()):
        return layer
    conv = getattr(net, "conv_head", None)
    if isinstance(conv, torch.nn.Module) and any(True for _ in conv.parameters()):
        return conv
    return net


class GradCamExplainer:
    """Grad-CAM heatmaps of ``network`` (left untouched: the explainer works on its own copy)."""

    def __init__(self, network: torch.nn.Module):
        self.net = copy.deepcopy(network).eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.layer = cam_target_layer(self.net)
        for param in _gradient_source(self.net, self.layer).parameters():
            param.requires_grad_(True)
        self._lock = threading.Lock()
        self._cells: dict[int, int] = {}

    def cells(self, image_size: int) -> int:
        """How many cells across the target layer's map is for a square input of ``image_size``
        pixels (6 for an EfficientNet at 192 px): the heatmap's true resolution."""
        if image_size not in self._cells:
            shapes: list[torch.Size] = []
            hook = self.layer.register_forward_hook(lambda _module, _inputs, output: shapes.append(output.shape))
            try:
                with self._lock, torch.no_grad():
                    param = next(self.net.parameters())
                    self.net(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device))
            finally:
                hook.remove()
            self._cells[image_size] = int(max(shapes[-1][-2:]))
        return self._cells[image_size]

    def __call__(self, batch: torch.Tensor, class_index: int | None, size: tuple[int, int]) -> np.ndarray:
        """The heatmap of one network input (1, 3, H, W) for ``class_index`` (None: the top
        class of Grad-CAM's own forward pass), resized to ``size`` (width, height), in [0, 1]."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = None if class_index is None else [ClassifierOutputTarget(class_index)]
        with self._lock:
            with GradCAM(model=self.net, target_layers=[self.layer]) as cam:
                heatmap = cam(input_tensor=batch.contiguous(memory_format=torch.channels_last), targets=targets)[0]
            self.net.zero_grad(set_to_none=True)
        resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
        return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def paste_heatmap(
    inside: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], cells: int
) -> np.ndarray:
    """A heatmap of the box ``(left, top, right, bottom)`` placed on a zero canvas of ``size``
    (width, height), fading to zero over one Grad-CAM cell beyond the box.

    The network saw the box only, so the map says nothing about the scan outside it. But a
    Grad-CAM map is ``cells`` cells across and bilinearly upsampled, so its values at the box's
    edge can be high, and cutting them off there draws a straight line across the scan that is
    not in it. Each point outside takes the value of the nearest point of the box, weighted down
    linearly with its distance in cells (the box's width or height over ``cells``): zero one cell
    away. Inside the box the map is unchanged.
    """
    left, top, right, bottom = box
    width, height = size
    if inside.shape != (bottom - top, right - left):
        raise ValueError(f"The box heatmap has shape {inside.shape}; the box {box} needs {(bottom - top, right - left)}.")
    if cells < 1:
        raise ValueError(f"cells must be at least 1, got {cells}.")
    xs, ys = np.arange(width), np.arange(height)
    near_x, near_y = np.clip(xs, left, right - 1), np.clip(ys, top, bottom - 1)
    # distance to the box in cells, along each axis (0 inside)
    dx = np.abs(xs - near_x) / max(1.0, (right - left) / cells)
    dy = np.abs(ys - near_y) / max(1.0, (bottom - top) / cells)
    weight = np.clip(1.0 - np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2), 0.0, 1.0).astype(np.float32)
    return inside[np.ix_(near_y - top, near_x - left)] * weight
