"""The training configuration: one typed dataclass that every library function reads.

``python -m train`` parses its command line into a :class:`TrainConfig`
(:meth:`TrainConfig.from_namespace`); ``train.finalize`` rebuilds one from a model card
(:meth:`TrainConfig.from_dict`); ``train.compare`` builds one per architecture. The parser's
defaults are this class's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.constants import DEFAULT_ARCH, DEFAULT_IMAGE_SIZE, data_dir

__all__ = ["BALANCE_MODES", "SPLITS", "TrainConfig"]

#: How validation is carved from Kaggle Training (see ``python -m train --help``).
SPLITS = ("group", "stratified", "group-strict")
#: How training batches are drawn (``train.sampling``).
BALANCE_MODES = ("none", "class", "appearance")
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
    """Everything a training run depends on (``python -m train --help`` says what each does)."""

    data_dir: Path = field(default_factory=data_dir)
    extra_data: tuple[Path, ...] = ()
    output: Path = Path("runs/train")
    arch: str = DEFAULT_ARCH
    epochs: int = 15
    freeze_epochs: int = 1
    freeze_stages: int = 0
    image_size: int = DEFAULT_IMAGE_SIZE
    ema_decay: float = 0.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    augment: float = 1.0
    invert_p: float = 0.0
    synth_t2: float = 0.0
    #: Probability of pasting a masked tumour of a training patient into a "no tumour" scan,
    #: which then counts as a glioma (``train.presets.PasteLesion``).
    paste_lesion: float = 0.0
    #: Probability of a sham paste instead: the donor's normal tissue mirroring the tumour, and
    #: the scan keeps its "no tumour" label.
    paste_sham: float = 0.0
    #: Batch mixing (``train.presets.batch_mixing``): Beta(alpha, alpha) for mixup and for
    #: cutmix (0 = off), and the share of batches mixed.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    crop_head: bool = False
    balance: str = "none"
    val_fraction: float = 0.15
    split: str = "group"
    audit: Path | None = None
    seed: int = 0
    #: Seed of the train/validation split alone (None: ``seed``), so that runs that differ in
    #: ``seed`` can share one validation split (for example to average their weights).
    split_seed: int | None = None
    workers: int = min(4, os.cpu_count() or 1)
    device: str | None = None
    resume: bool = False
    no_pretrained: bool = False
    max_per_class: int | None = None
    tta: bool = False
    no_test: bool = False
    no_finalize: bool = False
    no_progress: bool = False

    @property
    def effective_split_seed(self) -> int:
        """The seed the train/validation split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

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
            raise SystemExit(f"--freeze-epochs must be in [0, {self.epochs - 1}], got {self.freeze_epochs}.")
        if self.freeze_stages < 0:
            raise SystemExit(f"--freeze-stages must be at least 0, got {self.freeze_stages}.")
        if self.balance not in BALANCE_MODES:
            raise SystemExit(f"--balance {self.balance!r} is not one of {BALANCE_MODES}.")
        if not 0.0 <= self.invert_p <= 1.0:
            raise SystemExit(f"--invert-p must be between 0 and 1, got {self.invert_p}.")
        if not 0.0 <= self.synth_t2 <= 1.0:
            raise SystemExit(f"--synth-t2 must be between 0 and 1, got {self.synth_t2}.")
        if not 0.0 <= self.paste_lesion <= 1.0:
            raise SystemExit(f"--paste-lesion must be between 0 and 1, got {self.paste_lesion}.")
        if not 0.0 <= self.paste_sham <= 1.0 - self.paste_lesion:
            raise SystemExit(
                f"--paste-sham must be between 0 and 1 - --paste-lesion = {1.0 - self.paste_lesion:g}, got {self.paste_sham}."
            )
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise SystemExit(f"--{name} must be at least 0 (0 = off), got {getattr(self, name)}.")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise SystemExit(f"--mix-prob must be between 0 and 1, got {self.mix_prob}.")
        if self.lr <= 0:
            raise SystemExit(f"--lr must be positive, got {self.lr}.")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a model card's ``training.config`` (keys of older cards that no longer exist
        are ignored; missing ones take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings), as stored in the model card."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
