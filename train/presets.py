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
    "RandomMaskedInversion",
    "SyntheticT2",
    "PasteLesion",
    "batch_mixing",
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


class RandomMaskedInversion(v2.Transform):
    """Invert the grey levels inside the head only (the background stays dark), with
    probability ``p``: dark fluid becomes bright, as between T1 or FLAIR and T2.

    The head is every pixel brighter than ``threshold`` times the image's maximum; inside it a
    grey level v becomes ``lo + hi - v`` (``lo``, ``hi``: the head's 1st and 99th percentiles,
    clipped to 0-255), so the head keeps its range.
    """

    def __init__(self, p: float = 0.25, threshold: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}.")
        self.p = p
        self.threshold = threshold

    def transform(self, inpt, params):
        if self.p == 0 or random.random() >= self.p or not isinstance(inpt, torch.Tensor):
            return inpt
        image = inpt.float()
        head = image > self.threshold * image.max()
        if head.sum() < 16:
            return inpt
        values = image[head]
        lo, hi = torch.quantile(values, torch.tensor([0.01, 0.99]))
        inverted = torch.where(head, (lo + hi - image).clamp(0, 255), image)
        return inverted.round().to(inpt.dtype)


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


class PasteLesion:
    """A tumour cut from a masked glioma slice, pasted into a "no tumour" scan, which then
    counts as a glioma, with probability ``p``.

    The Kaggle set teaches four appearances, not "a mass is there": lesion types the network
    never learned (schwannoma, neurocytoma, papilloma) are often called "no tumour". Pasting
    real tumour tissue of other patients, in any of their sequences, at any place inside the
    head of tumour-free scans of every source asks the network to answer "tumour" wherever a
    mass is, whatever the scan around it looks like. ``donors`` are ``(image, mask)`` paths
    (mask 255 = tumour) of training patients only (:meth:`from_samples`). The tumour is scaled
    with the head's width (times a draw in ``scale``), its grey levels follow the target head's
    (times a draw in ``gain``; inverted with probability ``invert_p``), and it is blended with a
    blurred mask.

    With probability ``sham_p`` a "no tumour" scan instead gets a *sham* paste: the same cut,
    scaling, grey-level mapping and blending, but of the donor's normal tissue on the other side
    of the head (the tumour mask mirrored about the head's midline, minus the tumour), its mean
    grey level matched to the tissue it covers so that it is a seam and not a mass, and the scan
    keeps its label. The network then cannot learn the paste itself (its halo, its grey-level
    step) as the sign of a glioma; only the tumour tissue separates the two.
    """

    def __init__(
        self,
        donors: Sequence[tuple[Path, Path]],
        p: float = 0.25,
        notumor_label: int = 2,
        glioma_label: int = 0,
        scale: tuple[float, float] = (0.7, 1.3),
        gain: tuple[float, float] = (0.6, 1.2),
        invert_p: float = 0.2,
        sham_p: float = 0.0,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}.")
        if not 0.0 <= sham_p <= 1.0 - p:
            raise ValueError(f"sham_p must be in [0, 1 - p] = [0, {1.0 - p:g}], got {sham_p!r}.")
        if (p > 0 or sham_p > 0) and not donors:
            raise ValueError("PasteLesion needs at least one (image, mask) donor; got none.")
        self.donors = [(Path(i), Path(m)) for i, m in donors]
        self.p, self.sham_p, self.notumor_label, self.glioma_label = p, sham_p, notumor_label, glioma_label
        self.scale, self.gain, self.invert_p = scale, gain, invert_p

    @staticmethod
    def mask_of(path: Path) -> Path | None:
        """``SOURCE/masks/PATIENT_SLICE_mask.png`` for ``SOURCE/CLASS/PATIENT_SLICE_SEQUENCE.jpg``."""
        stem = Path(path).stem
        if "_" not in stem:
            return None
        mask = Path(path).parent.parent / "masks" / f"{stem.rsplit('_', 1)[0]}_mask.png"
        return mask if mask.is_file() else None

    @classmethod
    def from_samples(cls, samples, p: float = 0.25, **kwargs) -> PasteLesion:
        """Donors: the glioma scans among ``samples`` (training scans) that have a tumour mask."""
        from core.constants import CLASS_NAMES

        glioma, notumor = CLASS_NAMES.index("glioma"), CLASS_NAMES.index("notumor")
        donors = [(s.path, m) for s in samples if s.label == glioma and (m := cls.mask_of(s.path)) is not None]
        return cls(donors, p, notumor_label=notumor, glioma_label=glioma, **kwargs)

    @staticmethod
    def _head(grey: np.ndarray) -> np.ndarray:
        return ndimage.binary_fill_holes(grey > 0.1 * max(float(np.quantile(grey, 0.99)), 1.0))

    @staticmethod
    def mirrored(tumour: np.ndarray, head: np.ndarray, margin: int = 4) -> np.ndarray:
        """The tumour's mirror image about the head's vertical midline, inside the head and at
        least ``margin`` pixels from the tumour: normal tissue of the same shape and size."""
        cols = np.nonzero(head.any(axis=0))[0]
        if cols.size == 0:
            return np.zeros_like(tumour)
        source = cols.min() + cols.max() - np.arange(tumour.shape[1])  # the column each one mirrors
        inside = (source >= 0) & (source < tumour.shape[1])
        mirror = np.zeros_like(tumour)
        mirror[:, inside] = tumour[:, source[inside]]
        return mirror & head & ~ndimage.binary_dilation(tumour, iterations=margin)

    @classmethod
    def paste(
        cls, target: np.ndarray, donor: np.ndarray, mask: np.ndarray, rng: random.Random,
        scale: tuple[float, float] = (0.7, 1.3), gain: tuple[float, float] = (0.6, 1.2), invert_p: float = 0.2,
        sham: bool = False,
    ) -> np.ndarray | None:
        """``target`` (2-D uint8) with the masked tumour of ``donor`` blended in, or None when
        either has no head or the mask no tumour. ``sham``: paste the normal tissue mirroring
        the tumour instead (:meth:`mirrored`), at the mean grey level of the tissue it covers,
        or None when less than half of it is left."""
        if target.ndim != 2 or donor.shape != mask.shape:
            raise ValueError(f"need a 2-D target and a donor and mask of one shape, got {target.shape}, {donor.shape}, {mask.shape}.")
        tumour = mask > 127
        head_t, head_d = cls._head(target.astype(np.float32)), cls._head(donor.astype(np.float32))
        if tumour.sum() < 16 or head_t.sum() < 256 or head_d.sum() < 256:
            return None
        if sham:
            normal = cls.mirrored(tumour, head_d)
            if normal.sum() < max(16, tumour.sum() // 2):
                return None
            tumour = normal
        rows, cols = np.nonzero(tumour)
        # a margin around the tumour leaves the blurred mask room to fade out
        pad = 8
        top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
        bottom, right = min(mask.shape[0], rows.max() + 1 + pad), min(mask.shape[1], cols.max() + 1 + pad)
        width = lambda head: np.ptp(np.nonzero(head.any(axis=0))[0]) + 1  # noqa: E731
        factor = width(head_t) / width(head_d) * rng.uniform(*scale)
        size = (max(1, round((right - left) * factor)), max(1, round((bottom - top) * factor)))
        ref = max(float(np.quantile(donor[head_d], 0.99)), 1.0)
        patch = np.asarray(Image.fromarray(donor[top:bottom, left:right]).resize(size, Image.BILINEAR), np.float32) / ref
        alpha = np.asarray(Image.fromarray(tumour[top:bottom, left:right].astype(np.uint8) * 255).resize(size, Image.BILINEAR), np.float32) / 255
        alpha = np.clip(ndimage.gaussian_filter(alpha, sigma=max(1.0, 0.03 * max(size)), mode="constant"), 0, 1)
        if rng.random() < invert_p:
            patch = np.clip(1.0 - patch, 0, 1)
        patch = patch * float(np.quantile(target[head_t], 0.99)) * rng.uniform(*gain)
        # the tumour's centre lands on a random pixel well inside the head
        inner = ndimage.binary_erosion(head_t, iterations=max(1, min(size) // 2)) if min(size) > 1 else head_t
        ys, xs = np.nonzero(inner if inner.any() else head_t)
        k = rng.randrange(len(ys))
        y0, x0 = int(ys[k]) - size[1] // 2, int(xs[k]) - size[0] // 2
        out = target.astype(np.float32)
        ty0, tx0 = max(0, y0), max(0, x0)
        ty1, tx1 = min(out.shape[0], y0 + size[1]), min(out.shape[1], x0 + size[0])
        if ty1 <= ty0 or tx1 <= tx0:
            return None
        sub = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
        a = alpha[sub] * head_t[ty0:ty1, tx0:tx1]
        window, piece = out[ty0:ty1, tx0:tx1], patch[sub]
        if sham and a.sum() > 0:
            # normal tissue at the level of the tissue it covers: a texture seam, not a mass
            piece = piece + float((a * window).sum() - (a * piece).sum()) / float(a.sum())
        out[ty0:ty1, tx0:tx1] = (1 - a) * window + a * piece
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def __call__(self, sample, image: Image.Image) -> tuple[Image.Image, int]:
        """``(image, label)``: the scan of ``sample`` and its label, the scan with a pasted
        tumour and the glioma label, or the scan with a sham paste and its own label."""
        if sample.label != self.notumor_label or self.p + self.sham_p == 0:
            return image, sample.label
        draw = random.random()
        if draw >= self.p + self.sham_p:
            return image, sample.label
        sham = draw >= self.p
        image_path, mask_path = random.choice(self.donors)
        donor = np.asarray(to_grayscale(read_scan(image_path)))
        mask = np.asarray(Image.open(mask_path).convert("L"))
        if donor.shape != mask.shape:
            return image, sample.label
        pasted = self.paste(
            np.asarray(to_grayscale(image)), donor, mask, random, self.scale, self.gain, self.invert_p, sham=sham
        )
        if pasted is None:
            return image, sample.label
        return Image.fromarray(pasted), sample.label if sham else self.glioma_label


class ClassificationPresetTrain:
    """Augmentation for training; ``strength`` 0 gives resize + flip only."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = INPUT_MEAN,
        std: Sequence[float] = INPUT_STD,
        strength: float = 1.0,
        invert_p: float = 0.0,
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
                RandomMaskedInversion(invert_p),
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


def batch_mixing(mixup: float, cutmix: float, prob: float, num_classes: int):
    """Mixup and cutmix of whole training batches (``timm.data.Mixup``), or None when both are off.

    The returned callable maps ``(images, labels)`` of an even-sized batch to the mixed images and
    soft labels (class probabilities summing to 1: each scan's share of the blend or of the
    area). Label smoothing is left to the loss (``torch.nn.CrossEntropyLoss`` smooths soft
    labels as it does hard ones), so mixed and unmixed batches share one criterion. Mixing pairs
    each scan with the batch reversed, so a scan blends with a scan of another class only as often
    as the batch holds one; it never changes the scans' grey-level range (a blend of two scans
    stays between them; cutmix copies pixels).
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=0.5, mode="batch",
        label_smoothing=0.0, num_classes=num_classes,
    )


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
