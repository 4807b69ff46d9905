"""train.calibrate: the temperature, the low-confidence threshold and the floor of "no tumour"
answers, fitted on synthetic validation outputs; and the shipped card's thresholds checked
against the rules that chose them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.constants import ASSETS_DIR, CLASS_NAMES, MODEL_CARD_NAME, NEGATIVE_CLASS
from core.rules import answer_cosine
from train import metrics
from train.calibrate import (
    COSINE_FLOOR_GRID,
    MIN_NEGATIVE_PRECISION,
    apply_temperature,
    calibration_summary,
    choose_confidence_threshold,
    choose_negative_floor,
    fit_temperature,
)

NEG = CLASS_NAMES.index(NEGATIVE_CLASS)
#: The grid choose_confidence_threshold picks from by default.
CONFIDENCE_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


# ---------------------------------------------------------------------- temperature
def _overconfident(n: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); logits ``sharpen * z``: calibrated at T = sharpen only."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, len(CLASS_NAMES)))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    targets = np.array([rng.choice(len(CLASS_NAMES), p=row) for row in p])
    return sharpen * z, targets


@pytest.mark.parametrize("sharpen", [0.5, 3.0])
def test_temperature_fitted_on_one_half_lowers_ece_on_the_other(sharpen):
    logits, targets = _overconfident(4000, sharpen, seed=1)
    fit, held = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(logits[fit], targets[fit])
    assert temperature == pytest.approx(sharpen, rel=0.15)
    before = metrics.calibration(apply_temperature(logits[held], 1.0), targets[held])["ece"]
    after = metrics.calibration(apply_temperature(logits[held], temperature), targets[held])["ece"]
    assert after < before / 2
    summary = calibration_summary(logits[held], targets[held], temperature)
    assert (summary["ece_before"], summary["ece_after"]) == pytest.approx((before, after))


def test_temperature_keeps_the_predicted_class():
    logits, _ = _overconfident(200, 3.0, seed=2)
    assert (apply_temperature(logits, 2.7).argmax(1) == logits.argmax(1)).all()


def test_temperature_fit_and_use_refuse_bad_input():
    with pytest.raises(ValueError, match=r"N targets.*\(3, 4\) and \(2,\)"):
        fit_temperature(np.zeros((3, 4)), [0, 1])
    with pytest.raises(ValueError, match="positive, got 0"):
        apply_temperature(np.zeros((3, 4)), 0)


# ---------------------------------------------------------------------- low confidence
def test_confidence_threshold_is_the_highest_within_the_flag_rate():
    confidence = np.r_[np.full(90, 0.99), np.linspace(0.5, 0.9, 10)]
    threshold = choose_confidence_threshold(confidence, max_flag_rate=0.05)
    assert (confidence < threshold).mean() <= 0.05
    higher = [t for t in CONFIDENCE_GRID if t > threshold]
    assert all((confidence < t).mean() > 0.05 for t in higher)  # the next one up flags too many
    assert threshold > 0.5  # the cap allows more than the lowest grid value


def test_confidence_threshold_refuses_bad_input():
    with pytest.raises(ValueError, match="No confidences"):
        choose_confidence_threshold(np.array([]))
    with pytest.raises(ValueError, match="max_flag_rate must be in \\(0, 1\\), got 1.2"):
        choose_confidence_threshold(np.array([0.9]), max_flag_rate=1.2)


# ---------------------------------------------------------------------- the floor of "no tumour" answers
def _negative_answers(confidence: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities answering "no tumour" at ``confidence``, with targets right or a glioma."""
    probs = np.zeros((len(confidence), len(CLASS_NAMES)))
    probs[:, NEG] = confidence
    probs[:, 0] = 1 - confidence
    return probs, np.where(right, NEG, 0)


