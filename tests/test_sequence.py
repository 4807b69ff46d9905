"""``core.sequence``: the sequence of a series from vendors' descriptions, from TR/TE/TI when the
words do not say, and from a file name; the image recogniser's naming rule, the user's choice,
and the shipped recogniser on held-out patients."""

from __future__ import annotations

import numpy as np
import pytest

from core import SequenceInfo
from core.sequence import sequence_from_dataset, sequence_from_name, sequence_from_tags


@pytest.mark.parametrize("description, expected", [
    ("t2_tse_tra", "T2"),                      # Siemens
    ("AX FLAIR", "FLAIR"),                     # GE
    ("T1 MPRAGE +C", "T1C"),
    ("SE T1 post Gd", "T1C"),
    ("Ax T2 FSE", "T2"),
    ("sag t1 se", "T1"),
    ("T1W_3D_TFE", "T1"),                      # Philips
    ("COR T1 POST", "T1C"),
    ("AX T1 C+", "T1C"),
    ("t1_mpr_tra_gk_v4", "T1"),
    ("tirm_tra_dark-fluid", "FLAIR"),
    ("T2W_FLAIR", "FLAIR"),
    ("AX T1 FLAIR", "T1"),                     # GE's T1 FLAIR is T1-weighted
    ("Ax T1 pre", "T1"),
    ("T1 pre", "T1"),
    ("ep2d_diff_3scan_trace", "other"),
    ("AX T2* GRE", "other"),
    ("3-plane localizer", "other"),
    ("Neuronavigatore T1 MPRAGE TRA MDC", "T1C"),  # Italian: mezzo di contrasto
    ("series 5", "unknown"),
])
def test_vendor_descriptions(description, expected):
    info = sequence_from_tags(series_description=description)
    assert info.name == expected
    assert info.source == ("unknown" if expected == "unknown" else "tags")
    assert info.series_description == description


def test_protocol_name_counts_too():
    assert sequence_from_tags(series_description="Series 3", protocol_name="t2_tse_tra_p2").name == "T2"


def test_contrast_agent_makes_t1_t1c_but_not_a_pre_contrast_series():
    assert sequence_from_tags("sag t1 se", contrast_bolus_agent="Gadovist").name == "T1C"
    assert sequence_from_tags("sag t1 se", contrast_bolus_agent="  ").name == "T1"
    assert sequence_from_tags("T1 pre", contrast_bolus_agent="Gadovist").name == "T1"
    assert sequence_from_tags("t2_tse_tra", contrast_bolus_agent="Gadovist").name == "T2"


@pytest.mark.parametrize("tr, te, ti, expected", [
    (9000, 120, 2500, "FLAIR"),
    (4500, 100, None, "T2"),
    (500, 12, None, "T1"),
    (2000, 3.4, 1100, "T1"),   # MPRAGE: an inversion-prepared gradient echo
    (3000, 15, None, "unknown"),  # proton density: no rule says it
    (None, None, None, "unknown"),
])
def test_timings_decide_when_the_words_do_not(tr, te, ti, expected):
    info = sequence_from_tags("MR series", repetition_time=tr, echo_time=te, inversion_time=ti)
    assert info.name == expected
    assert (info.repetition_time, info.echo_time, info.inversion_time) == (tr, te, ti)


def test_tse_is_t2_only_with_a_long_echo():
    assert sequence_from_tags("AX TSE", repetition_time=4000, echo_time=95).name == "T2"
    assert sequence_from_tags("AX TSE", repetition_time=600, echo_time=12).name == "T1"
    assert sequence_from_tags("AX TSE").name == "unknown"


def test_timings_with_contrast():
    info = sequence_from_tags("Series 9", repetition_time=450, echo_time=10, contrast_bolus_agent="Dotarem")
    assert info.name == "T1C" and info.contrast_bolus_agent == "Dotarem"


