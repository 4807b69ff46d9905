"""Is this a brain MRI slice like the training scans? Image checks, then a distance in feature space.

- :func:`image_problem`: plain checks on the image itself (blank or near-constant, coloured,
  extreme aspect ratio), with limits far outside every Training and Testing scan.
- :class:`FeatureGate`: the Mahalanobis distance (Lee et al., 2018) of the per-channel mean and
  standard deviation of two blocks' outputs, tapped in the prediction's own forward pass
  (:func:`forward_with_taps`), to the nearest Training class mean under one shrunk covariance.
  Fitted by ``train.ood``, stored beside the weights (``ood.safetensors``, sha256 in the model
  card). How the thresholds are set and what they catch: ``docs/trust.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageChops, ImageStat
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .constants import MRI_MAX_ASPECT, MRI_MAX_COLOUR, MRI_MIN_STD
from .rules import ImageProblem
from .weights import WeightsError, checked_companion, sha256_file

__all__ = [
    "FeatureGate",
    "forward_with_taps",
    "stage_statistics",
    "ImageLimits",
    "OOD_NAME",
    "image_problem",
    "image_stats",
    "load_gate",
    "save_gate",
]

logger = logging.getLogger(__name__)

OOD_NAME = "ood.safetensors"


@dataclass(frozen=True)
class ImageLimits:
    """Limits of the image checks (fractions of the 0-255 range, or ratios)."""

    #: Standard deviation of the grey levels below which the image is blank or near-constant.
    min_std: float = MRI_MIN_STD
    #: Mean spread between the colour channels above which the image is coloured (MRI is grey).
    max_colour: float = MRI_MAX_COLOUR
    #: Longer side over shorter side above which no MRI slice is stored.
    max_aspect: float = MRI_MAX_ASPECT


def image_stats(image: Image.Image) -> dict[str, float]:
    """The numbers the image checks look at, on a thumbnail of about 128 px (box-filtered:
    Pillow's ``reduce`` by the whole factor that brings the longer side nearest 128 px)."""
    width, height = image.size
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    factor = max(1, round(max(width, height) / 128))
    small = image.reduce(factor) if factor > 1 else image
    grey = small if small.mode == "L" else small.convert("L")
    if small.mode == "RGB":
        red, green, blue = small.split()
        high = ImageChops.lighter(ImageChops.lighter(red, green), blue)
        low = ImageChops.darker(ImageChops.darker(red, green), blue)
        colour = ImageStat.Stat(ImageChops.subtract(high, low)).mean[0] / 255.0
    else:
        colour = 0.0
    return {
        "aspect": max(width, height) / max(min(width, height), 1),
        "colour": float(colour),
        "std": float(ImageStat.Stat(grey).stddev[0]) / 255.0,
    }


def image_problem(image: Image.Image, limits: ImageLimits = ImageLimits()) -> ImageProblem | None:
    """Why ``image`` cannot be a brain MRI slice; None when the checks pass."""
    stats = image_stats(image)
    if stats["std"] < limits.min_std:
        return ImageProblem("blank", stats["std"], limits.min_std)
    if stats["colour"] > limits.max_colour:
        return ImageProblem("colour", stats["colour"], limits.max_colour)
    if stats["aspect"] > limits.max_aspect:
        return ImageProblem("aspect", stats["aspect"], limits.max_aspect)
    return None


def stage_statistics(x: torch.Tensor) -> torch.Tensor:
    """(N, 2C): per-channel spatial mean and standard deviation of a (N, C, H, W) feature map."""
    flat = x.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def forward_with_taps(net: torch.nn.Module, batch: torch.Tensor, stages: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass: logits and the statistics of the outputs of ``net.blocks[stages]``.

    For timm's EfficientNet family (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``);
    with no stages, the plain forward pass and None.
    """
    if not stages:
        return net(batch), None
    x = net.bn1(net.conv_stem(batch))
    taps = []
    for index, block in enumerate(net.blocks):
        x = block(x)
        if index in stages:
            taps.append(stage_statistics(x))
    if len(taps) != len(stages):
        raise ValueError(f"Stages {stages} not all found among the network's {len(net.blocks)} blocks.")
    pooled = net.forward_head(net.bn2(net.conv_head(x)), pre_logits=True)
    return net.get_classifier()(pooled), torch.cat(taps, dim=1)


@dataclass(frozen=True)
class FeatureGate:
    """Mahalanobis distance of tapped block statistics to the nearest Training class mean."""

    #: (classes, features) class means.
    means: torch.Tensor
    #: (features, features) inverse of the shared, shrunk covariance.
    precision: torch.Tensor
    #: Distance above which a scan is unlike the training scans (a brain MRI of another
    #: sequence, preparation or orientation): "outside the training data".
    threshold: float
    #: Indices of the network blocks whose outputs are tapped (see :func:`forward_with_taps`).
    stages: tuple[int, ...] = (2, 4)
    #: Distance above which an input is not a brain MRI at all (photos, documents, noise); None
    #: until ``train.ood.fit_reject_threshold`` sets it (then the same as ``threshold``).
    reject_threshold: float | None = None

    def __post_init__(self) -> None:
        classes, dim = self.means.shape
        if tuple(self.precision.shape) != (dim, dim):
            raise ValueError(f"precision must be ({dim}, {dim}) to match the means, got {tuple(self.precision.shape)}.")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold!r}.")
        if self.reject_threshold is not None and not (
            np.isfinite(self.reject_threshold) and self.reject_threshold >= self.threshold
        ):
            raise ValueError(
                f"reject_threshold must be a number at least threshold ({self.threshold}), got {self.reject_threshold!r}."
            )

    @property
    def reject_score(self) -> float:
        """The score (distance over ``threshold``) above which an input is not a brain MRI."""
        return (self.reject_threshold or self.threshold) / self.threshold

    def distance(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N,) distance of each row of ``features`` (N, D) to the nearest class mean.

        Computed in NumPy (float64), without BLAS: torch's kernels, even on these small arrays, and
        BLAS wake thread pools that then compete with ONNX Runtime's threads for the next prediction.
        """
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        features = np.asarray(features, dtype=np.float64)
        means, precision, means_term = self._arrays
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, one (N, D) x (D, D) product for all classes.
        # einsum, not the @ operator: BLAS's threads, like torch's, stay busy after a call.
        projected = np.einsum("nd,de->ne", features, precision)
        squared = (
            np.einsum("nd,nd->n", projected, features)[:, None]
            - 2.0 * np.einsum("nd,cd->nc", projected, means)
            + means_term[None, :]
        )
        return torch.from_numpy(np.sqrt(np.clip(squared, 0.0, None).min(axis=1)))

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means, precision and each mean's m'Pm, as float64 NumPy arrays (computed once)."""
        means = self.means.double().numpy()
        precision = self.precision.double().numpy()
        return means, precision, np.einsum("cd,de,ce->c", means, precision, means)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) distance over threshold: above 1 is outside the training data, above
        :attr:`reject_score` not a brain MRI."""
        return self.distance(features) / self.threshold


def save_gate(gate: FeatureGate, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write the gate as safetensors; returns its sha256 (for the model card)."""
    tensors = {
        "means": gate.means.double().contiguous(),
        "precision": gate.precision.double().contiguous(),
        "threshold": torch.tensor([gate.threshold], dtype=torch.float64),
        "stages": torch.tensor(gate.stages, dtype=torch.int64),
    }
    if gate.reject_threshold is not None:
        tensors["reject_threshold"] = torch.tensor([gate.reject_threshold], dtype=torch.float64)
    save_file(tensors, str(path), metadata=metadata or {})
    return sha256_file(path)


def load_gate(folder: str | Path, card: dict[str, Any]) -> FeatureGate | None:
    """The gate named in the model card (``card["ood"]``), refused unless its sha256 matches.

    None when the card names no gate (a model without one: only the image checks apply).
    """
    info = card.get("ood")
    if not info:
        return None
    path = checked_companion(folder, info, OOD_NAME, "Out-of-distribution file")
    try:
        tensors = load_file(str(path))
        stages = tuple(int(v) for v in tensors["stages"].tolist())
        reject = float(tensors["reject_threshold"][0]) if "reject_threshold" in tensors else None
        return FeatureGate(tensors["means"], tensors["precision"], float(tensors["threshold"][0]), stages, reject)
    except (SafetensorError, OSError, KeyError, ValueError, IndexError) as exc:
        raise WeightsError(f"Out-of-distribution file {str(path)!r} is not valid: {exc}") from exc
