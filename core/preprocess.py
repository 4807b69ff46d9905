"""The single definition of how a scan becomes a model input.

``core`` uses :func:`eval_transform` for prediction and ``train`` uses the same function for
validation and testing, and :func:`to_model_tensor` as the tail of its training transform, so
evaluation and the app cannot drift apart. :func:`input_array` computes the same numbers with
Pillow and NumPy for the ONNX Runtime path (tested equal within 1e-6): no torch operation, and so
no torch thread pool competing with the runtime's threads, runs between two predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from .constants import DEFAULT_IMAGE_SIZE, INPUT_MEAN, INPUT_STD

__all__ = ["eval_transform", "input_array", "to_grayscale", "to_model_tensor", "ToGrayscale"]


def to_grayscale(image: Image.Image) -> Image.Image:
    """Channel handling: every scan is read as one grey channel (MRI is grey by nature)."""
    return image if image.mode == "L" else image.convert("L")


class ToGrayscale(v2.Transform):
    """PIL image of any mode -> 8-bit grey PIL image (the network later repeats it to 3 channels)."""

    def transform(self, inpt, params):
        if isinstance(inpt, Image.Image):
            return to_grayscale(inpt)
        return inpt


def to_model_tensor(
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
    float_steps: Sequence[v2.Transform] = (),
) -> v2.Compose:
    """uint8 grey image -> float tensor (3, H, W), grey repeated to 3 channels, normalised.

    ``float_steps`` (training only) run on the [0, 1] float image before normalisation.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            *float_steps,
            _RepeatChannels(3),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class _RepeatChannels(v2.Transform):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def transform(self, inpt, params):
        if isinstance(inpt, torch.Tensor) and inpt.ndim >= 3 and inpt.shape[-3] == 1:
            return inpt.expand(*inpt.shape[:-3], self.channels, *inpt.shape[-2:]).clone()
        return inpt


def eval_transform(
    image_size: int = DEFAULT_IMAGE_SIZE,
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
) -> v2.Compose:
    """PIL scan -> normalised tensor (3, image_size, image_size) for the network."""
    return v2.Compose(
        [
            ToGrayscale(),
            v2.Resize((image_size, image_size), antialias=True),
            to_model_tensor(mean, std),
        ]
    )


def input_array(
    images: Sequence[Image.Image],
    image_size: int = DEFAULT_IMAGE_SIZE,
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
) -> np.ndarray:
    """:func:`eval_transform` of each image, stacked: float32 (N, len(mean), image_size, image_size).

    Pillow resizes exactly as ``v2.Resize`` does for PIL images (bilinear, with its antialias),
    then NumPy scales to [0, 1] and normalises. A one-value ``mean`` and ``std`` give the single
    grey channel (for a network exported for grey input, see ``train.export``); three give it
    repeated, normalised per channel, as :func:`eval_transform` does.
    """
    mean_ = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None, None]
    out = np.empty((len(images), len(mean_), image_size, image_size), dtype=np.float32)
    for i, image in enumerate(images):
        grey = to_grayscale(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
        out[i] = (np.asarray(grey, dtype=np.float32)[None] / 255.0 - mean_) / std_
    return out