@pytest.mark.parametrize("name, expected", [
    ("niivue_t2w.nii.gz", "T2"),
    ("niivue_mr_gd.nii.gz", "T1C"),
    ("niivue_chris_t1.nii.gz", "T1"),
    ("sub-01_FLAIR.nii", "FLAIR"),
    ("BraTS_t1ce.nii.gz", "T1C"),
    ("tiantan_1.nii.gz", "unknown"),
])
def test_names(name, expected):
    info = sequence_from_name(name)
    assert info.name == expected
    assert info.source == ("unknown" if expected == "unknown" else "name")
    assert info.series_description is None  # a name is not a tag


def test_dataset_tags_including_enhanced_functional_groups():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.SeriesDescription = "Ax 3D"
    ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK", "SP"]
    timing, echo, shared = Dataset(), Dataset(), Dataset()
    timing.RepetitionTime, echo.EffectiveEchoTime = 9000.0, 125.0
    modifier = Dataset()
    modifier.InversionTimes = [2500.0]
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    shared.MREchoSequence = Sequence([echo])
    shared.MRModifierSequence = Sequence([modifier])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    info = sequence_from_dataset(ds)
    assert info.name == "FLAIR" and info.source == "tags"
    assert (info.repetition_time, info.echo_time, info.inversion_time) == (9000.0, 125.0, 2500.0)
    assert info.scanning_sequence == "SE\\IR" and info.sequence_variant == "SK\\SP"


@pytest.mark.parametrize("fields, words", [
    ({"name": "T1+C"}, "'T1+C'"),
    ({"source": "guess"}, "'guess'"),
    ({"name": "unknown", "source": "tags"}, "'tags'"),
    ({"echo_time": -1.0}, "-1.0"),
    ({"echo_time": "12"}, "'12'"),
    ({"series_description": 5}, "5"),
])
def test_sequence_info_validates(fields, words):
    with pytest.raises(ValueError) as info:
        SequenceInfo(**{"name": "T1", "source": "tags", **fields})
    assert words in str(info.value)


def test_sequence_info_defaults_to_unknown_and_is_frozen():
    info = SequenceInfo()
    assert (info.name, info.source) == ("unknown", "unknown")
    with pytest.raises(AttributeError):
        info.name = "T1"


# ---------------------------------------------------------------------- the recogniser
@pytest.mark.parametrize("probs, name, confidence", [
    ((0.05, 0.05, 0.85, 0.05), "T2", 0.85),
    ((0.02, 0.03, 0.05, 0.90), "FLAIR", 0.90),
    ((0.10, 0.80, 0.05, 0.05), "T1C", 0.80),    # T1C holds 0.89 of the T1-weighted 0.9: named, at its own 0.8
    ((0.80, 0.10, 0.05, 0.05), "T1", 0.80),
    ((0.45, 0.45, 0.05, 0.05), "T1w", 0.90),    # contrast cannot be told: T1-weighted
    ((0.30, 0.10, 0.30, 0.30), "unknown", None),  # nothing reaches 0.6
])
def test_the_recogniser_names_t1w_where_contrast_cannot_be_told(probs, name, confidence):
    from core.sequence import SequenceRecogniser

    # A probe with zero weights gives its bias's softmax for any features.
    recogniser = SequenceRecogniser(np.zeros((4, 6)), np.log(probs), contrast_threshold=0.7)
    info = recogniser.recognise(np.random.default_rng(0).normal(size=(1, 6)))[0]
    assert info.name == name and info.source == ("unknown" if name == "unknown" else "image")
    assert info.confidence == (None if confidence is None else pytest.approx(confidence, abs=1e-6))


def test_user_sequence_is_the_users_and_names_the_choices():
    from core.constants import USER_SEQUENCES
    from core.sequence import user_sequence

    assert user_sequence(" t1c ") == SequenceInfo("T1C", "user")
    assert [user_sequence(n).name for n in USER_SEQUENCES] == list(USER_SEQUENCES)
    with pytest.raises(ValueError, match=r"Unknown sequence 'unknown'; choose one of \['T1', 'T1C', 'T1w'"):
        user_sequence("unknown")


