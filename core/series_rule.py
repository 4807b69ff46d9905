"""One answer for a whole series, from the answers of its slices.

:class:`SeriesRule` reads the per-slice predictions of the assessed slices (enough head in them,
recognised as a brain MRI) and counts, for each tumour class, the slices that *support* it: its
label at probability ``min_probability`` or more. A tumour class is *supported* when at least
``min_slices`` slices, and at least ``min_share`` of the assessed ones, support it. The series
answer is the supported tumour class with the most supporting slices; "no tumour" only when no
tumour class is supported, so one odd slice cannot decide it either way. The thresholds are
fitted on validation series (``python -m train.series``) and stored in the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .constants import CLASS_NAMES, NEGATIVE_CLASS

if TYPE_CHECKING:
    from .model import Prediction
    from .rules import SequenceCoverage
    from .sequence import SequenceInfo
    from .series import Series

__all__ = [
    "DISAGREEMENT",
    "FEW_ASSESSED",
    "ISOLATED_TUMOUR_SLICES",
    "OUTSIDE_TRAINING",
    "SEQUENCE_NOT_LEARNED",
    "SERIES_FLAG_KINDS",
    "SERIES_RULES",
    "KeySlice",
    "SeriesFlag",
    "SeriesPrediction",
    "SeriesRule",
    "assessed_slices",
    "decide",
    "enough_head",
    "head_areas",
    "series_prediction",
]

#: Most assessed slices lie outside the training data.
OUTSIDE_TRAINING = "outside_training"
#: Two tumour classes each have the support of enough slices.
DISAGREEMENT = "disagreement"
#: A "no tumour" answer although some slices support a tumour class, too few to decide.
ISOLATED_TUMOUR_SLICES = "isolated_tumour_slices"
#: Fewer assessed slices than the rule needs to call a tumour.
FEW_ASSESSED = "few_assessed"
#: Training barely covers the answer on the series' sequence (``core.rules.SequenceCoverage``).
SEQUENCE_NOT_LEARNED = "sequence_not_learned"
SERIES_FLAG_KINDS = (OUTSIDE_TRAINING, SEQUENCE_NOT_LEARNED, DISAGREEMENT, ISOLATED_TUMOUR_SLICES, FEW_ASSESSED)
#: The rules compared on validation: the served one and two plain alternatives.
SERIES_RULES = ("support", "majority", "maximum")
#: Slices whose head covers less than this share of the series' largest head are not assessed
#: (the top and bottom of a volume).
MIN_HEAD_SHARE = 0.35
#: Most slices shown as the ones that drove the answer.
KEY_SLICES = 5


@dataclass(frozen=True)
class SeriesFlag:
    """A reason to review a series answer: its kind and the numbers behind it."""

    kind: str
    #: The count or share the rule read, and the limit it crossed.
    value: float | None = None
    limit: float | None = None
    #: The tumour classes concerned (``sequence_not_learned``: the answer, then the classes
    #: training barely covers on the sequence, as ``core.rules.Flag``).
    classes: tuple[str, ...] = ()
    #: For ``sequence_not_learned``: the series' sequence.
    sequence: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SERIES_FLAG_KINDS:
            raise ValueError(f"Unknown series flag kind {self.kind!r}; choose one of {SERIES_FLAG_KINDS}.")


@dataclass(frozen=True)
class KeySlice:
    """A slice that drove the series answer."""

    index: int
    position_mm: float | None
    label: str
    #: The slice's probability of the series answer (for "no tumour": of its likeliest tumour class).
    probability: float


@dataclass(frozen=True)
class SeriesRule:
    """The thresholds of the series answer (see the module docstring)."""

    min_probability: float = 0.7
    min_slices: int = 2
    min_share: float = 0.0
    #: Share of assessed slices outside the training data at which the series is.
    outside_share: float = 0.5
    #: "support" (served), "majority" or "maximum": the alternatives it is compared with.
    kind: str = "support"
    class_names: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self) -> None:
        if self.kind not in SERIES_RULES:
            raise ValueError(f"Unknown series rule {self.kind!r}; choose one of {SERIES_RULES}.")
        if not 0 < self.min_probability < 1 or self.min_slices < 1 or not 0 <= self.min_share < 1:
            raise ValueError(
                f"Bad series rule: min_probability={self.min_probability!r} (0-1), min_slices={self.min_slices!r} "
                f"(at least 1), min_share={self.min_share!r} (0-1)."
            )

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> SeriesRule:
        """The rule the model card stores (``card["series"]``); the defaults when it has none."""
        info = card.get("series") or {}
        return cls(
            min_probability=float(info.get("min_probability", cls.min_probability)),
            min_slices=int(info.get("min_slices", cls.min_slices)),
            min_share=float(info.get("min_share", cls.min_share)),
            outside_share=float(info.get("outside_share", cls.outside_share)),
            class_names=tuple(card.get("class_names", CLASS_NAMES)),
        )

    def to_card(self) -> dict[str, Any]:
        return {"min_probability": self.min_probability, "min_slices": self.min_slices, "min_share": self.min_share,
                "outside_share": self.outside_share}


def head_areas(images: Sequence[Image.Image]) -> np.ndarray:
    """Share of each slice's pixels that belong to the head (brighter than a tenth of the
    series' 99th percentile, one reference for the whole series)."""
    from .preprocess import HEAD_THRESHOLD, to_grayscale  # torch: loaded with the model, not with the schema

    greys = [np.asarray(to_grayscale(image).reduce(max(1, max(image.size) // 128)), dtype=np.float32) for image in images]
    if not greys:
        return np.zeros(0)
    reference = float(np.percentile(np.concatenate([g.ravel() for g in greys]), 99))
    if reference <= 0:
        return np.zeros(len(greys))
    return np.array([float((g > HEAD_THRESHOLD * reference).mean()) for g in greys])


@dataclass(frozen=True)
class SeriesDecision:
    """What :func:`decide` returns: the answer, its confidence, its flags and key slices."""

    label: str
    confidence: float
    #: Supporting slices per tumour class.
    support: dict[str, int]
    flags: tuple[SeriesFlag, ...]
    key_slices: tuple[KeySlice, ...]
    outside_training: bool


@dataclass(frozen=True)
class SeriesPrediction:
    """What the model says about one series, with every slice's own prediction."""

    name: str
    source: str
    plane: str
    sequence: SequenceInfo
    label: str
    confidence: float
    flags: tuple[SeriesFlag, ...]
    outside_training: bool
    key_slices: tuple[KeySlice, ...]
    #: Slices supporting each tumour class (see :class:`SeriesRule`).
    support: dict[str, int]
    #: Per slice, in series order: its prediction, whether it counted, its position in mm.
    slices: tuple[Prediction, ...] = field(repr=False)
    assessed_mask: tuple[bool, ...] = field(repr=False)
    positions_mm: tuple[float, ...] = field(repr=False)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def assessed(self) -> int:
        return int(sum(self.assessed_mask))

    @property
    def flag_kinds(self) -> tuple[str, ...]:
        return tuple(flag.kind for flag in self.flags)


def enough_head(images: Sequence[Image.Image]) -> np.ndarray:
    """Which slices hold enough head: at least :data:`MIN_HEAD_SHARE` of the series' largest."""
    areas = head_areas(images)
    largest = float(areas.max()) if len(areas) else 0.0
    return areas >= MIN_HEAD_SHARE * largest if largest > 0 else np.zeros(len(areas), dtype=bool)


def assessed_slices(images: Sequence[Image.Image], predictions: Sequence[Prediction],
                    enough: np.ndarray | None = None) -> np.ndarray:
    """Which slices count: enough head in them (:func:`enough_head`, or ``enough`` where the
    caller has it already) and recognised as a brain MRI."""
    enough = enough_head(images) if enough is None else np.asarray(enough, dtype=bool)
    return enough & np.array([p.is_brain_mri for p in predictions], dtype=bool)


def series_prediction(
    rule: SeriesRule,
    series: Series,
    predictions: Sequence[Prediction],
    sequence: SequenceInfo | None = None,
    coverage: SequenceCoverage | None = None,
    enough: np.ndarray | None = None,
) -> SeriesPrediction:
    """The answer for ``series`` from its slices' ``predictions`` (in series order).

    ``sequence``: the series' sequence as decided (default: ``series.sequence``); with
    ``coverage`` the answer is flagged ``sequence_not_learned`` where training barely covers it
    on that sequence. ``enough``: :func:`enough_head` of its slices, where the caller has it."""
    if len(predictions) != len(series.slices):
        raise ValueError(f"{len(predictions)} predictions for a series of {len(series.slices)} slices.")
    sequence = sequence if sequence is not None else series.sequence
    assessed = assessed_slices(series.slices, predictions, enough)
    decision = decide(rule, predictions, assessed, series.positions_mm)
    flags = decision.flags
    found = coverage.flag_of(decision.label, sequence) if coverage is not None and decision.key_slices else None
    if found is not None:
        at = 1 if flags and flags[0].kind == OUTSIDE_TRAINING else 0
        flags = (*flags[:at], SeriesFlag(SEQUENCE_NOT_LEARNED, found.value, found.limit, found.classes, found.sequence), *flags[at:])
    return SeriesPrediction(
        name=series.name, source=series.source, plane=series.plane, sequence=sequence,
        label=decision.label, confidence=decision.confidence, flags=flags,
        outside_training=decision.outside_training, key_slices=decision.key_slices, support=decision.support,
        slices=tuple(predictions), assessed_mask=tuple(bool(a) for a in assessed), positions_mm=tuple(series.positions_mm),
    )


def decide(
    rule: SeriesRule,
    predictions: Sequence[Prediction],
    assessed: Sequence[bool],
    positions_mm: Sequence[float | None] | None = None,
) -> SeriesDecision:
    """The series answer from its slices' predictions; ``assessed``: which slices count."""
    names = rule.class_names
    tumours = [c for c in names if c != NEGATIVE_CLASS]
    index = [i for i, (p, ok) in enumerate(zip(predictions, assessed)) if ok and p.is_brain_mri]
    positions = list(positions_mm) if positions_mm is not None else [None] * len(predictions)
    probs = np.array([[predictions[i].probabilities[c] for c in names] for i in index]).reshape(len(index), len(names))
    labels = [predictions[i].label for i in index]
    n = len(index)
    support = {c: int(sum(1 for lab, p in zip(labels, probs) if lab == c and p[names.index(c)] >= rule.min_probability)) for c in tumours}
    needed = max(rule.min_slices, int(np.ceil(rule.min_share * n)))
    if rule.kind == "majority":
        counts = {c: labels.count(c) for c in names}
        label = max(names, key=lambda c: (counts[c], c == NEGATIVE_CLASS)) if n else NEGATIVE_CLASS
        supported = [c for c in tumours if counts[c] > 0 and c == label]
    elif rule.kind == "maximum":
        best = {c: float(probs[:, names.index(c)].max()) if n else 0.0 for c in tumours}
        top = max(tumours, key=lambda c: best[c])
        label = top if any(lab != NEGATIVE_CLASS for lab in labels) else NEGATIVE_CLASS
        supported = [top] if label != NEGATIVE_CLASS else []
    else:
        supported = sorted((c for c in tumours if support[c] >= needed), key=lambda c: -support[c])
        label = supported[0] if supported else NEGATIVE_CLASS
    column = names.index(label)
    flags: list[SeriesFlag] = []
    outside = sum(predictions[i].outside_training for i in index) / n if n else 0.0
    if n and outside >= rule.outside_share:
        flags.append(SeriesFlag(OUTSIDE_TRAINING, outside, rule.outside_share))
    if len(supported) > 1:
        flags.append(SeriesFlag(DISAGREEMENT, float(support[supported[1]]), float(needed), tuple(supported[:2])))
    if label == NEGATIVE_CLASS:
        isolated = [c for c in tumours if support[c] > 0]
        if isolated:
            flags.append(SeriesFlag(ISOLATED_TUMOUR_SLICES, float(max(support[c] for c in isolated)), float(needed), tuple(isolated)))
        if n < needed:
            flags.append(SeriesFlag(FEW_ASSESSED, float(n), float(needed)))
    if n == 0:
        return SeriesDecision(NEGATIVE_CLASS, 0.0, support, tuple(flags), (), False)
    if label == NEGATIVE_CLASS:
        tumour_cols = [names.index(c) for c in tumours]
        score = probs[:, tumour_cols].max(axis=1)
        confidence = float(probs[:, column].mean())
        order = np.argsort(-score, kind="stable")[:KEY_SLICES]
        keys = tuple(KeySlice(index[j], positions[index[j]], labels[j], float(score[j])) for j in order)
    else:
        chosen = [j for j in range(n) if labels[j] == label] or list(range(n))
        order = sorted(chosen, key=lambda j: -probs[j, column])[:KEY_SLICES]
        confidence = float(np.mean([probs[j, column] for j in order[: max(needed, 1)]]))
        keys = tuple(KeySlice(index[j], positions[index[j]], labels[j], float(probs[j, column])) for j in order)
    return SeriesDecision(label, confidence, support, tuple(flags), keys, bool(flags and flags[0].kind == OUTSIDE_TRAINING))
