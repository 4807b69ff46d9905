"""benchmarks.experiments.ensemble: which subsets are scored, and how a candidate is scored."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments.ensemble import OTHER, Scans, candidates, score


def _scans(groups, truths, sources, sequences=None, leak_free=None) -> Scans:
    n = len(groups)
    return Scans([f"scan{i}.png" for i in range(n)], np.array(groups), np.array(truths), np.array(sources),
                 np.array(sequences or [""] * n), np.array(leak_free or [False] * n))


def test_ensemble_candidates_are_every_small_subset_then_all():
    assert candidates(3, 2) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert candidates(2, 3) == [(0,), (1,), (0, 1)]


def test_ensemble_score_fits_its_floor_on_validation_and_reports_per_source():
    clean = [0.02, 0.02, 0.94, 0.02]  # "no tumour", no runner-up standing out
    doubt = [0.30, 0.02, 0.66, 0.02]  # "no tumour", glioma stands out
    # Validation: 60 right clean negatives, 20 wrong doubtful ones: the floor must flag the doubtful ones.
    val_probs = [clean] * 60 + [doubt] * 20
    val_truths = [2] * 60 + [0] * 20
    ext_probs = [doubt, clean, [0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05]]
    ext_truths = [OTHER, OTHER, 0, 0]
    test_probs = [clean, [0.05, 0.05, 0.05, 0.85]]
    test_truths = [2, 1]
    probs = np.array(val_probs + test_probs + ext_probs)
    scans = _scans(["validation"] * 80 + ["testing"] * 2 + ["external"] * 4, val_truths + test_truths + ext_truths,
                   ["validation"] * 80 + ["testing"] * 2 + ["radiopaedia"] * 4,
                   sequences=[""] * 82 + ["T2", "T2", "T1", "T2"], leak_free=[False] * 80 + [True, False] + [False] * 4)
    out = score(probs, scans, low_confidence=0.5)
    assert out["negative_floor"] is not None
    assert out["validation_accuracy"] == pytest.approx(60 / 80)
    assert out["testing_accuracy"] == 0.5 and out["testing_leak_free_accuracy"] == 1.0
    assert out["testing_flagged"] == 0.0
    rad = out["external"]["radiopaedia"]
    # Two other-type lesions called "no tumour": the doubtful one is flagged, the clean one is not.
    assert rad["other_notumor_unflagged"] == 0.5
    assert rad["accuracy"] == 0.5 and rad["unflagged_accuracy"] == 0.5
    assert rad["accuracy_by_sequence"] == {"T1": 1.0, "T2": 0.0}
    assert rad["recall"] == {"glioma": 0.5}
