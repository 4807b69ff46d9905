"""train.sequence and train.sequence_table: the recogniser's threshold and report, the class x
sequence table and the choice of the sequence_not_learned rule, on synthetic scans and answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.constants import CLASS_NAMES, RECOGNISED_SEQUENCES
from core.model import Prediction
from core.rules import SEQUENCE_NOT_LEARNED, SequenceCoverage
from core.sequence import SequenceInfo, SequenceRecogniser
from train.data import Sample
from train.external import recogniser_report
from train.sequence import contrast_threshold, sequence_report
from train.sequence_table import CANDIDATE_CONFIDENCES, MIN_SHARE, choose, count_table, sweep


def _probs(rows: list[dict[str, float]]) -> np.ndarray:
    return np.array([[row.get(q, 0.0) for q in RECOGNISED_SEQUENCES] for row in rows])


# ---------------------------------------------------------------------- the recogniser's numbers
def test_contrast_threshold_is_the_least_that_keeps_contrast_mistakes_rare():
    # T1C scans whose T1C share of the T1-weighted probability runs 0.55..0.95, T1 scans 0.05..0.45:
    # at 0.5 every scan is named right; a T1 scan at a share of 0.615 must push the threshold past it.
    truth = ["T1C"] * 9 + ["T1"] * 9
    shares = list(np.linspace(0.55, 0.95, 9)) + list(np.linspace(0.05, 0.45, 9))
    probs = _probs([{"T1C": 0.9 * s, "T1": 0.9 * (1 - s), "T2": 0.1} for s in shares])
    assert contrast_threshold(probs, truth, share=0.0) == 0.5
    truth.append("T1")
    probs = np.vstack([probs, _probs([{"T1C": 0.5535, "T1": 0.3465, "T2": 0.1}])])  # share 0.615
    assert contrast_threshold(probs, truth, share=0.0) == pytest.approx(0.62)


def test_sequence_report_counts_t1w_as_right_at_the_t1_weighted_level():
    recogniser = SequenceRecogniser(np.zeros((4, 1)), np.zeros(4), contrast_threshold=0.7)
    probs = _probs([
        {"T2": 0.9, "T1": 0.1},                 # T2, named T2
        {"T1": 0.45, "T1C": 0.45, "T2": 0.1},   # T1C, named T1w
        {"T1C": 0.9, "T1": 0.1},                # T1C, named T1C
        {"FLAIR": 0.9, "T2": 0.1},              # T2, named FLAIR: wrong
    ])
    report = sequence_report(probs, ["T2", "T1C", "T1C", "T2"], recogniser)
    assert report["accuracy"] == 0.75
    assert report["t1_named"] == 0.5 and report["t1_vs_t1c_when_named"] == 1.0
    assert report["confusion"] == {"T1C": {"T1w": 1, "T1C": 1}, "T2": {"T2": 1, "FLAIR": 1}}


def test_recogniser_report_counts_unknown_and_flair_as_wrong():
    records = [{"sequence": s, "recognised": r} for s, r in [
        ("T2", "T2"), ("T2", "FLAIR"), ("T2", "unknown"), ("T1", "T1"), ("T1", "T1w"), ("T1C", "T1C"), ("T1C", "T1"),
    ]] + [{"sequence": None, "recognised": "T2"}]
    report = recogniser_report(records)
    assert report["n"] == 7 and report["n_t2_vs_t1_weighted"] == 7
    assert report["t2_vs_t1_weighted"] == pytest.approx(5 / 7)
    assert report["t1_named"] == pytest.approx(3 / 4) and report["t1_vs_t1c_when_named"] == pytest.approx(2 / 3)
    assert recogniser_report([{"sequence": None, "recognised": "T2"}]) is None


# ---------------------------------------------------------------------- the table and the rule
def _sample(name: str, i: int) -> Sample:
    return Sample(Path(f"/x/{name}_{i}.png"), CLASS_NAMES.index(name))


def test_count_table_puts_every_scan_in_one_cell():
    samples = [_sample("glioma", i) for i in range(3)] + [_sample("meningioma", 0)]
    counts = count_table(samples, ["T1C", "FLAIR", "T1C", "odd"])
    assert counts["glioma"]["T1C"] == 2 and counts["glioma"]["FLAIR"] == 1
    assert counts["meningioma"]["unknown"] == 1
    assert sum(sum(row.values()) for row in counts.values()) == len(samples)


def _prediction(label: str, sequence: str, confidence: float, flagged: bool = False) -> Prediction:
    from core.rules import Flag, LOW_CONFIDENCE

    return Prediction(label=label, confidence=0.9, probabilities={c: 0.9 if c == label else 0.1 / 3 for c in CLASS_NAMES},
                      flags=(Flag(LOW_CONFIDENCE, 0.5, 0.6),) if flagged else (),
                      sequence=SequenceInfo(sequence, "image", confidence=confidence))


def test_sweep_and_choice_follow_the_answers_and_the_budget():
    counts = {"glioma": {"T1C": 500, "FLAIR": 500}, "meningioma": {"T1C": 1000}, "notumor": {"T1C": 500, "T2": 500},
              "pituitary": {"T1C": 1000}}
    # 100 Kaggle validation scans: 96 glioma answers on contrast T1, 4 glioma answers the recogniser
    # calls T2 (so a meningioma could hide there) at 0.65, 0.75, 0.85 and 0.95.
    samples = [_sample("glioma", i) for i in range(100)]
    predictions = [_prediction("glioma", "T1C", 0.99) for _ in range(96)]
    predictions += [_prediction("glioma", "T2", c) for c in (0.65, 0.75, 0.85, 0.95)]
    rows = sweep(counts, {"kaggle_validation": (samples, predictions)})
    at = {(r["min_share"], r["min_confidence"]): r["kaggle_validation"] for r in rows}
    for confidence in CANDIDATE_CONFIDENCES:
        expected = sum(c >= confidence for c in (0.65, 0.75, 0.85, 0.95)) / 100
        assert at[(MIN_SHARE, confidence)]["added"] == pytest.approx(expected)
    # Budget 1 %: one scan may be flagged, so the floor must clear 0.85 (0.9 lets only 0.95 through).
    assert choose(rows, budget=0.01) == 0.9
    assert choose(rows, budget=0.04) == min(CANDIDATE_CONFIDENCES)
    with pytest.raises(ValueError, match="every candidate"):
        choose(rows, share=0.123)
    # What the sweep names agrees with the rule itself.
    named = next(r for r in rows if r["min_share"] == MIN_SHARE)["uncovered"]
    assert named["T2"] == list(SequenceCoverage(counts, MIN_SHARE).uncovered("T2")) == ["glioma", "meningioma", "pituitary"]


def test_an_answer_already_flagged_is_not_counted_as_added():
    counts = {"glioma": {"T1C": 1}, "meningioma": {"T1C": 1}, "notumor": {"T1C": 1}, "pituitary": {"T1C": 1}}
    samples = [_sample("glioma", 0), _sample("glioma", 1)]
    predictions = [_prediction("glioma", "T2", 0.99, flagged=True), _prediction("glioma", "T2", 0.99)]
    row = next(r for r in sweep(counts, {"g": (samples, predictions)}) if r["min_confidence"] == 0.6)["g"]
    assert row["added"] == 0.5 and row["flagged"] == 1.0 and row["unflagged_accuracy"] is None
    assert SEQUENCE_NOT_LEARNED  # the kind the sweep stands for


def test_fit_probe_folds_its_standardisation_into_the_weights():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from train.sequence import fit_probe

    # Four sequences, each a cloud around its own centre in 6 features of very different scales.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 3
    y = np.repeat(np.arange(4), [40, 10, 25, 25])
    x = (centres[y] + rng.normal(size=(len(y), 6))) * np.array([1, 10, 100, 0.1, 1, 5]) + 7
    names = [RECOGNISED_SEQUENCES[k] for k in y]
    weight, bias = fit_probe(x, names, c=0.1)
    probe = SequenceRecogniser(weight, bias, 0.7)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced", random_state=0).fit(scaler.transform(x), y)
    np.testing.assert_allclose(probe.probabilities(x), reference.predict_proba(scaler.transform(x)), atol=1e-9)
    assert (probe.probabilities(x).argmax(1) == y).mean() > 0.95
    with pytest.raises(ValueError, match=r"No training scans of \['FLAIR'\]"):
        fit_probe(x[y < 3], [n for n in names if n != "FLAIR"], c=0.1)


def test_record_recogniser_writes_the_probe_and_drops_the_stale_table(tmp_path):
    import json

    from core.sequence import load_recogniser
    from core.weights import REQUIRED_CARD_KEYS
    from train.sequence import record_recogniser

    base = {key: 1 for key in REQUIRED_CARD_KEYS}
    (tmp_path / "model_card.json").write_text(json.dumps({**base, "sequence_table": {"counts": {}}}))
    probe = SequenceRecogniser(np.ones((4, 3)), np.zeros(4), 0.6, (2, 4))
    entry = record_recogniser(tmp_path, probe, {"C": 0.03})
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert "sequence_table" not in card and card["sequence"] == entry
    assert entry["stages"] == [2, 4] and entry["contrast_threshold"] == 0.6 and entry["C"] == 0.03
    loaded = load_recogniser(tmp_path, card)
    np.testing.assert_array_equal(loaded.weight, probe.weight)
