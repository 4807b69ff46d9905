"""The dataset on disk: class folders, splits, a fingerprint of the files used."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import Dataset

from core.constants import CLASS_NAMES, LEGACY_CLASS_FOLDERS, SUPPORTED_EXTENSIONS
from core.preprocess import to_grayscale
from core.scan import read_scan

__all__ = [
    "Sample",
    "ScanFolder",
    "find_samples",
    "split_dirs",
    "fingerprint",
    "stratified_split",
    "group_split",
    "class_counts",
]

logger = logging.getLogger(__name__)

_FOLDER_TO_CLASS = {name: name for name in CLASS_NAMES} | LEGACY_CLASS_FOLDERS


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def split_dirs(data_dir: str | Path, need_testing: bool = True) -> tuple[Path, Path]:
    """``DIR/Training`` and ``DIR/Testing`` of a Kaggle-layout download."""
    root = Path(data_dir)
    found = {"Testing": root / "Testing"}
    for wanted in ("Training", "Testing") if need_testing else ("Training",):
        matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == wanted.lower()] if root.is_dir() else []
        if not matches:
            raise FileNotFoundError(
                f"{str(root)!r} has no {wanted}/ folder; expected the Kaggle layout "
                "DIR/Training/<class>/ and DIR/Testing/<class>/."
            )
        found[wanted] = matches[0]
    return found["Training"], found["Testing"]


def find_samples(split_dir: str | Path) -> list[Sample]:
    """All images under ``split_dir/<class>/``, sorted by path.

    Class folders may use the current names (glioma, meningioma, notumor, pituitary) or the
    older ones (glioma_tumor, meningioma_tumor, no_tumor, pituitary_tumor).
    """
    root = Path(split_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(root)!r} does not exist.")
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        class_name = _FOLDER_TO_CLASS.get(folder.name.lower())
        if class_name is None:
            raise ValueError(
                f"Unknown class folder {folder.name!r} in {str(root)!r}; accepted names are "
                f"{sorted(_FOLDER_TO_CLASS)}."
            )
        if class_name in seen:
            raise ValueError(
                f"Folders {seen[class_name]!r} and {folder.name!r} in {str(root)!r} both hold "
                f"class {class_name!r}."
            )
        seen[class_name] = folder.name
        label = CLASS_NAMES.index(class_name)
        samples.extend(
            Sample(path, label)
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS
        )
    if not samples:
        raise FileNotFoundError(
            f"No images found in {str(root)!r}; expected one folder per class: {list(CLASS_NAMES)}."
        )
    return samples


def class_counts(samples: Sequence[Sample]) -> dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}


def fingerprint(samples: Sequence[Sample], root: str | Path | None = None) -> str:
    """sha256 over the class, relative path and content of every file: names the exact data used."""
    digest = hashlib.sha256()
    for sample in samples:
        name = sample.path.relative_to(root) if root is not None else sample.path.name
        digest.update(f"{sample.label}:{name.as_posix() if isinstance(name, Path) else name}:".encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """A seeded split of ``samples`` into train and validation, keeping class proportions."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    labels = [s.label for s in samples]
    train, val = train_test_split(
        list(samples), test_size=val_fraction, stratify=labels, random_state=seed
    )
    return sorted(train, key=_key), sorted(val, key=_key)


def group_split(
    samples: Sequence[Sample], groups: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Like :func:`stratified_split`, but no group (near-duplicate scans) crosses the boundary."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n_splits = max(2, round(1.0 / val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = np.array([s.label for s in samples])
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, np.asarray(groups)))
    return (
        sorted((samples[i] for i in train_idx), key=_key),
        sorted((samples[i] for i in val_idx), key=_key),
    )


def _key(sample: Sample) -> str:
    return str(sample.path)


class ScanFolder(Dataset):
    """Samples read through :func:`core.read_scan` (the app's reader), as grey PIL images."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = to_grayscale(read_scan(sample.path))
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]
