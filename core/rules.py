"""The review rules: which answers a clinician should not take at face value, as data.

Every rule lives here and reads plain arrays, so that the app, ``python -m core``, training's
calibration report (``train.finalize``) and the int8 study compute the same flags. A flag is a
:class:`Flag`: its kind and the numbers behind it. Sentences are made at the edges only
(``core.results.flag_text``, the page). How each threshold is fitted: ``docs/trust.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .constants import CLASS_NAMES, NEGATIVE_CLASS, UNFITTED_LOW_CONFIDENCE

__all__ = [
    "FLAG_KINDS",
    "LOW_CONFIDENCE",
    "MIRROR_DISAGREES",
    "NOT_BRAIN_MRI",
    "OUTSIDE_TRAINING",
    "WEAK_NEGATIVE",
    "Flag",
    "ImageProblem",
    "ReviewRules",
    "answer_cosine",
]

NOT_BRAIN_MRI = "not_brain_mri"
OUTSIDE_TRAINING = "outside_training"
LOW_CONFIDENCE = "low_confidence"
WEAK_NEGATIVE = "weak_negative"
MIRROR_DISAGREES = "mirror_disagrees"
#: Every kind of flag, in the order a prediction lists them.
FLAG_KINDS = (NOT_BRAIN_MRI, OUTSIDE_TRAINING, LOW_CONFIDENCE, WEAK_NEGATIVE, MIRROR_DISAGREES)


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
    #: ``mirror_disagrees``: the scan's class and its mirror image's.
    classes: tuple[str, ...] = ()
    #: For ``weak_negative``: the "no tumour" probability.
    confidence: float | None = None

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
        )

    def masks(
        self,
        probs: np.ndarray,
        scores: np.ndarray | None = None,
        problems: Sequence[ImageProblem | None] | None = None,
        plain: np.ndarray | None = None,
        mirror: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Which of N scans each rule flags: a boolean (N,) array per kind of :data:`FLAG_KINDS`.

        ``probs``: the served calibrated probabilities (N, classes); ``scores``: the
        out-of-distribution scores (default: 0); ``problems``: the image checks' findings;
        ``plain`` and ``mirror``: the probabilities of the scans and of their mirror images,
        when the mirror image was run (the mirror flag needs both).
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
        return {
            NOT_BRAIN_MRI: not_mri,
            OUTSIDE_TRAINING: ~not_mri & (scores > self.outside_score),
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
    ) -> list[tuple[Flag, ...]]:
        """The flags of each of N scans, with the numbers behind them (arguments as :meth:`masks`)."""
        probs = np.asarray(probs, dtype=np.float64)
        n = len(probs)
        scores = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64)
        masks = self.masks(probs, scores, problems, plain, mirror)
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
