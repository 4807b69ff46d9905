"""core.model: load_model, the one prediction path (predict_batch) and Grad-CAM, on a random
model and on real scans."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from PIL import Image

import core
from core import CLASS_NAMES, WeightsError, load_model, read_scan
from core.model import Classifier, Prediction, build_network, softmax
from core.ood import FeatureGate, forward_with_taps
from core.preprocess import input_array
from core.results import OUTSIDE_TRAINING_FLAG, flag_text
from core.rules import LOW_CONFIDENCE, MIRROR_DISAGREES, NOT_BRAIN_MRI, OUTSIDE_TRAINING, Flag, ReviewRules
from core.runtime import TorchRuntime, with_mirror
from core.weights import card_path_for
from conftest import RecordingRuntime
from synthetic import synthetic_scan

#: Probabilities of one scan alone and within a batch agree to this (float32 network).
PROB_TOL = 1e-4


def _scans(n: int = 4) -> list[Image.Image]:
    """Grey noise of several sizes: the tiny random network is far from certain about it (it
    answers a synthetic head with certainty), so the tests below see the numbers move."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (80 + 8 * i, 96), dtype=np.uint8)) for i in range(n)]


def _probabilities(prediction: Prediction) -> np.ndarray:
    return np.array([prediction.probabilities[name] for name in CLASS_NAMES])


# ---------------------------------------------------------------------- the public names
def test_public_names():
    assert CLASS_NAMES == ("glioma", "meningioma", "notumor", "pituitary")
    assert issubclass(core.ScanError, ValueError)
    expected = {"CLASS_NAMES", "FLAG_KINDS", "Classifier", "Flag", "Prediction", "ScanError", "WeightsError", "flag_text",
                "load_model", "read_scan"}
    assert expected <= set(core.__all__) and all(hasattr(core, name) for name in core.__all__)


