"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits.

``softmax(logits / T)`` keeps every prediction's class and only changes its confidence. T is
fitted by minimising the negative log-likelihood of the validation logits (L-BFGS on log T, so
that T stays positive); ``core`` divides the logits by the ``temperature`` of the model card.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.model import softmax

from . import metrics

__all__ = [
    "COSINE_FLOOR_GRID", "MIN_NEGATIVE_PRECISION", "apply_temperature", "calibration_summary", "choose_confidence_threshold", "choose_negative_floor",
    "fit_temperature",
]

logger = logging.getLogger(__name__)

#: Temperatures outside this range mean the logits are degenerate (or the fit failed).
TEMPERATURE_RANGE = (0.05, 20.0)
#: A "no tumour" answer shown without a flag must be right at least this often on validation
#: (at most 1 missed tumour in 50 such answers).
MIN_NEGATIVE_PRECISION = 0.98
#: Candidate confidence floors for "no tumour" answers.
NEGATIVE_FLOOR_GRID: tuple[float, ...] = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))
#: Candidate floors of the answer cosine (``core.rules.answer_cosine``) for "no tumour" answers:
#: finer, because right answers crowd just under 1.
COSINE_FLOOR_GRID: tuple[float, ...] = tuple(round(0.5 + 0.001 * i, 3) for i in range(500))


def _check(logits: np.ndarray, targets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    targets_t = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if logits_t.ndim != 2 or len(logits_t) != len(targets_t) or len(targets_t) == 0:
        raise ValueError(
            f"Expected logits (N, classes) and N targets with N > 0, got {tuple(logits_t.shape)} "
            f"and {tuple(targets_t.shape)}."
        )
    return logits_t, targets_t


def fit_temperature(logits: np.ndarray, targets: Sequence[int], max_iter: int = 200) -> float:
    """The temperature that minimises the mean cross-entropy of ``softmax(logits / T)``."""
    logits_t, targets_t = _check(logits, targets)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), targets_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        raise ValueError(f"Temperature fit diverged ({temperature!r}): are the logits finite?")
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        # The NLL is unimodal in T, so the bound is the best temperature within the range.
        logger.warning("fitted temperature %.4g outside %s (a model near chance?): clamped", temperature, TEMPERATURE_RANGE)
        temperature = min(max(temperature, low), high)
    return temperature


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities (float64), exactly as ``core`` computes them."""
    if not temperature > 0:
        raise ValueError(f"The temperature must be positive, got {temperature!r}.")
    return softmax(logits, temperature)


def calibration_summary(logits: np.ndarray, targets: Sequence[int], temperature: float) -> dict[str, Any]:
    """Reliability reports and ECE of ``logits`` before (T = 1) and after temperature scaling."""
    before = metrics.calibration(apply_temperature(logits, 1.0), targets)
    after = metrics.calibration(apply_temperature(logits, temperature), targets)
    return {"ece_before": before["ece"], "ece_after": after["ece"], "before": before, "after": after}


def choose_confidence_threshold(
    confidence: np.ndarray,
    max_flag_rate: float = 0.05,
    grid: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
) -> float:
    """The highest threshold of ``grid`` that flags at most ``max_flag_rate`` of the (validation)
    predictions as low-confidence; a higher threshold catches more errors of a calibrated model,
    the cap keeps the flag meaningful."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.size == 0:
        raise ValueError("No confidences to choose a threshold from.")
    if not 0 < max_flag_rate < 1:
        raise ValueError(f"max_flag_rate must be in (0, 1), got {max_flag_rate!r}.")
    chosen = min(grid)
    for threshold in sorted(grid):
        if float((confidence < threshold).mean()) <= max_flag_rate:
            chosen = threshold
    return float(chosen)


def choose_negative_floor(
    probs: np.ndarray,
    targets: Sequence[int],
    negative: int,
    min_precision: float = MIN_NEGATIVE_PRECISION,
    grid: Sequence[float] = NEGATIVE_FLOOR_GRID,
    values: np.ndarray | None = None,
) -> tuple[float | None, dict[str, Any]]:
    """The floor a "no tumour" answer needs to be shown without a flag: the lowest floor of
    ``grid`` at which the (validation) answers of class ``negative`` whose value is at least
    that are right at least ``min_precision`` of the time; the highest floor of the grid when
    none reaches it; None when no scan is answered with ``negative``. ``probs``: calibrated
    probabilities (N, classes), which give the answers; ``values``: what the floor is compared
    with, one per scan (default: the confidence of class ``negative``; the shipped rule passes
    ``core.rules.answer_cosine(probs)`` with :data:`COSINE_FLOOR_GRID`). Returns the floor and
    what it was chosen from (answers kept, their precision)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise ValueError(f"probs must be (N, classes) with one target per row, got {probs.shape} and {targets.shape}.")
    if not 0 <= negative < probs.shape[1]:
        raise ValueError(f"negative must index one of the {probs.shape[1]} classes, got {negative!r}.")
    if not 0 < min_precision < 1:
        raise ValueError(f"min_precision must be in (0, 1), got {min_precision!r}.")
    answers = probs.argmax(1) == negative
    if not answers.any():
        logger.warning("no validation scan is answered with class %d: no floor for negative answers", negative)
        return None, {"answers": 0, "reached": False}
    confidence, right = probs[:, negative], targets == negative
    if values is not None:
        confidence = np.asarray(values, dtype=np.float64)
        if confidence.shape != (len(probs),):
            raise ValueError(f"values must hold one value per scan ({len(probs)}), got shape {confidence.shape}.")
    candidates = sorted(grid)
    chosen = candidates[-1]
    for floor in candidates:
        kept = answers & (confidence >= floor)
        if kept.any() and right[kept].mean() >= min_precision:
            chosen = floor
            break
    kept = answers & (confidence >= chosen)
    summary = {
        "answers": int(answers.sum()),
        "precision_without_floor": float(right[answers].mean()),
        "answers_above_floor": int(kept.sum()),
        "precision_above_floor": float(right[kept].mean()) if kept.any() else None,
        "reached": bool(kept.any() and right[kept].mean() >= min_precision),
    }
    if not summary["reached"]:
        logger.warning("no floor of the grid makes %.0f%% of the 'no tumour' answers right; using %.2f", 100 * min_precision, chosen)
    return float(chosen), summary
