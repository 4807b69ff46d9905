"""Training and evaluation transforms, built from ``core``'s preprocessing constants.

The evaluation transform *is* ``core.preprocess.eval_transform``. The training transform
adds geometric and intensity augmentation (torchvision transforms v2) aimed at scans from
other scanners and sequences, then ends with the same tensor conversion and normalisation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from core.constants import INPUT_MEAN, INPUT_STD
from core.preprocess import HeadCrop, ToGrayscale, eval_transform, to_grayscale, to_model_tensor
from core.scan import read_scan

__all__ = [
    "ClassificationPresetTrain",
    "ClassificationPresetEval",
    "RandomGamma",
    "SyntheticT2",
    "PERTURBATIONS",
    "perturbation",
]


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn log-uniformly from ``gamma_range``."""

    def __init__(self, gamma_range: tuple[float, float] = (0.6, 1.6), p: float = 0.5) -> None:
        super().__init__()
        self.gamma_range = gamma_range
        self.p = p

    def transform(self, inpt, params):
        if random.random() >= self.p:
            return inpt
        low, high = (torch.log(torch.tensor(g)) for g in self.gamma_range)
        gamma = float(torch.exp(low + (high - low) * torch.rand(())))
        return F.adjust_gamma(inpt, gamma)


class SyntheticT2:
    """A T2-like image of a slice, made from its co-registered FLAIR and T1 (before contrast)
    images, in place of the FLAIR image with probability ``p``.

    No training source holds a T2 glioma, and in the Kaggle set T2 slices are mostly "no
    tumour". A source that names each scan's sequence and keeps the sequences of one slice side
    by side (``PATIENT_SLICE_flair.jpg`` beside ``PATIENT_SLICE_t1pre.jpg``, as tcga-lgg) gives
    both classes in T2-like contrast: fluid bright (the T1 inverted inside the head: fluid is
    dark on T1), tumour and oedema bright (the FLAIR), white matter dark. The label stays that of
    the slice. Scans of other sequences, or without a partner image, pass unchanged.
    """

    def __init__(self, p: float = 0.5, sequence: str = "flair", partner: str = "t1pre", gamma: float = 1.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}.")
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}.")
        self.p, self.sequence, self.partner, self.gamma = p, sequence, partner, gamma

    def partner_of(self, path: Path) -> Path | None:
        """The T1 image beside the FLAIR image ``path`` (None when there is none)."""
        suffix = f"_{self.sequence}"
        if not path.stem.lower().endswith(suffix):
            return None
        partner = path.with_name(path.stem[: -len(suffix)] + f"_{self.partner}" + path.suffix)
        return partner if partner.is_file() else None

    @staticmethod
    def synthesise(flair: np.ndarray, t1: np.ndarray, gamma: float = 1.5) -> np.ndarray:
        """The T2-like uint8 image of a FLAIR and a T1 image of the same slice (2-D, same shape)."""
        if flair.shape != t1.shape or flair.ndim != 2:
            raise ValueError(f"FLAIR and T1 must be 2-D images of one shape, got {flair.shape} and {t1.shape}.")
        flair, t1 = flair.astype(np.float32), t1.astype(np.float32)
        head = ndimage.binary_fill_holes(t1 > 0.1 * t1.max())
        if head.sum() < 16:
            return flair.astype(np.uint8)
        lo, hi = np.quantile(t1[head], [0.01, 0.99])
        fluid = np.clip((hi - t1) / max(hi - lo, 1.0), 0, 1) ** gamma
        bright = np.clip(flair / max(float(np.quantile(flair[head], 0.99)), 1.0), 0, 1)
        return np.round(255 * np.where(head, np.maximum(fluid, bright), 0)).astype(np.uint8)

    def __call__(self, sample, image: Image.Image) -> Image.Image:
        """``image`` (the grey scan of ``sample``, a ``train.data.Sample``), or its T2-like
        version."""
        if self.p == 0 or (sample.sequence or "").lower() != self.sequence or random.random() >= self.p:
            return image
        partner = self.partner_of(Path(sample.path))
        if partner is None:
            return image
        t1 = np.asarray(to_grayscale(read_scan(partner)))
        flair = np.asarray(to_grayscale(image))
        if t1.shape != flair.shape:
            return image
        return Image.fromarray(self.synthesise(flair, t1, self.gamma))