# ---------------------------------------------------------------------- a prediction
def test_prediction_contract(tiny_model, scan_paths):
    prediction = tiny_model.predict(read_scan(scan_paths["pituitary"]))
    assert prediction.label in CLASS_NAMES
    assert set(prediction.probabilities) == set(CLASS_NAMES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.flag_kinds == tuple(flag.kind for flag in prediction.flags)
    with pytest.raises(FrozenInstanceError):
        prediction.label = "glioma"  # type: ignore[misc]


def test_predict_batch_equals_predict(tiny_model, scan_paths):
    images = [read_scan(p) for p in scan_paths.values()] * 2
    batch = tiny_model.predict_batch(images, batch_size=3)
    assert len(batch) == len(images)
    for image, from_batch in zip(images, batch):
        single = tiny_model.predict(image)
        assert single.label == from_batch.label and single.flag_kinds == from_batch.flag_kinds
        assert np.abs(_probabilities(single) - _probabilities(from_batch)).max() < PROB_TOL


def test_probabilities_are_the_calibrated_network_outputs(tiny_model):
    """predict_batch: the prepared input, one pass of the network, softmax at the card's temperature."""
    images = _scans()
    card = dict(tiny_model.card, temperature=2.5)
    model = Classifier(tiny_model.network, card)
    batch = input_array(images, model.image_size, card["mean"], card["std"], model.crop_head)
    logits, _ = TorchRuntime(tiny_model.network).run(batch)
    expected = softmax(logits, 2.5)
    got = np.stack([_probabilities(p) for p in model.predict_batch(images)])
    assert np.abs(got - expected).max() < 1e-6
    assert np.abs(got - softmax(logits, 1.0)).max() > 1e-3  # the temperature was used


def test_a_batch_is_one_pass_of_the_scans_alone(tiny_model):
    runtime = RecordingRuntime(tiny_model.runtime)
    model = Classifier(tiny_model.network, tiny_model.card, runtime=runtime)
    predictions = model.predict_batch(_scans(5), batch_size=3)
    assert [len(b) for b in runtime.batches] == [3, 2] and model.runtime is runtime
    assert not any(MIRROR_DISAGREES in p.flag_kinds for p in predictions)


def test_tta_averages_each_scan_with_its_mirror_image(tiny_model):
    """With tta one pass holds the scans and their mirror images; the served probabilities are
    the mean of the two, and a disagreement between them is a flag naming both classes."""
    images = _scans()
    runtime = RecordingRuntime(tiny_model.runtime)
    model = Classifier(tiny_model.network, tiny_model.card, tta=True, runtime=runtime)
    predictions = model.predict_batch(images)
    (batch,) = runtime.batches
    plain = input_array(images, model.image_size, model.card["mean"], model.card["std"], model.crop_head)
    assert np.array_equal(batch, with_mirror(plain))
    logits, _ = tiny_model.runtime.run(batch)
    probs = softmax(logits, model.temperature)
    n = len(images)
    assert np.abs(probs[:n] - probs[n:]).max() > 1e-3  # the mirror images answer differently
    for i, prediction in enumerate(predictions):
        assert np.abs(_probabilities(prediction) - (probs[i] + probs[n + i]) / 2).max() < 1e-6
        disagrees = probs[i].argmax() != probs[n + i].argmax()
        assert (MIRROR_DISAGREES in prediction.flag_kinds) == disagrees
    # The mirror flag itself, forced: the mirror runtime answers another class for every scan.
    class Mirrored(RecordingRuntime):
        def run(self, batch):
            logits, taps = self.inner.run(batch)
            logits[len(batch) // 2:] = 0.0
            logits[len(batch) // 2:, 0] = 50.0 if logits[0].argmax() != 0 else -50.0
            return logits, taps

    forced = Classifier(tiny_model.network, tiny_model.card, tta=True, runtime=Mirrored(tiny_model.runtime))
    flag = forced.predict(images[0]).flags[-1]
    assert flag.kind == MIRROR_DISAGREES and flag.classes[0] != flag.classes[1]


def test_a_blank_image_is_not_a_brain_mri(tiny_model):
    blank = tiny_model.predict(Image.new("L", (128, 128), 0))
    assert not blank.is_brain_mri and blank.flags[0].kind == NOT_BRAIN_MRI and blank.flags[0].check == "blank"


def test_the_cards_thresholds_reach_the_rules(tiny_model):
    """A high temperature flattens every answer under the card's low-confidence threshold."""
    card = dict(tiny_model.card, temperature=100.0, uncertainty={"low_confidence_below": 0.6, "notumor_cosine_below": 0.9})
    strict = Classifier(tiny_model.network, card)
    assert strict.rules == ReviewRules(low_confidence=0.6, negative_floor=0.9)
    prediction = strict.predict(_scans(1)[0])
    assert prediction.confidence < 0.6 and prediction.flags == (Flag(LOW_CONFIDENCE, prediction.confidence, 0.6),)
    assert tiny_model.rules == ReviewRules.from_card(tiny_model.card)


def test_predictions_between_the_gate_thresholds_are_outside_the_training_data(tiny_model):
    """The gate scores the taps of the prediction's own pass: a scan between its two thresholds
    is outside the training data, beyond the second not a brain MRI; the probabilities stay."""
    image = synthetic_scan(1)
    batch = torch.from_numpy(input_array([image], tiny_model.image_size, crop_head=tiny_model.crop_head))
    with torch.inference_mode():
        features = forward_with_taps(tiny_model.network, batch.expand(-1, 3, -1, -1), (2, 4))[1].double().numpy()
    assert tiny_model.gate is None
    base = tiny_model.predict(image)
    assert not base.outside_training and base.is_brain_mri and base.ood_score == 0.0
    dim = features.shape[1]
    means = torch.zeros(len(CLASS_NAMES), dim, dtype=torch.float64)
    distance = float(np.sqrt((features[0] ** 2).sum()))
    for threshold, reject, kind in ((distance * 2, None, None), (distance / 2, distance * 2, OUTSIDE_TRAINING),
                                    (distance / 4, distance / 2, NOT_BRAIN_MRI)):
        gate = FeatureGate(means, torch.eye(dim, dtype=torch.float64), threshold, (2, 4), reject)
        prediction = Classifier(tiny_model.network, tiny_model.card, gate=gate).predict(image)
        assert prediction.ood_score == pytest.approx(distance / threshold, rel=1e-4)
        assert (prediction.outside_training, prediction.is_brain_mri) == (kind == OUTSIDE_TRAINING, kind != NOT_BRAIN_MRI)
        assert [f.kind for f in prediction.flags if f.kind in (OUTSIDE_TRAINING, NOT_BRAIN_MRI)] == ([kind] if kind else [])
        assert any(flag_text(f).startswith(OUTSIDE_TRAINING_FLAG) for f in prediction.flags) == (kind == OUTSIDE_TRAINING)
        assert prediction.probabilities == pytest.approx(base.probabilities, abs=1e-5)


def test_predict_rejects_non_images(tiny_model):
    with pytest.raises(TypeError, match="PIL image.*ndarray"):
        tiny_model.predict(np.zeros((64, 64)))
    with pytest.raises(TypeError, match="PIL image.*str"):
        tiny_model.predict_batch([Image.new("L", (64, 64)), "scan.jpg"])


# ---------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("size", [(224, 224), (300, 180)])
def test_explain_contract(tiny_model, scan_paths, size):
    image = read_scan(scan_paths["glioma"]).resize(size)
    before = np.asarray(image).copy()
    heatmap = tiny_model.explain(image)
    assert heatmap.dtype == np.float32
    assert heatmap.shape == (size[1], size[0])
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert np.array_equal(before, np.asarray(image)), "explain must not modify its input"
    # Hooks are released after each call: no forward or backward hooks remain on the network.
    for module in tiny_model.cam.net.modules():
        assert not module._forward_hooks and not module._backward_hooks


def test_explain_target_changes_heatmap(tiny_model, scan_paths):
    image = read_scan(scan_paths["meningioma"])
    maps = {name: tiny_model.explain(image, target=name) for name in CLASS_NAMES}
    predicted = tiny_model.predict(image).label
    assert np.allclose(tiny_model.explain(image), maps[predicted])
    assert any(not np.allclose(maps[a], maps[b]) for a in CLASS_NAMES for b in CLASS_NAMES if a != b)
    with pytest.raises(ValueError, match="'tumour'.*glioma"):
        tiny_model.explain(image, target="tumour")


# ---------------------------------------------------------------------- loading
def test_load_model_missing_and_corrupt(tmp_path, tiny_weights):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(WeightsError, match="absent.safetensors"):
        load_model(missing)
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    card = json.loads(card_path_for(tiny_weights).read_text())
    card_path_for(corrupt).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=str(corrupt.name)):
        load_model(corrupt)


def test_load_model_default_uses_assets(monkeypatch, tiny_weights):
    """The weights of $BTMRI_ASSETS, with the options given: tta, and the threads (torch's
    process-wide count is set to them)."""
    monkeypatch.setenv("BTMRI_ASSETS", str(tiny_weights.parent))
    model = load_model(device="cpu", tta=True, threads=1)
    assert model.card["weights_sha256"] == json.loads(card_path_for(tiny_weights).read_text())["weights_sha256"]
    assert isinstance(model.runtime, TorchRuntime)  # the tiny card names no ONNX graph
    assert model.tta and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        load_model(device="cpu", threads=0)


def test_errors_name_the_bad_value(tiny_model):
    with pytest.raises(ValueError, match="'resnet_nonexistent'"):
        build_network("resnet_nonexistent")
    with pytest.raises(WeightsError, match="'tumour'"):
        Classifier(tiny_model.network, dict(tiny_model.card, class_names=["tumour", *CLASS_NAMES[1:]]))
    with pytest.raises(ValueError, match="low_confidence must be in \\(0, 1\\), got 1.01"):
        Classifier(tiny_model.network, dict(tiny_model.card, uncertainty={"low_confidence_below": 1.01}))


def test_softmax_over_the_last_axis_at_a_temperature():
    logits = np.array([[2.0, -1.0, 0.5, -3.0], [1000.0, 0.0, 0.0, 0.0]])
    probs = softmax(logits)
    assert probs.dtype == np.float64 and probs.sum(axis=-1) == pytest.approx([1.0, 1.0])
    assert probs[0] == pytest.approx(np.exp(logits[0]) / np.exp(logits[0]).sum())
    assert np.isfinite(probs).all()  # large logits do not overflow
    assert softmax(logits, 2.0)[0] == pytest.approx(softmax(logits[0] / 2.0))


# ---------------------------------------------------------------------- the shipped model
def test_shipped_model_on_real_scans(shipped_model, scan_paths):
    """The committed model recognises one clear scan of each class."""
    for name, path in scan_paths.items():
        assert shipped_model.predict(read_scan(path)).label == name


def test_shipped_predict_batch_equals_predict(shipped_model, scan_paths):
    images = [read_scan(p) for p in scan_paths.values()] + [Image.new("L", (200, 200), 30)]
    batch = shipped_model.predict_batch(images)
    for image, together in zip(images, batch):
        alone = shipped_model.predict(image)
        assert alone.label == together.label and alone.flag_kinds == together.flag_kinds
        assert alone.is_brain_mri == together.is_brain_mri
        assert alone.ood_score == pytest.approx(together.ood_score, abs=1e-4)
        assert np.abs(_probabilities(alone) - _probabilities(together)).max() < PROB_TOL


# ---------------------------------------------------------------------- the sequence of each scan
#: The stages the tiny model taps for its recogniser in these tests (the gate's, in shipped models).
STAGES = (2, 4)


def fixed_recogniser(probs, contrast_threshold: float = 0.7):
    """A sequence recogniser whose probe gives the same probabilities for every scan (zero
    weights, the log-probabilities as bias), and counts the scans it was asked about."""
    from core.sequence import SequenceRecogniser

    class Counting(SequenceRecogniser):
        asked = 0

        def probabilities(self, features):
            Counting.asked += len(features)
            return super().probabilities(features)

    features = 2 * (40 + 112)  # mean and std of the channels of efficientnet_lite0's stages 2 and 4
    return Counting(np.zeros((4, features)), np.log(np.asarray(probs, dtype=np.float64)), contrast_threshold, STAGES)


#: A table where meningiomas and pituitary tumours were learned from contrast T1 only, and "no
#: tumour" from contrast T1 and FLAIR only (the random tiny model answers "no tumour" to noise,
#: so its answers are flagged on T1, T2 and other sequences).
TABLE = {
    "glioma": {"T1": 300, "T1C": 1000, "T2": 100, "FLAIR": 400},
    "meningioma": {"T1C": 1300},
    "notumor": {"T1C": 300, "FLAIR": 300},
    "pituitary": {"T1C": 1400},
}


def _with(model, recogniser=None, coverage=None):
    """A shallow copy of the session's ``model`` with its own recogniser and sequence rule."""
    import copy
    import dataclasses

    from core.runtime import TorchRuntime

    other = copy.copy(model)
    other.recogniser = recogniser
    other.runtime = TorchRuntime(model.network, "cpu", STAGES)  # taps the stages the probe reads
    other.rules = dataclasses.replace(model.rules, coverage=coverage)
    return other


def test_every_prediction_carries_a_sequence_and_the_user_choice_wins(tiny_model):
    from core.sequence import user_sequence

    session = fixed_recogniser([0.05, 0.05, 0.85, 0.05])  # T2 at 0.85
    model = _with(tiny_model, session)
    images = _scans(3)
    given = [None, user_sequence("flair"), None]
    predictions = model.predict_batch(images, sequences=given)
    assert [(p.sequence.name, p.sequence.source) for p in predictions] == [("T2", "image"), ("FLAIR", "user"), ("T2", "image")]
    assert predictions[0].sequence.confidence == pytest.approx(0.85, abs=1e-6)
    assert session.asked == 2  # the user's scan is never shown to the recogniser
    # Without a recogniser, a scan nothing describes has an unknown sequence.
    assert tiny_model.predict(images[0]).sequence.name == "unknown"
    with pytest.raises(ValueError, match="2 sequences for 3 images"):
        model.predict_batch(images, sequences=given[:2])


def _t2_dicom() -> Image.Image:
    """A generated DICOM slice whose SeriesDescription says T2, read as an upload is."""
    from dicom_factory import dicom_bytes
    from series_factory import mr_slice

    pixels = np.asarray(synthetic_scan(0, size=96).convert("L"), dtype=np.uint16) * 16
    return read_scan(dicom_bytes(mr_slice(pixels, (0.0, 0.0, 0.0), description="t2_tse_tra", patient=False)))


def test_read_scan_keeps_the_sequence_of_the_dicom_tags():
    image = _t2_dicom()
    assert image.info["sequence"].name == "T2" and image.info["sequence"].source == "tags"


def test_tags_decide_and_the_recogniser_is_not_asked(tiny_model):
    image = _t2_dicom()
    session = fixed_recogniser([0.9, 0.04, 0.03, 0.03])  # the image alone would say T1
    prediction = _with(tiny_model, session).predict(image)
    assert (prediction.sequence.name, prediction.sequence.source) == ("T2", "tags") and session.asked == 0


@pytest.mark.parametrize("sequence", ["T1C", "T1w", "T2", "FLAIR", "T1", "other"])
def test_sequence_not_learned_follows_the_table(tiny_model, sequence):
    from core.rules import SEQUENCE_NOT_LEARNED, SequenceCoverage
    from core.sequence import user_sequence

    coverage = SequenceCoverage(TABLE, 0.02)
    model = _with(tiny_model, coverage=coverage)
    raised = []
    for prediction in model.predict_batch(_scans(4), sequences=[user_sequence(sequence)] * 4):
        expected = coverage.flag(prediction.label, sequence)
        flags = [f for f in prediction.flags if f.kind == SEQUENCE_NOT_LEARNED]
        assert flags == ([expected] if expected is not None else [])
        raised.append(bool(flags))
    if sequence in ("T1", "T2", "other"):  # the table covers no answer there but glioma's
        assert any(raised)
    # Without the table, no such flag.
    assert not any(SEQUENCE_NOT_LEARNED in p.flag_kinds for p in tiny_model.predict_batch(
        _scans(4), sequences=[user_sequence(sequence)] * 4))


def test_an_unsure_recogniser_does_not_raise_the_flag(tiny_model):
    from core.rules import SEQUENCE_NOT_LEARNED, SequenceCoverage
    # The recogniser says T2 at 0.85: the rule acts on it with a floor of 0.8, not with 0.9.
    recogniser = fixed_recogniser([0.05, 0.05, 0.85, 0.05])
    images = _scans(4)
    for floor, acts in ((0.8, True), (0.9, False)):
        coverage = SequenceCoverage(TABLE, 0.02, min_confidence=floor)
        predictions = _with(tiny_model, recogniser, coverage).predict_batch(images)
        for p in predictions:
            expected = acts and coverage.flag(p.label, "T2") is not None
            assert (SEQUENCE_NOT_LEARNED in p.flag_kinds) == expected and p.sequence.name == "T2"
        assert any(SEQUENCE_NOT_LEARNED in p.flag_kinds for p in predictions) == acts


def test_a_series_takes_one_sequence_for_all_its_slices(tiny_model):
    from core.rules import SequenceCoverage
    from core.sequence import SequenceInfo, user_sequence
    from core.series import Series
    from series_factory import phantom

    volume = phantom(slices=6, rows=64, cols=64)
    slices = tuple(Image.fromarray((v / max(v.max(), 1) * 255).astype(np.uint8)) for v in volume)
    series = Series(name="1 test", slices=slices, positions_mm=tuple(float(k) for k in range(6)), pixel_spacing=(1.0, 1.0),
                    plane="axial", sequence=SequenceInfo(), source="test", format="nifti", window=(0.0, 255.0))
    session = fixed_recogniser([0.02, 0.9, 0.04, 0.04])  # T1C
    model = _with(tiny_model, session, SequenceCoverage(TABLE, 0.02))
    answer = model.predict_series(series)
    assert (answer.sequence.name, answer.sequence.source) == ("T1C", "image")
    assert all(p.sequence == answer.sequence for p in answer.slices)
    chosen = model.predict_series(series, sequence=user_sequence("T2"))
    assert chosen.sequence.source == "user" and all(p.sequence.name == "T2" for p in chosen.slices)
    expected = model.rules.coverage.flag(chosen.label, "T2")
    assert ("sequence_not_learned" in chosen.flag_kinds) == (expected is not None and bool(chosen.key_slices))


def test_a_series_goes_through_the_network_once_and_its_sequence_reads_the_same_pass(tiny_model):
    """The series' sequence comes from the features of the prediction pass itself: one network
    run per batch of slices, nothing more, and the probe sees exactly the slices with enough head."""
    from conftest import RecordingRuntime

    from core.sequence import SequenceInfo
    from core.series import Series
    from core.series_rule import enough_head
    from series_factory import phantom

    volume = phantom(slices=7, rows=64, cols=64)
    slices = tuple(Image.fromarray((v / max(v.max(), 1) * 255).astype(np.uint8)) for v in volume)
    series = Series(name="2 test", slices=slices, positions_mm=tuple(float(k) for k in range(7)), pixel_spacing=(1.0, 1.0),
                    plane="axial", sequence=SequenceInfo(), source="test", format="nifti", window=(0.0, 255.0))
    recogniser = fixed_recogniser([0.05, 0.05, 0.85, 0.05])
    model = _with(tiny_model, recogniser)
    model.runtime = RecordingRuntime(model.runtime)
    before = recogniser.asked
    answer = model.predict_series(series, batch_size=3)
    assert [len(b) for b in model.runtime.batches] == [3, 3, 1]
    assert recogniser.asked - before == sum(enough_head(series.slices))
    assert (answer.sequence.name, answer.sequence.source) == ("T2", "image")


def test_a_recogniser_must_read_the_stages_the_gate_taps(tiny_model):
    """The probe reads the gate's tapped features: a card whose recogniser names other stages is
    refused at load, naming both."""
    import torch

    from core.model import Classifier
    from core.ood import FeatureGate
    from core.weights import WeightsError

    features = 2 * (40 + 112)
    gate = FeatureGate(torch.zeros(4, features, dtype=torch.float64), torch.eye(features, dtype=torch.float64), 10.0, STAGES)
    recogniser = fixed_recogniser([0.05, 0.05, 0.85, 0.05])
    recogniser.stages = (3, 5)
    with pytest.raises(WeightsError, match=r"reads stages \(3, 5\), the gate taps \(2, 4\)"):
        Classifier(tiny_model.network, tiny_model.card, gate=gate, recogniser=recogniser)
    recogniser.stages = STAGES
    model = Classifier(tiny_model.network, tiny_model.card, gate=gate, recogniser=recogniser)
    # The gate's taps reach the probe: the scan is read as T2 from the image.
    assert (model.predict(_scans(1)[0]).sequence.name, model.predict(_scans(1)[0]).sequence.source) == ("T2", "image")
