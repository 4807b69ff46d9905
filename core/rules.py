"""The review rules: which answers a clinician should not take at face value, as data.

Every rule lives here and reads plain arrays, so that the app, ``python -m core``, training's
calibration report (``train.finalize``) and the int8 study compute the same flags. A flag is a
:class:`Flag`: its kind and the numbers behind it. Sentences are made at the edges only
(``core.results.flag_text``, the page). How each threshold is fitted: ``docs/trust.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .constants import CLASS_NAMES, NEGATIVE_CLASS, UNFITTED_LOW_CONFIDENCE

if TYPE_CHECKING:
    from .sequence import SequenceInfo

__all__ = [
    "FLAG_KINDS",
    "LOW_CONFIDENCE",
    "MIRROR_DISAGREES",
    "NOT_BRAIN_MRI",
    "OUTSIDE_TRAINING",
    "SEQUENCE_NOT_LEARNED",
    "TABLE_SEQUENCES",
    "WEAK_NEGATIVE",
    "Flag",
    "ImageProblem",
    "ReviewRules",
    "SequenceCoverage",
    "answer_cosine",
]

NOT_BRAIN_MRI = "not_brain_mri"
OUTSIDE_TRAINING = "outside_training"
LOW_CONFIDENCE = "low_confidence"
WEAK_NEGATIVE = "weak_negative"
MIRROR_DISAGREES = "mirror_disagrees"
SEQUENCE_NOT_LEARNED = "sequence_not_learned"
#: Every kind of flag, in the order a prediction lists them.
FLAG_KINDS = (NOT_BRAIN_MRI, OUTSIDE_TRAINING, SEQUENCE_NOT_LEARNED, LOW_CONFIDENCE, WEAK_NEGATIVE, MIRROR_DISAGREES)
#: The columns of the training data's class x sequence table (``SequenceCoverage``): the
#: recogniser's "T1w" is kept apart, never counted as T1 or as T1C.
TABLE_SEQUENCES = ("T1", "T1C", "T1w", "T2", "FLAIR")
#: The table's columns that count as training on each sequence a scan may have.
_COVERING = {"T1": ("T1",), "T1C": ("T1C",), "T1w": ("T1", "T1C", "T1w"), "T2": ("T2",), "FLAIR": ("FLAIR",), "other": ()}


@dataclass(frozen=True)
class ImageProblem:
    """Why an image cannot be a brain MRI slice, from the image checks (``core.ood.image_problem``)."""

    #: "blank", "colour" or "aspect".
    check: str
    value: float
    limit: float


@dataclass(frozen=True)
class Flag:
    """One reason to review a prediction."""

    #: One of :data:`FLAG_KINDS`.
    kind: str
    #: The number the rule read: the out-of-distribution score, the confidence, the answer
    #: cosine, or an image check's value.
    value: float | None = None
    #: The limit it crossed.
    limit: float | None = None
    #: For ``not_brain_mri``: "gate", or the image check that failed ("blank", "colour", "aspect").
    check: str | None = None
    #: For ``weak_negative``: the class that stands out among the alternatives; for
    #: ``mirror_disagrees``: the scan's class and its mirror image's; for
    #: ``sequence_not_learned``: the answer, then the classes training barely covers on the
    #: sequence (the answer among them when it is one).
    classes: tuple[str, ...] = ()
    #: For ``weak_negative``: the "no tumour" probability.
    confidence: float | None = None
    #: For ``sequence_not_learned``: the scan's sequence (``core.constants.SEQUENCE_NAMES``).
    sequence: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FLAG_KINDS:
            raise ValueError(f"Unknown flag kind {self.kind!r}; choose one of {FLAG_KINDS}.")


def answer_cosine(probs: np.ndarray) -> np.ndarray:
    """How cleanly each answer points at its class, per row of probabilities (..., classes).

    The cosine between the centred log-probabilities and the centred one-hot vector of the top
    class: 1 when the other classes are equally unlikely, lower when one of them stands out,
    however high the top probability; 0 for a uniform answer. It does not depend on the
    temperature. This is MaxLogit-pNorm with p = 2 (Cattelan and Silva, 2023) divided by its
    largest value sqrt((K - 1) / K).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 2:
        raise ValueError(f"probs must have at least two classes on its last axis, got shape {p.shape}.")
    z = np.log(np.clip(p, np.finfo(np.float64).tiny, None))
    z = z - z.mean(axis=-1, keepdims=True)
    k = z.shape[-1]
    norm = np.linalg.norm(z, axis=-1)
    safe = np.where(norm > 0, norm, 1.0)
    return np.where(norm > 0, z.max(axis=-1) / safe / np.sqrt((k - 1) / k), 0.0)


