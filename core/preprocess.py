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
from scipy import ndimage
from torchvision.transforms import v2

from .constants import DEFAULT_IMAGE_SIZE, INPUT_MEAN, INPUT_STD

__all__ = [
    "HeadCrop",
    "crop_to_head",
    "eval_transform",
    "head_box",
    "input_array",
    "to_grayscale",
    "to_model_tensor",
    "ToGrayscale",
]

#: A pixel belongs to the head when it is brighter than this share of the scan's 99th percentile.
HEAD_THRESHOLD = 0.1
#: Bright regions smaller than this share of the largest one (burnt-in letters, rulers, specks
#: of noise) are not part of the head.
HEAD_PART_SHARE = 0.1
#: Margin kept around the head, as a share of the box's width and height.
HEAD_MARGIN = 0.05
#: The box is found on a copy reduced to at most this many pixels per side (speed).
_HEAD_PROBE_SIZE = 128


def to_grayscale(image: Image.Image) -> Image.Image:
    """Channel handling: every scan is read as one grey channel (MRI is grey by nature)."""
    return image if image.mode == "L" else image.convert("L")


def head_box(image: Image.Image, margin: float = HEAD_MARGIN) -> tuple[int, int, int, int]:
    """The box ``(left, top, right, bottom)`` around the head in ``image``, with ``margin`` (a
    share of the box's width and height) on every side.

    Scans from different sources frame the head differently: wide black margins, the neck and
    face, or a head that fills the frame. Cropping every scan to its head, in training and in
    the app alike, takes the field of view out of what the network sees. The head is the
    largest connected bright region and any other at least a tenth its size (burnt-in labels
    are not). The whole image is returned when no head stands out (blank or uniformly bright
    images, photos, noise) or when the box would be smaller than a quarter of either side.
    """
    if margin < 0:
        raise ValueError(f"margin must be at least 0, got {margin}")
    grey = to_grayscale(image)
    width, height = grey.size
    whole = (0, 0, width, height)
    factor = max(1, -(-max(width, height) // _HEAD_PROBE_SIZE))
    small = np.asarray(grey.reduce(factor) if factor > 1 else grey, dtype=np.float32)
    reference = float(np.percentile(small, 99))
    if reference <= 0:
        return whole
    regions, count = ndimage.label(small > HEAD_THRESHOLD * reference, structure=np.ones((3, 3)))
    if count == 0:
        return whole
    sizes = np.bincount(regions.ravel())[1:]
    keep = np.concatenate([[False], sizes >= HEAD_PART_SHARE * sizes.max()])
    head = keep[regions]
    cols = np.flatnonzero(head.any(axis=0))
    rows = np.flatnonzero(head.any(axis=1))
    scale_x, scale_y = width / small.shape[1], height / small.shape[0]
    left, right = cols[0] * scale_x, (cols[-1] + 1) * scale_x
    top, bottom = rows[0] * scale_y, (rows[-1] + 1) * scale_y
    if right - left < 0.25 * width or bottom - top < 0.25 * height:
        return whole
    margin_x, margin_y = margin * (right - left), margin * (bottom - top)
    return (
        max(0, int(left - margin_x)),
        max(0, int(top - margin_y)),
        min(width, int(np.ceil(right + margin_x))),
        min(height, int(np.ceil(bottom + margin_y))),
    )


def crop_to_head(image: Image.Image) -> Image.Image:
    """``image`` cropped to :func:`head_box` (the same image when the box is the whole)."""
    box = head_box(image)
    return image if box == (0, 0, *image.size) else image.crop(box)


class HeadCrop(v2.Transform):
    """PIL scan -> the same scan cropped to its head (:func:`crop_to_head`)."""

    def transform(self, inpt, params):
        if isinstance(inpt, Image.Image):
            return crop_to_head(inpt)
        return inpt


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
    crop_head: bool = False,
) -> v2.Compose:
    """PIL scan -> normalised tensor (3, image_size, image_size) for the network; cropped to
    the head first when ``crop_head`` (for weights trained so, see the model card)."""
    return v2.Compose(
        [
            ToGrayscale(),
            *([HeadCrop()] if crop_head else []),
            v2.Resize((image_size, image_size), antialias=True),
            to_model_tensor(mean, std),
        ]
    )


def input_array(
    images: Sequence[Image.Image],
    image_size: int = DEFAULT_IMAGE_SIZE,
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
    crop_head: bool = False,
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
        grey = to_grayscale(image)
        if crop_head:
            grey = crop_to_head(grey)
        grey = grey.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out[i] = (np.asarray(grey, dtype=np.float32)[None] / 255.0 - mean_) / std_
    return out
