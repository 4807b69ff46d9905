"""core.series_rule: the series answer from synthetic slice answers, its flags and key slices."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.constants import CLASS_NAMES
from core.model import Prediction
from core.series_rule import (
    DISAGREEMENT,
    FEW_ASSESSED,
    ISOLATED_TUMOUR_SLICES,
    OUTSIDE_TRAINING,
    SeriesRule,
    assessed_slices,
    decide,
    head_areas,
)


def _answer(label: str, p: float = 0.9, outside: bool = False, mri: bool = True) -> Prediction:
    rest = (1 - p) / 3
    probs = {c: (p if c == label else rest) for c in CLASS_NAMES}
    return Prediction(label, p, probs, is_brain_mri=mri, outside_training=outside)


def _series(*labels: str, p: float = 0.9) -> list[Prediction]:
    return [_answer(label, p) for label in labels]


RULE = SeriesRule(min_probability=0.7, min_slices=2)


def test_one_odd_slice_does_not_decide():
    slices = _series(*["notumor"] * 9, "glioma")
    decision = decide(RULE, slices, [True] * 10)
    assert decision.label == "notumor" and decision.support["glioma"] == 1
    assert [f.kind for f in decision.flags] == [ISOLATED_TUMOUR_SLICES]
    assert decision.key_slices[0].index == 9  # the suspicious slice leads the key slices


def test_enough_supporting_slices_call_the_tumour_even_among_many_normal_ones():
    slices = _series(*["notumor"] * 20, "meningioma", "meningioma", "meningioma")
    decision = decide(RULE, slices, [True] * 23, positions_mm=[float(i) for i in range(23)])
    assert decision.label == "meningioma" and decision.support["meningioma"] == 3 and not decision.flags
    assert {k.index for k in decision.key_slices} == {20, 21, 22} and decision.key_slices[0].position_mm in (20.0, 21.0, 22.0)
    assert decision.confidence == pytest.approx(0.9)


def test_weak_slices_do_not_support():
    slices = _series(*["notumor"] * 5) + [_answer("glioma", 0.6)] * 4
    assert decide(RULE, slices, [True] * 9).label == "notumor"
    assert decide(SeriesRule(min_probability=0.5, min_slices=2), slices, [True] * 9).label == "glioma"


def test_a_share_of_the_assessed_slices_can_be_required():
    slices = _series(*["notumor"] * 97, "glioma", "glioma", "glioma")
    assert decide(RULE, slices, [True] * 100).label == "glioma"
    assert decide(SeriesRule(min_slices=2, min_share=0.05), slices, [True] * 100).label == "notumor"


def test_two_supported_tumour_classes_are_a_disagreement():
    slices = _series("glioma", "glioma", "glioma", "meningioma", "meningioma", "notumor")
    decision = decide(RULE, slices, [True] * 6)
    assert decision.label == "glioma"
    assert decision.flags[0].kind == DISAGREEMENT and decision.flags[0].classes == ("glioma", "meningioma")


def test_not_assessed_slices_do_not_count():
    slices = _series("glioma", "glioma", "notumor", "notumor")
    assert decide(RULE, slices, [False, False, True, True]).label == "notumor"
    rejected = [_answer("glioma", mri=False), _answer("glioma", mri=False), _answer("notumor")]
    assert decide(RULE, rejected, [True] * 3).label == "notumor"


def test_a_series_mostly_outside_the_training_data_is_flagged():
    slices = [_answer("glioma", outside=True)] * 3 + _series("glioma")
    decision = decide(RULE, slices, [True] * 4)
    assert decision.outside_training and decision.flags[0].kind == OUTSIDE_TRAINING
    assert decision.flags[0].value == pytest.approx(0.75)


def test_too_few_assessed_slices_are_flagged():
    decision = decide(RULE, _series("notumor"), [True])
    assert decision.label == "notumor" and FEW_ASSESSED in [f.kind for f in decision.flags]


def test_majority_and_maximum_rules_differ_from_the_served_one():
    slices = _series(*["notumor"] * 9, "glioma")
    assert decide(SeriesRule(kind="majority"), slices, [True] * 10).label == "notumor"
    assert decide(SeriesRule(kind="maximum"), slices, [True] * 10).label == "glioma"
    assert decide(RULE, slices, [True] * 10).label == "notumor"


def test_bad_rules_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="'vote'"):
        SeriesRule(kind="vote")
    with pytest.raises(ValueError, match="min_slices=0"):
        SeriesRule(min_slices=0)


def test_rule_round_trips_through_the_card():
    rule = SeriesRule(min_probability=0.8, min_slices=3, min_share=0.1)
    assert SeriesRule.from_card({"series": rule.to_card()}) == rule
    assert SeriesRule.from_card({}) == SeriesRule()


def _disc(size: int, radius: float) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
    return Image.fromarray((inside * 150).astype(np.uint8), mode="L")


def test_slices_with_little_head_are_not_assessed():
    images = [_disc(128, r) for r in (8, 30, 50, 50, 30, 8)]
    areas = head_areas(images)
    assert areas[2] == pytest.approx(areas[3]) and areas[0] < areas[1] < areas[2]
    assessed = assessed_slices(images, _series(*["notumor"] * 6))
    assert assessed.tolist() == [False, True, True, True, True, False]


def test_predict_series_scores_every_slice_through_the_batch_path(tiny_model):
    from core.sequence import SequenceInfo
    from core.series import Series

    images = [_disc(96, r) for r in (10, 30, 40, 40, 30, 10)]
    series = Series(name="Series 3: test", slices=tuple(images), positions_mm=tuple(2.0 * i for i in range(6)),
                    pixel_spacing=(1.0, 1.0), plane="axial", sequence=SequenceInfo("T1C", "tags"), source="test",
                    format="dicom", window=(0.0, 255.0))
    calls = []
    result = tiny_model.predict_series(series, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 6), (6, 6)]
    batch = tiny_model.predict_batch(images)
    for got, want in zip(result.slices, batch):
        assert got.probabilities == pytest.approx(want.probabilities)
    assert result.n_slices == 6 and result.assessed_mask == (False, True, True, True, True, False) and result.assessed == 4
    assert result.positions_mm == series.positions_mm and result.name == series.name and result.plane == "axial"
    assert result.label in CLASS_NAMES and all(k.index in (1, 2, 3, 4) for k in result.key_slices)
