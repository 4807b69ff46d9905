"""The training data of a run: Kaggle Training split into train and validation, each extra
source split by patient, and Testing; the external development set refused.

``python -m train``, ``train.finalize`` (which rebuilds the very split a model was selected on)
and ``train.compare`` all call :func:`load_data`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.constants import AUDIT_NAME, assets_dir, external_dir

from .audit import duplicate_groups
from .config import TrainConfig
from .data import (
    Sample,
    check_not_external,
    find_extra_samples,
    find_samples,
    group_split,
    limit_per_class,
    patient_split,
    split_dirs,
    stratified_split,
)

__all__ = ["load_data"]

logger = logging.getLogger("train")


def load_data(config: TrainConfig) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, validation, Testing) samples: the Kaggle Training folder split by ``--split``,
    plus each ``--extra-data`` source split by patient. Refuses any scan of the external
    development set."""
    train, val, test_samples = _load_kaggle(config)
    for folder in config.extra_data:
        extra = find_extra_samples(folder)
        if config.max_per_class:
            extra = limit_per_class(extra, config.max_per_class)
        extra_train, extra_val = patient_split(extra, config.val_fraction, config.seed)
        logger.info(
            "extra source %s: %d train, %d validation scans (%d / %d patients)",
            Path(folder).name, len(extra_train), len(extra_val),
            len({s.patient for s in extra_train}), len({s.patient for s in extra_val}),
        )
        train, val = train + extra_train, val + extra_val
    check_not_external(train + val, external_dir())
    return train, val, test_samples


def _load_kaggle(config: TrainConfig):
    train_dir, test_dir = split_dirs(config.data_dir, need_testing=not config.no_test)
    samples = find_samples(train_dir)
    test_samples = [] if config.no_test else find_samples(test_dir)
    if config.max_per_class:
        samples = limit_per_class(samples, config.max_per_class)
        test_samples = limit_per_class(test_samples, config.max_per_class)
    if config.split == "stratified":
        train, val = stratified_split(samples, config.val_fraction, config.seed)
        return train, val, test_samples
    if config.split == "group-strict":
        leaked = _training_duplicates_of_testing(config, train_dir)
        kept = [s for s in samples if s.path.resolve() not in leaked]
        logger.info("group-strict: left out %d Training scans that duplicate a Testing scan", len(samples) - len(kept))
        samples = kept
    groups = duplicate_groups([s.path for s in samples])
    train, val = group_split(samples, groups, config.val_fraction, config.seed)
    return train, val, test_samples


def _training_duplicates_of_testing(config: TrainConfig, train_dir: Path) -> set[Path]:
    """Training scans in a duplicate group with a Testing scan, according to the audit report."""
    path = config.audit or (assets_dir() / AUDIT_NAME)
    if not path.is_file():
        raise SystemExit(f"--split group-strict needs the audit report {str(path)!r}: run python -m train.audit --data-dir DIR.")
    report = json.loads(path.read_text(encoding="utf-8"))
    n_training = len(find_samples(train_dir))
    if report["counts"]["training"] != n_training:
        raise SystemExit(
            f"The audit report {str(path)!r} describes {report['counts']['training']} Training scans, "
            f"but {str(train_dir)!r} holds {n_training}: rerun python -m train.audit on this data."
        )
    root = Path(config.data_dir).resolve()
    leaked: set[Path] = set()
    for group in report["groups"]:
        files = group["files"]
        if any(f.startswith("Testing/") for f in files):
            leaked.update(root / f for f in files if f.startswith("Training/"))
    return leaked
