"""The training configuration: one typed dataclass that every library function reads.

Its defaults are the shipped recipe, and the defaults of ``python -m train``. The command line
parses into a :class:`TrainConfig` (:meth:`TrainConfig.from_namespace`); ``train.finalize``
rebuilds one from a model card (:meth:`TrainConfig.from_dict`); ``train.compare`` builds one
per architecture.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.constants import DEFAULT_IMAGE_SIZE, data_dir

__all__ = ["SPLITS", "TrainConfig"]

#: How validation is carved from Kaggle Training (see ``python -m train --help``).
SPLITS = ("group", "stratified", "group-strict")
_PATH_FIELDS = ("data_dir", "output", "audit")


def plain(value: Any) -> Any:
    """``value`` ready for JSON: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (``python -m train --help`` says what each option
    does). Fields without an option keep the recipe's value on the command line."""

    data_dir: Path = field(default_factory=data_dir)
    extra_data: tuple[Path, ...] = ()
    output: Path = Path("runs/train")
    arch: str = "efficientnet_lite1"
    epochs: int = 10
    #: The first epochs train the classifier head only.
    freeze_epochs: int = 1
    freeze_stages: int = 2
    image_size: int = DEFAULT_IMAGE_SIZE
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    #: Augmentation strength (``train.presets.ClassificationPresetTrain``; 0 = resize and flip).
    augment: float = 1.0
    synth_t2: float = 0.5
    crop_head: bool = True
    #: Share of each Training source held out for validation.
    val_fraction: float = 0.15
    split: str = "group"
    #: The audit report ``--split group-strict`` reads (None: ``assets/audit.json``).
    audit: Path | None = None
    seed: int = 0
    workers: int = min(4, os.cpu_count() or 1)
    device: str | None = None
    resume: bool = False
    #: Start from random weights (networks without ImageNet weights, in ``train.compare``).
    no_pretrained: bool = False
    max_per_class: int | None = None
    #: Also report Testing with horizontal-flip test-time augmentation.
    tta: bool = True
    no_test: bool = False
    no_finalize: bool = False
    no_progress: bool = False

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "extra_data", tuple(Path(p) for p in self.extra_data or ()))

    def check(self) -> None:
        """Refuse values no run can use, naming the option and the accepted ones."""
        if self.split not in SPLITS:
            raise SystemExit(f"--split {self.split!r} is not one of {SPLITS}.")
        for name in ("epochs", "image_size", "batch_size"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise SystemExit(f"freeze_epochs must be in [0, {self.epochs - 1}] (below --epochs), got {self.freeze_epochs}.")
        if self.freeze_stages < 0:
            raise SystemExit(f"--freeze-stages must be at least 0, got {self.freeze_stages}.")
        if not 0.0 <= self.synth_t2 <= 1.0:
            raise SystemExit(f"--synth-t2 must be between 0 and 1, got {self.synth_t2}.")
        if self.lr <= 0:
            raise SystemExit(f"--lr must be positive, got {self.lr}.")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a model card's ``training.config``: keys this class lacks (options of older
        cards) are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings), as stored in the model card."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