class ClassificationPresetTrain:
    """Augmentation for training; ``strength`` 0 gives resize + flip only."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = INPUT_MEAN,
        std: Sequence[float] = INPUT_STD,
        strength: float = 1.0,
        crop_head: bool = False,
    ) -> None:
        s = float(strength)
        steps: list = [ToGrayscale(), *([HeadCrop()] if crop_head else []), v2.PILToTensor()]
        if s > 0:
            steps += [
                v2.RandomResizedCrop(
                    image_size, scale=(1.0 - 0.35 * s, 1.0), ratio=(1.0 - 0.15 * s, 1.0 + 0.15 * s), antialias=True
                ),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.RandomAffine(degrees=15 * s, translate=(0.06 * s, 0.06 * s), scale=(1.0 - 0.1 * s, 1.0 + 0.1 * s))], p=0.6),
                v2.RandomApply([v2.ColorJitter(brightness=0.35 * s, contrast=0.35 * s)], p=0.8),
                RandomGamma((1.0 - 0.4 * s, 1.0 + 0.6 * s), p=0.5),
                v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.2 * s),
                v2.RandomApply([v2.JPEG(quality=(25, 95))], p=0.3 * s),
            ]
            float_steps: list = [v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.03 * s, clip=True)], p=0.25 * s)]
        else:
            steps += [v2.Resize((image_size, image_size), antialias=True), v2.RandomHorizontalFlip()]
            float_steps = []
        steps.append(to_model_tensor(mean, std, float_steps))
        self.transforms = v2.Compose(steps)

    def __call__(self, image):
        return self.transforms(image)


class ClassificationPresetEval:
    """Exactly the app's preprocessing."""

    def __init__(
        self, image_size: int, mean: Sequence[float] = INPUT_MEAN, std: Sequence[float] = INPUT_STD,
        crop_head: bool = False,
    ):
        self.transforms = eval_transform(image_size, mean, std, crop_head)

    def __call__(self, image):
        return self.transforms(image)


def _scale_crop(image: torch.Tensor, zoom: float) -> torch.Tensor:
    h, w = image.shape[-2:]
    ch, cw = int(h / zoom), int(w / zoom)
    return F.resize(F.center_crop(image, [ch, cw]), [h, w], antialias=True)


def _zoom_out(image: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = image.shape[-2:]
    small = F.resize(image, [int(h * factor), int(w * factor)], antialias=True)
    return F.center_crop(small, [h, w])  # pads with black, like a smaller field of view


def _noise(image: torch.Tensor, sigma: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noisy = image.float() + torch.randn(image.shape, generator=generator) * sigma * 255.0
    return noisy.clamp(0, 255).to(torch.uint8)


#: Deterministic perturbations of a uint8 grey tensor (1, H, W), applied before the shared
#: preprocessing, to report robustness next to the clean figure. Each mimics a shift seen
#: between scanners, sequences and exports.
PERTURBATIONS = {
    "gamma_0.6": lambda t: F.adjust_gamma(t, 0.6),
    "gamma_1.6": lambda t: F.adjust_gamma(t, 1.6),
    "contrast_0.6": lambda t: F.adjust_contrast(t, 0.6),
    "brightness_1.3": lambda t: F.adjust_brightness(t, 1.3),
    "blur_sigma1.2": lambda t: F.gaussian_blur(t, kernel_size=7, sigma=1.2),
    "noise_sigma0.04": lambda t: _noise(t, 0.04),
    "jpeg_q20": lambda t: F.jpeg(t, quality=20),
    "zoom_in_1.2": lambda t: _scale_crop(t, 1.2),
    "zoom_out_0.8": lambda t: _zoom_out(t, 0.8),
    "rotate_10": lambda t: F.rotate(t, 10.0),
    "downscale_96px": lambda t: F.resize(F.resize(t, [96, 96], antialias=True), list(t.shape[-2:]), antialias=True),
}


def perturbation(name: str):
    """A callable PIL -> PIL applying the named perturbation (for evaluation only)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}.")
    fn = PERTURBATIONS[name]

    def apply(image):
        tensor = F.pil_to_tensor(ToGrayscale()(image))
        return F.to_pil_image(fn(tensor))

    return apply