@dataclass(frozen=True)
class SequenceCoverage:
    """Which answers training barely covers on which sequence, from the class x sequence table.

    ``counts[class][sequence]``: training scans per class and :data:`TABLE_SEQUENCES` column
    (from names where the source gives them, from the recogniser elsewhere; synthetic images
    are not counted). A class is *barely covered* on a sequence when less than ``min_share`` of
    its training scans lie there (for "T1w": on T1, T1C and T1w together). An answer is flagged
    ``sequence_not_learned`` when, on the scan's sequence, its own class is barely covered, or,
    for a tumour answer, another tumour class is: the model cannot have learned to tell them
    apart there. Scans of an unknown sequence are not flagged by this rule, nor are scans whose
    sequence only the image recogniser gives at a probability under ``min_confidence``
    (:meth:`judged`); "other" sequences (diffusion, SWI, ...) cover no class. Built by ``python -m train.sequence table``
    (``card["sequence_table"]``); ``min_share`` and ``min_confidence`` are chosen there on validation.
    """

    counts: Mapping[str, Mapping[str, int]]
    min_share: float
    class_names: tuple[str, ...] = CLASS_NAMES
    #: The recogniser's probability an image-derived sequence needs for the rule to act on it.
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.min_share < 1:
            raise ValueError(f"min_share must be in (0, 1), got {self.min_share!r}.")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence!r}.")
        missing = [c for c in self.class_names if c not in self.counts]
        if missing:
            raise ValueError(f"The class x sequence table lacks the classes {missing}; it has {sorted(self.counts)}.")

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> SequenceCoverage | None:
        """The coverage of ``card["sequence_table"]``, or None when the card has no table."""
        table = card.get("sequence_table")
        if not table:
            return None
        return cls(table["counts"], float(table["min_share"]), tuple(card.get("class_names", CLASS_NAMES)),
                   float(table.get("min_confidence", 0.0)))

    def judged(self, name: str, source: str, confidence: float | None = None) -> str:
        """The sequence the rule acts on: ``name``, or "unknown" for a sequence that only the
        image gives (``source="image"``) at a ``confidence`` under :attr:`min_confidence`."""
        if source == "image" and (confidence is None or confidence < self.min_confidence):
            return "unknown"
        return name

    def flag_of(self, label: str, sequence: SequenceInfo) -> Flag | None:
        """:meth:`flag` of answer ``label`` on a scan's or series' sequence, as :meth:`judged`."""
        return self.flag(label, self.judged(sequence.name, sequence.source, sequence.confidence))

    def share(self, name: str, sequence: str) -> float | None:
        """The share of ``name``'s training scans that cover ``sequence`` (None: unknown sequence)."""
        if sequence not in _COVERING:
            return None
        row = self.counts[name]
        total = sum(int(v) for v in row.values())
        return sum(int(row.get(column, 0)) for column in _COVERING[sequence]) / total if total else 0.0

    def uncovered(self, sequence: str) -> tuple[str, ...]:
        """The classes training barely covers on ``sequence``, in class order (() when unknown)."""
        shares = {name: self.share(name, sequence) for name in self.class_names}
        return tuple(name for name, share in shares.items() if share is not None and share < self.min_share)

    def flag(self, label: str, sequence: str) -> Flag | None:
        """The ``sequence_not_learned`` flag of answer ``label`` on ``sequence``, or None."""
        uncovered = self.uncovered(sequence)
        if label == NEGATIVE_CLASS:
            named = tuple(c for c in uncovered if c == label)
        else:
            named = tuple(c for c in uncovered if c != NEGATIVE_CLASS)
        if not named:
            return None
        value = min(self.share(c, sequence) or 0.0 for c in named)
        return Flag(SEQUENCE_NOT_LEARNED, value, self.min_share, classes=(label, *named), sequence=sequence)


