"""train.finalize: the flag rates the model card reports are the review rules' (core.rules) on
the calibrated probabilities, counted here independently on synthetic validation outputs."""

from __future__ import annotations

import numpy as np
import pytest

from core.constants import CLASS_NAMES, NEGATIVE_CLASS
from core.rules import ReviewRules, answer_cosine
from train.finalize import _flag_rates
from train.ood import SplitOutputs

NEG = CLASS_NAMES.index(NEGATIVE_CLASS)
TEMPERATURE = 1.5


def _outputs(n: int, seed: int, mirror: bool) -> SplitOutputs:
    """Logits of a classifier that is right most of the time, and of the mirror images."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(CLASS_NAMES), n)
    logits = rng.normal(0, 1.5, (n, len(CLASS_NAMES)))
    logits[np.arange(n), targets] += 2.5
    mirror_logits = logits + rng.normal(0, 1.0, logits.shape) if mirror else None
    return SplitOutputs(features=np.zeros((n, 2)), logits=logits, targets=targets,
                        image_rejected=np.zeros(n, bool), mirror_logits=mirror_logits)


def _probs(logits: np.ndarray) -> np.ndarray:
    scaled = np.exp(logits / TEMPERATURE - (logits / TEMPERATURE).max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def test_flag_rates_are_the_rules_on_the_calibrated_probabilities():
    outputs = _outputs(600, seed=0, mirror=True)
    rules = ReviewRules(low_confidence=0.6, negative_floor=0.98)
    rates = _flag_rates(outputs, TEMPERATURE, rules)
    probs, mirror = _probs(outputs.logits), _probs(outputs.mirror_logits)
    correct = probs.argmax(1) == outputs.targets
    low = probs.max(1) < 0.6
    weak = ~low & (probs.argmax(1) == NEG) & (answer_cosine(probs) < 0.98)
    disagree = probs.argmax(1) != mirror.argmax(1)
    flagged = low | weak | disagree
    assert low.any() and weak.any() and disagree.any() and (~correct).any()  # every rate is measured
    assert rates == pytest.approx({
        "low_confidence": low.mean(),
        "accuracy_flagged_low": correct[low].mean(),
        "weak_negative": weak.mean(),
        "accuracy_flagged_weak_negative": correct[weak].mean(),
        "accuracy_not_flagged": correct[~(low | weak)].mean(),
        "mirror_disagreement": disagree.mean(),
        "any_flag": flagged.mean(),
        "errors_flagged": flagged[~correct].mean(),
    })


def test_flag_rates_without_a_floor_or_mirror_images():
    """No floor: no weak-negative rates; no mirror logits: no mirror rates; nothing flagged: no
    accuracy of the flagged scans."""
    outputs = _outputs(200, seed=1, mirror=False)
    rates = _flag_rates(outputs, TEMPERATURE, ReviewRules(low_confidence=0.01))
    correct = _probs(outputs.logits).argmax(1) == outputs.targets
    assert rates == pytest.approx({"low_confidence": 0.0, "accuracy_flagged_low": None, "accuracy_not_flagged": correct.mean()})


def test_flag_rates_read_the_temperature():
    """A higher temperature flattens the probabilities, so more scans fall under the threshold."""
    outputs = _outputs(300, seed=2, mirror=False)
    rules = ReviewRules(low_confidence=0.6)
    sharp, flat = (_flag_rates(outputs, t, rules)["low_confidence"] for t in (0.5, 3.0))
    assert sharp < flat
