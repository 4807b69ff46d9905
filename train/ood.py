"""Fit the out-of-distribution gate of :mod:`core.ood` and collect what calibration needs.

One pass per split gives, for every scan, the gate's features (statistics of intermediate
blocks, :func:`core.ood.forward_with_taps`), the logits and
whether :func:`core.ood.image_problem` objects to the image: the Training features fit the
gate (class means, Ledoit-Wolf-shrunk shared covariance), the validation features set its
threshold, the validation logits fit the temperature (:mod:`train.calibrate`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.ood import FeatureGate, image_problem
from core.preprocess import eval_transform
from core.runtime import Runtime, with_mirror
from core.scan import read_scan

from .data import Sample
from .non_mri import non_mri_images

__all__ = ["SplitOutputs", "extract", "fit_gate", "fit_reject_threshold", "non_mri_features", "rejection_rate"]

logger = logging.getLogger(__name__)

#: Share of validation scans the feature gate may reject: its threshold is this quantile.
VAL_REJECT_RATE = 0.005
#: Blocks whose output statistics the gate reads (measured: see :mod:`core.ood`).
GATE_STAGES = (2, 4)
#: Share of the generated non-MRI images (``train.non_mri``, seed 0) that pass the image
#: checks and that the gate alone must call "not a brain MRI": the reject threshold is the
#: matching quantile of their distances. Brain MRIs between the two thresholds are "outside the
#: training data", not rejected. Measured on another seed of the generator.
NON_MRI_REJECT_RATE = 0.95
NON_MRI_FIT_SEED = 0


@dataclass(frozen=True)
class SplitOutputs:
    features: np.ndarray  # (N, D) float64 gate features (statistics of the tapped blocks)
    logits: np.ndarray  # (N, C) float64
    targets: np.ndarray  # (N,) int
    image_rejected: np.ndarray  # (N,) bool: the image checks object
    mirror_logits: np.ndarray | None = None  # (N, C) logits of the mirror images, when asked for


class _Scans(Dataset):
    """Scans read as the app reads them: tensor, label and whether the image checks object."""

    def __init__(self, samples: Sequence[Sample], image_size: int, crop_head: bool = False):
        self.samples = list(samples)
        self.transform = eval_transform(image_size, crop_head=crop_head)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = read_scan(sample.path)
        return self.transform(image), sample.label, image_problem(image) is not None


@torch.inference_mode()
def extract(
    runtime: Runtime,
    samples: Sequence[Sample],
    image_size: int,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = False,
    desc: str = "features",
    mirror: bool = False,
    crop_head: bool = False,
) -> SplitOutputs:
    """Gate features and logits of ``samples`` in one forward pass (float32, as the app runs);
    with ``mirror``, the mirror images go through the same pass, as in ``core``. ``runtime``
    must tap the gate's stages."""
    if not samples:
        raise ValueError("No samples to extract features from.")
    loader = DataLoader(_Scans(samples, image_size, crop_head), batch_size=batch_size, num_workers=workers)
    features, logits, mirrored, targets, rejected = [], [], [], [], []
    for images, labels, problems in tqdm(loader, desc=desc, leave=False, disable=not progress):
        n = len(images)
        out, taps = runtime.run(with_mirror(images) if mirror else images)
        if taps is None:
            raise ValueError("The runtime taps no block statistics; the gate needs them.")
        features.append(taps[:n])
        logits.append(out[:n])
        mirrored.append(out[n:])
        targets.append(np.asarray(labels))
        rejected.append(np.asarray(problems))
    return SplitOutputs(
        features=np.concatenate(features),
        logits=np.concatenate(logits),
        targets=np.concatenate(targets),
        image_rejected=np.concatenate(rejected).astype(bool),
        mirror_logits=np.concatenate(mirrored) if mirror else None,
    )


def fit_gate(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    val_features: np.ndarray,
    num_classes: int,
    val_reject_rate: float = VAL_REJECT_RATE,
    stages: tuple[int, ...] = GATE_STAGES,
) -> FeatureGate:
    """Class means and shrunk shared covariance from Training; threshold from validation."""
    from sklearn.covariance import LedoitWolf

    train_features = np.asarray(train_features, dtype=np.float64)
    train_targets = np.asarray(train_targets)
    if not 0 < val_reject_rate < 1:
        raise ValueError(f"val_reject_rate must be in (0, 1), got {val_reject_rate!r}.")
    missing = sorted(set(range(num_classes)) - set(train_targets.tolist()))
    if missing:
        raise ValueError(f"Training features lack the classes {missing}; cannot fit class means.")
    means = np.stack([train_features[train_targets == c].mean(axis=0) for c in range(num_classes)])
    centred = train_features - means[train_targets]
    estimator = LedoitWolf(assume_centered=True).fit(centred)
    logger.info("feature gate: %d features, Ledoit-Wolf shrinkage %.3f", train_features.shape[1], estimator.shrinkage_)
    precision = torch.as_tensor(np.linalg.inv(estimator.covariance_))
    provisional = FeatureGate(torch.as_tensor(means), precision, threshold=1.0, stages=stages)
    distances = provisional.distance(torch.as_tensor(val_features)).numpy()
    threshold = float(np.quantile(distances, 1.0 - val_reject_rate))
    return FeatureGate(torch.as_tensor(means), precision, threshold, stages)


@torch.inference_mode()
def non_mri_features(runtime: Runtime, image_size: int, crop_head: bool = False, seed: int = NON_MRI_FIT_SEED) -> np.ndarray:
    """Gate features of the generated non-MRI images that the image checks let through."""
    transform = eval_transform(image_size, crop_head=crop_head)
    images = [image for _, image in non_mri_images(seed=seed) if image_problem(image) is None]
    _, taps = runtime.run(torch.stack([transform(image) for image in images]))
    return taps


def fit_reject_threshold(gate: FeatureGate, non_mri: np.ndarray, rate: float = NON_MRI_REJECT_RATE) -> FeatureGate:
    """``gate`` with the distance above which an input is not a brain MRI: the ``1 - rate``
    quantile of the non-MRI images' distances, and never below ``gate.threshold``."""
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate!r}.")
    distances = gate.distance(torch.as_tensor(non_mri)).numpy()
    reject = max(float(np.quantile(distances, 1.0 - rate)), gate.threshold)
    return replace(gate, reject_threshold=reject)


def rejection_rate(gate: FeatureGate, outputs: SplitOutputs) -> dict[str, float]:
    """Shares of a split rejected as not a brain MRI (feature gate, image checks, either), and
    the share the gate puts outside the training data."""
    scores = gate.score(torch.as_tensor(outputs.features)).numpy()
    by_features = scores > gate.reject_score
    return {
        "features": float(by_features.mean()),
        "image_checks": float(outputs.image_rejected.mean()),
        "either": float((by_features | outputs.image_rejected).mean()),
        "outside_training": float(((scores > 1.0) & ~by_features & ~outputs.image_rejected).mean()),
    }