def test_negative_floor_is_the_lowest_reaching_the_precision():
    # 100 right answers at 0.97; 10 misses at 0.80-0.89; 10 right answers at 0.90-0.94.
    confidence = np.r_[np.full(100, 0.97), np.linspace(0.80, 0.89, 10), np.linspace(0.90, 0.94, 10)]
    right = np.r_[np.ones(100, bool), np.zeros(10, bool), np.ones(10, bool)]
    probs, targets = _negative_answers(confidence, right)
    floor, fit = choose_negative_floor(probs, targets, NEG, min_precision=0.995)
    kept = confidence >= floor
    assert right[kept].mean() >= 0.995 and fit["reached"]
    assert 0.89 < floor <= 0.90  # every miss is below it, and no right answer needlessly
    # A looser precision lets the two highest misses through (2 in 112 answers: 98.2 %).
    assert choose_negative_floor(probs, targets, NEG, min_precision=0.98)[0] == pytest.approx(0.88)
    assert fit["answers"] == 120 and fit["answers_above_floor"] == int(kept.sum())
    # Answers of other classes do not count towards the negative answers' precision.
    other = np.array([[0.9, 0.05, 0.03, 0.02]] * 50)
    assert choose_negative_floor(np.r_[probs, other], np.r_[targets, np.full(50, 1)], NEG, 0.995)[0] == floor


def test_negative_floor_on_answer_cosine_flags_answers_with_a_standing_out_runner_up():
    # 100 right "no tumour" answers with evenly unlikely tumour classes; 10 misses with one tumour
    # class standing out, at the same high "no tumour" probability.
    right = np.tile([0.01, 0.01, 0.97, 0.01], (100, 1))
    miss = np.tile([0.028, 0.001, 0.97, 0.001], (10, 1))
    probs, targets = np.r_[right, miss], np.r_[np.full(100, NEG), np.zeros(10, int)]
    values = answer_cosine(probs)
    floor, fit = choose_negative_floor(probs, targets, NEG, grid=COSINE_FLOOR_GRID, values=values)
    assert fit["reached"] and values[-10:].max() < floor <= values[:100].min()
    # The same answers by probability alone cannot be told apart: the highest floor of the grid.
    assert not choose_negative_floor(probs, targets, NEG)[1]["reached"]
    with pytest.raises(ValueError, match="one value per scan"):
        choose_negative_floor(probs, targets, NEG, values=values[:5])


def test_negative_floor_falls_back_to_the_highest_and_refuses_bad_input():
    probs, targets = _negative_answers(np.full(20, 0.99), np.zeros(20, bool))  # every answer wrong
    floor, fit = choose_negative_floor(probs, targets, NEG, grid=(0.6, 0.8, 0.95))
    assert floor == 0.95 and not fit["reached"]
    with pytest.raises(ValueError, match="min_precision must be in \\(0, 1\\), got 1.5"):
        choose_negative_floor(probs, targets, NEG, min_precision=1.5)
    with pytest.raises(ValueError, match="negative must index one of the 4 classes, got 7"):
        choose_negative_floor(probs, targets, 7)
    # No negative answer at all (a barely trained model): no floor, rather than a made-up one.
    assert choose_negative_floor(np.tile([0.7, 0.1, 0.1, 0.1], (5, 1)), np.zeros(5), NEG) == (None, {"answers": 0, "reached": False})


# ---------------------------------------------------------------------- the shipped card
@pytest.mark.skipif(not (ASSETS_DIR / MODEL_CARD_NAME).is_file(), reason="no model card in assets/ yet")
def test_shipped_thresholds_obey_the_rules_that_chose_them():
    """The card's thresholds are values of train.calibrate's grids, and its validation figures
    are those the rules require of them: at most 5% of the validation scans flagged for low
    confidence, and the "no tumour" answers above the floor right often enough."""
    card = json.loads((ASSETS_DIR / MODEL_CARD_NAME).read_text())
    uncertainty, validation = card["uncertainty"], card["uncertainty"]["validation"]
    assert uncertainty["low_confidence_below"] in CONFIDENCE_GRID
    assert validation["low_confidence"] <= 0.05
    assert uncertainty["notumor_cosine_below"] in COSINE_FLOOR_GRID
    fit = uncertainty["notumor_fit"]
    assert fit["reached"] == (fit["precision_above_floor"] >= MIN_NEGATIVE_PRECISION)
    assert 0 < fit["answers_above_floor"] <= fit["answers"] <= card["data"]["val_images"]
    # The temperature was fitted on validation: it lowers the validation ECE.
    assert card["temperature"] > 0
    assert card["calibration"]["validation"]["ece_after"] < card["calibration"]["validation"]["ece_before"]