def test_the_probe_is_a_softmax_of_its_linear_map_and_checks_its_input():
    from core.sequence import SequenceRecogniser

    rng = np.random.default_rng(1)
    weight, bias, x = rng.normal(size=(4, 5)), rng.normal(size=4), rng.normal(size=(3, 5))
    probs = SequenceRecogniser(weight, bias, 0.7).probabilities(x)
    logits = x @ weight.T + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"takes \(N, 5\) features, got shape \(3, 4\)"):
        SequenceRecogniser(weight, bias, 0.7).probabilities(x[:, :4])
    with pytest.raises(ValueError, match=r"weight \(4, D\) and bias \(4,\)"):
        SequenceRecogniser(weight[:3], bias, 0.7)
    with pytest.raises(ValueError, match="contrast_threshold must be in"):
        SequenceRecogniser(weight, bias, 0.3)


def test_a_saved_recogniser_loads_equal_and_a_changed_file_is_refused(tmp_path):
    from core.sequence import SEQUENCE_PROBE_NAME, SequenceRecogniser, load_recogniser, save_recogniser
    from core.weights import WeightsError

    rng = np.random.default_rng(2)
    recogniser = SequenceRecogniser(rng.normal(size=(4, 8)), rng.normal(size=4), 0.65, (2, 4), min_confidence=0.7)
    sha = save_recogniser(recogniser, tmp_path / SEQUENCE_PROBE_NAME)
    card = {"sequence": {"file": SEQUENCE_PROBE_NAME, "sha256": sha, "contrast_threshold": 0.65, "min_confidence": 0.7}}
    loaded = load_recogniser(tmp_path, card)
    x = rng.normal(size=(5, 8))
    np.testing.assert_array_equal(loaded.probabilities(x), recogniser.probabilities(x))
    assert loaded.stages == (2, 4) and loaded.contrast_threshold == 0.65 and loaded.min_confidence == 0.7
    assert load_recogniser(tmp_path, {}) is None
    (tmp_path / SEQUENCE_PROBE_NAME).write_bytes(b"not the probe")
    with pytest.raises(WeightsError, match="does not match its model card"):
        load_recogniser(tmp_path, card)


def test_the_shipped_recogniser_keeps_its_accuracy_on_held_out_patients(shipped_model):
    """tcga-lgg's held-out patients (the recogniser's validation split): their FLAIR, T1 and T1C
    slices, and the T2-like images made from them, named at the T2 / FLAIR / T1-weighted level at
    least as often as 0.9 of the time, from the features a prediction taps."""
    from core.constants import extra_dir
    from train.sequence import extra_labels, features_of, labelled_image, split

    if not extra_dir().is_dir():
        pytest.skip("needs tcga-lgg")
    if shipped_model.recogniser is None:
        pytest.skip("the shipped model has no sequence recogniser")
    _, held = split([], extra_labels(extra_dir(), synth_t2=True), seed=0)
    rng = np.random.default_rng(0)
    picked = [held[i] for i in rng.choice(len(held), 120, replace=False)]
    images = [labelled_image(scan) for scan in picked]
    infos = shipped_model.recogniser.recognise(features_of(shipped_model, images))
    level = {"T1": "T1w", "T1C": "T1w", "T1w": "T1w", "T2": "T2", "FLAIR": "FLAIR"}
    right = [level.get(info.name) == level[scan.sequence] for scan, info in zip(picked, infos)]
    assert {scan.sequence for scan in picked} == {"T1", "T1C", "T2", "FLAIR"}
    assert np.mean(right) >= 0.9
    # The prediction path gives each scan the same reading.
    assert [p.sequence for p in shipped_model.predict_batch(images[:8])] == infos[:8]
