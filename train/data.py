"""The dataset on disk: class folders, splits, a fingerprint of the files used."""

from __future__ import annotations

import csv
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
    "limit_per_class",
    "Sample",
    "ScanFolder",
    "find_samples",
    "split_dirs",
    "fingerprint",
    "stratified_split",
    "group_split",
    "class_counts",
    "find_extra_samples",
    "patient_split",
    "check_not_external",
]

logger = logging.getLogger(__name__)

_FOLDER_TO_CLASS = {name: name for name in CLASS_NAMES} | LEGACY_CLASS_FOLDERS


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    #: Which training source the scan comes from ("kaggle", or an extra source's folder name).
    source: str = "kaggle"
    #: The patient, where the source names one (extra sources); splits keep a patient on one side.
    patient: str | None = None
    #: The MRI sequence, where the source names one (for example flair, t1pre, t1post).
    sequence: str | None = None

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


def _class_of_folder(folder: str) -> str | None:
    """The class of a folder name: a class name, a legacy name, or ``CLASS-anything``
    (for example ``notumor-slices``)."""
    name = folder.lower()
    return _FOLDER_TO_CLASS.get(name) or _FOLDER_TO_CLASS.get(name.split("-", 1)[0])


def find_extra_samples(root: str | Path) -> list[Sample]:
    """The scans of an extra training source, from its CSV manifests.

    ``root`` holds one or more ``*.csv`` files with columns ``path`` (relative to ``root``) and
    ``patient``, and optionally ``sequence`` and ``label``. Without a ``label`` column the class
    is the first folder of ``path`` (a class name, or ``CLASS-anything`` such as
    ``notumor-slices``). Every scan is tagged with the source (``root``'s name) and its patient,
    so that :func:`patient_split` keeps each patient on one side.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Extra data folder {str(root)!r} does not exist.")
    samples: list[Sample] = []
    manifests = sorted(root.glob("*.csv"))
    for manifest in manifests:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"path", "patient"} <= set(reader.fieldnames or ()):
                logger.info("%s: no path and patient columns, skipped", manifest)
                continue
            for row in reader:
                rel = Path(row["path"])
                class_name = (row.get("label") or "").strip() or _class_of_folder(rel.parts[0])
                if class_name not in CLASS_NAMES:
                    raise ValueError(
                        f"{manifest.name}: cannot tell the class of {row['path']!r} "
                        f"(got {class_name!r}); accepted classes are {list(CLASS_NAMES)}."
                    )
                path = root / rel
                if not path.is_file():
                    raise FileNotFoundError(f"{manifest.name} lists {row['path']!r}, which is not in {str(root)!r}.")
                samples.append(
                    Sample(path, CLASS_NAMES.index(class_name), root.name, row["patient"], row.get("sequence") or None)
                )
    if not samples:
        raise FileNotFoundError(
            f"No scans listed in {str(root)!r}: an extra source needs CSV manifests with path and "
            f"patient columns (found {[m.name for m in manifests]})."
        )
    return sorted(samples, key=_key)


def patient_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Train and validation scans of one source, every patient on one side only."""
    patients = sorted({s.patient for s in samples})
    if None in patients:
        raise ValueError("patient_split needs every sample to name its patient.")
    index = {p: i for i, p in enumerate(patients)}
    return group_split(samples, [index[s.patient] for s in samples], val_fraction, seed)


def check_not_external(samples: Sequence[Sample], external: str | Path) -> None:
    """Refuse to train on the external development set: no sample may lie under ``external``."""
    base = Path(external).resolve()
    for sample in samples:
        if sample.path.resolve().is_relative_to(base):
            raise ValueError(
                f"{str(sample.path)!r} lies in the external development set {str(base)!r}, which is "
                "for validation and reporting only: it must never be trained on."
            )


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

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None,
                 synthesise: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform
        #: ``synthesise(sample, image) -> image`` before ``transform`` (``train.presets.SyntheticT2``).
        self.synthesise = synthesise

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = to_grayscale(read_scan(sample.path))
        if self.synthesise is not None:
            image = self.synthesise(sample, image)
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]


def limit_per_class(samples: Sequence[Sample], n: int) -> list[Sample]:
    """The first ``n`` samples of each class, in order (smoke tests and quick runs)."""
    kept, per_class = [], {}
    for s in samples:
        if per_class.get(s.label, 0) < n:
            kept.append(s)
            per_class[s.label] = per_class.get(s.label, 0) + 1
    return kept