@dataclass(frozen=True)
class ReviewRules:
    """The thresholds of the review rules, read from a model card (:meth:`from_card`)."""

    #: Confidence below which an answer is flagged.
    low_confidence: float = UNFITTED_LOW_CONFIDENCE
    #: Answer cosine a "no tumour" answer needs to be shown without a flag (None: no floor).
    negative_floor: float | None = None
    #: Out-of-distribution score above which a scan is outside the training data.
    outside_score: float = 1.0
    #: Score above which an input is not a brain MRI at all (inf: no gate).
    reject_score: float = float("inf")
    class_names: tuple[str, ...] = CLASS_NAMES
    #: The class x sequence coverage behind ``sequence_not_learned`` (None: no such flag).
    coverage: SequenceCoverage | None = None

    def __post_init__(self) -> None:
        if not 0 < self.low_confidence < 1:
            raise ValueError(f"low_confidence must be in (0, 1), got {self.low_confidence!r}.")
        if self.reject_score < self.outside_score:
            raise ValueError(f"reject_score ({self.reject_score}) must be at least outside_score ({self.outside_score}).")

    @classmethod
    def from_card(cls, card: Mapping[str, Any], reject_score: float = float("inf")) -> ReviewRules:
        """The rules of a model card's ``uncertainty`` section; ``reject_score``: the gate's
        (``core.ood.FeatureGate.reject_score``; inf without a gate)."""
        uncertainty = card.get("uncertainty", {})
        floor = uncertainty.get("notumor_cosine_below")
        return cls(
            low_confidence=float(uncertainty.get("low_confidence_below", UNFITTED_LOW_CONFIDENCE)),
            negative_floor=None if floor is None else float(floor),
            reject_score=float(reject_score),
            class_names=tuple(card.get("class_names", CLASS_NAMES)),
            coverage=SequenceCoverage.from_card(card),
        )

    def masks(
        self,
        probs: np.ndarray,
        scores: np.ndarray | None = None,
        problems: Sequence[ImageProblem | None] | None = None,
        plain: np.ndarray | None = None,
        mirror: np.ndarray | None = None,
        sequences: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Which of N scans each rule flags: a boolean (N,) array per kind of :data:`FLAG_KINDS`.

        ``probs``: the served calibrated probabilities (N, classes); ``scores``: the
        out-of-distribution scores (default: 0); ``problems``: the image checks' findings;
        ``plain`` and ``mirror``: the probabilities of the scans and of their mirror images,
        when the mirror image was run (the mirror flag needs both); ``sequences``: each scan's
        sequence name (``core.constants.SEQUENCE_NAMES``; default: all unknown).
        """
        probs = np.asarray(probs, dtype=np.float64)
        n = len(probs)
        scores = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64)
        failed = np.zeros(n, dtype=bool) if problems is None else np.array([p is not None for p in problems], dtype=bool)
        not_mri = failed | (scores > self.reject_score)
        low = probs.max(axis=1) < self.low_confidence
        weak = np.zeros(n, dtype=bool)
        if self.negative_floor is not None:
            negative = probs.argmax(axis=1) == self.class_names.index(NEGATIVE_CLASS)
            weak = ~low & negative & (answer_cosine(probs) < self.negative_floor)
        disagrees = np.zeros(n, dtype=bool)
        if plain is not None and mirror is not None:
            disagrees = np.asarray(plain).argmax(axis=1) != np.asarray(mirror).argmax(axis=1)
        not_learned = np.zeros(n, dtype=bool)
        if self.coverage is not None and sequences is not None:
            labels = probs.argmax(axis=1)
            not_learned = ~not_mri & np.array(
                [self.coverage.flag(self.class_names[int(k)], str(q)) is not None for k, q in zip(labels, sequences)], dtype=bool)
        return {
            NOT_BRAIN_MRI: not_mri,
            OUTSIDE_TRAINING: ~not_mri & (scores > self.outside_score),
            SEQUENCE_NOT_LEARNED: not_learned,
            LOW_CONFIDENCE: low,
            WEAK_NEGATIVE: weak,
            MIRROR_DISAGREES: disagrees,
        }

    def flags(
        self,
        probs: np.ndarray,
        scores: np.ndarray | None = None,
        problems: Sequence[ImageProblem | None] | None = None,
        plain: np.ndarray | None = None,
        mirror: np.ndarray | None = None,
        sequences: Sequence[str] | None = None,
    ) -> list[tuple[Flag, ...]]:
        """The flags of each of N scans, with the numbers behind them (arguments as :meth:`masks`)."""
        probs = np.asarray(probs, dtype=np.float64)
        n = len(probs)
        scores = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64)
        masks = self.masks(probs, scores, problems, plain, mirror, sequences)
        cosine = answer_cosine(probs)
        names = self.class_names
        out = []
        for i in range(n):
            flags = []
            if masks[NOT_BRAIN_MRI][i]:
                problem = problems[i] if problems is not None else None
                if problem is not None:
                    flags.append(Flag(NOT_BRAIN_MRI, problem.value, problem.limit, check=problem.check))
                else:
                    flags.append(Flag(NOT_BRAIN_MRI, float(scores[i]), self.reject_score, check="gate"))
            elif masks[OUTSIDE_TRAINING][i]:
                flags.append(Flag(OUTSIDE_TRAINING, float(scores[i]), self.outside_score))
            if masks[SEQUENCE_NOT_LEARNED][i]:
                flags.append(self.coverage.flag(names[int(np.argmax(probs[i]))], str(sequences[i])))
            confidence = float(probs[i].max())
            if masks[LOW_CONFIDENCE][i]:
                flags.append(Flag(LOW_CONFIDENCE, confidence, self.low_confidence))
            elif masks[WEAK_NEGATIVE][i]:
                runner_up = names[int(np.argsort(-probs[i], kind="stable")[1])]
                flags.append(Flag(WEAK_NEGATIVE, float(cosine[i]), self.negative_floor, classes=(runner_up,),
                                  confidence=confidence))
            if masks[MIRROR_DISAGREES][i]:
                classes = (names[int(np.argmax(plain[i]))], names[int(np.argmax(mirror[i]))])
                flags.append(Flag(MIRROR_DISAGREES, classes=classes))
            out.append(tuple(flags))
        return out
