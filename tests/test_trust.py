"""Trust (issue 7): temperature scaling, the out-of-distribution gate, uncertainty flags.

Unit tests run on synthetic data; the gate is also checked with the shipped model on constructed
non-MRI images (rejected) and on real Testing scans (accepted) when assets/ and the dataset exist.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from train.non_mri import KINDS, non_mri_images
from core import load_model, read_scan
from core.constants import ASSETS_DIR, CLASS_LABELS, CLASS_NAMES, MODEL_CARD_NAME, NEGATIVE_CLASS, WEAK_NEGATIVE_FLAG, WEIGHTS_NAME
from core.model import Classifier, answer_cosine, softmax
from core.ood import OOD_NAME, FeatureGate, forward_with_taps, image_problem, load_gate, save_gate
from app.review import analyse_scan, results_csv
from core.weights import WeightsError
from train import metrics
from train.calibrate import (
    COSINE_FLOOR_GRID,
    apply_temperature,
    choose_confidence_threshold,
    choose_negative_floor,
    fit_temperature,
)
from train.ood import fit_gate

SHIPPED_GATE = (ASSETS_DIR / OOD_NAME).is_file()


# ---------------------------------------------------------------------- calibration
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


def test_temperature_keeps_the_predicted_class():
    logits, _ = _overconfident(200, 3.0, seed=2)
    assert (apply_temperature(logits, 2.7).argmax(1) == logits.argmax(1)).all()


def test_fit_temperature_rejects_mismatched_input():
    with pytest.raises(ValueError, match="N targets"):
        fit_temperature(np.zeros((3, 4)), [0, 1])


def test_confidence_threshold_caps_the_flag_rate():
    confidence = np.r_[np.full(90, 0.99), np.linspace(0.5, 0.9, 10)]
    threshold = choose_confidence_threshold(confidence, max_flag_rate=0.05)
    assert (confidence < threshold).mean() <= 0.05
    assert threshold > 0.5  # the cap allows more than the lowest grid value


# ---------------------------------------------------------------------- feature gate
NEG = CLASS_NAMES.index(NEGATIVE_CLASS)


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


def test_answer_cosine_measures_how_cleanly_an_answer_points_at_its_class():
    clean = np.array([0.97, 0.01, 0.01, 0.01])
    runner_up = np.array([0.97, 0.028, 0.001, 0.001])  # the same top probability, one runner-up
    cos = answer_cosine(np.stack([clean, runner_up, np.full(4, 0.25)]))
    assert cos[0] == pytest.approx(1.0) and cos[1] < 0.99 and cos[2] == 0.0
    # The centred logits over their 2-norm (MaxLogit-pNorm, p = 2), scaled to a maximum of 1.
    z = np.log(runner_up) - np.log(runner_up).mean()
    assert cos[1] == pytest.approx(z.max() / np.linalg.norm(z) / np.sqrt(3 / 4))
    # Independent of the temperature: the same logits at T = 1 and T = 3 give one cosine.
    logits = np.array([[2.0, -1.0, 0.5, -3.0], [0.1, 0.3, -0.2, 4.0]])
    assert answer_cosine(softmax(logits, 1.0)) == pytest.approx(answer_cosine(softmax(logits, 3.0)))
    with pytest.raises(ValueError, match="two classes"):
        answer_cosine(np.array([1.0]))


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
    with pytest.raises(ValueError, match="min_precision"):
        choose_negative_floor(probs, targets, NEG, min_precision=1.5)
    with pytest.raises(ValueError, match="negative must index"):
        choose_negative_floor(probs, targets, 7)
    # No negative answer at all (a barely trained model): no floor, rather than a made-up one.
    assert choose_negative_floor(np.tile([0.7, 0.1, 0.1, 0.1], (5, 1)), np.zeros(5), NEG) == (None, {"answers": 0, "reached": False})


def test_gate_accepts_the_training_distribution_and_rejects_far_points():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, size=(4, 16))
    targets = rng.integers(0, 4, 3000)
    features = means[targets] + rng.normal(size=(3000, 16))
    gate = fit_gate(features[:2000], targets[:2000], features[2000:2500], num_classes=4, val_reject_rate=0.01)
    held = gate.score(torch.as_tensor(features[2500:])).numpy()
    assert (held > 1).mean() < 0.05
    far = gate.score(torch.as_tensor(rng.normal(0, 1, size=(50, 16)) + 20)).numpy()
    assert (far > 1).all()
    # the expanded NumPy form equals the textbook distance to the nearest class mean
    points = features[2500:2520]
    diff = points[:, None, :] - gate.means.numpy()[None]
    direct = np.sqrt(np.einsum("ncd,de,nce->nc", diff, gate.precision.numpy(), diff).min(axis=1))
    np.testing.assert_allclose(gate.distance(points).numpy(), direct, rtol=1e-9)
    np.testing.assert_allclose(gate.distance(torch.as_tensor(points)).numpy(), direct, rtol=1e-9)


def test_gate_file_round_trip_and_tamper(tmp_path):
    gate = FeatureGate(torch.zeros(4, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 2.0)
    sha = save_gate(gate, tmp_path / OOD_NAME)
    card = {"ood": {"file": OOD_NAME, "sha256": sha}}
    loaded = load_gate(tmp_path, card)
    assert loaded is not None and loaded.threshold == 2.0
    assert torch.allclose(loaded.distance(torch.tensor([[3.0, 4.0, 0.0]])), torch.tensor([5.0], dtype=torch.float64))
    with open(tmp_path / OOD_NAME, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x00")
    with pytest.raises(WeightsError, match="does not match"):
        load_gate(tmp_path, card)
    assert load_gate(tmp_path, {}) is None


# ---------------------------------------------------------------------- image checks
@pytest.mark.parametrize(
    "image, reason",
    [
        (Image.new("L", (256, 256), 0), "blank"),
        (Image.fromarray(np.full((200, 200), 128, np.uint8) + np.random.default_rng(0).integers(0, 3, (200, 200), dtype=np.uint8)), "blank"),
        (Image.new("RGB", (256, 256), (200, 40, 40)), "blank"),
        (Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)), "coloured"),
        (Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (40, 4))), "aspect"),
    ],
)
def test_image_checks_reject_constructed_non_mri(image, reason):
    problem = image_problem(image)
    assert problem is not None and reason in problem


def test_image_checks_accept_real_scans(data_root):
    files = [f for name in CLASS_NAMES for f in sorted((data_root / "Testing" / name).glob("*.jpg"))[:15]]
    problems = [(f.name, image_problem(read_scan(f))) for f in files]
    assert [p for p in problems if p[1] is not None] == []


def test_non_mri_set_covers_every_kind(data_root):
    items = non_mri_images(data_root=data_root, n_fragment_scans=4)
    assert {kind for kind, _ in items} == set(KINDS)
    assert all(image.mode in ("L", "RGB") for _, image in items)


# ---------------------------------------------------------------------- flags
def test_flags_low_confidence_and_mirror_disagreement(tiny_model):
    low = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    other = torch.tensor([0.1, 0.7, 0.1, 0.1], dtype=torch.float64)
    checked = Classifier(tiny_model.network, tiny_model.card, "cpu", mirror_check=True)
    flags = checked._flags(low, low, other, None)
    assert any(f.startswith("low confidence") for f in flags)
    assert any("mirror image" in f for f in flags)
    # Without the mirror check (the default) a disagreement is not a flag.
    assert not any("mirror image" in f for f in tiny_model._flags(low, low, other, None))
    sure = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    assert tiny_model._flags(sure, sure, sure, None) == ()
    assert tiny_model._flags(sure, sure, sure, "blank image")[0].startswith("not recognised as a brain MRI")
    assert tiny_model._flags(sure, sure, sure, None, "score 1.2")[0].startswith("outside the training data")


def test_weak_no_tumour_answer_is_flagged_others_are_not(tiny_model):
    model = Classifier(tiny_model.network, dict(tiny_model.card, uncertainty={"low_confidence_below": 0.7,
                                                                               "notumor_confidence_below": 0.95}), "cpu")
    assert model.negative_floor == 0.95
    weak = torch.zeros(len(CLASS_NAMES), dtype=torch.float64)
    weak[NEG], weak[0] = 0.90, 0.10
    flags = model._flags(weak, weak, weak, None)
    assert len(flags) == 1 and flags[0].startswith(WEAK_NEGATIVE_FLAG) and "90.0%" in flags[0] and "needs 95%" in flags[0]
    near = weak.clone()
    near[NEG], near[0] = 0.948, 0.052  # shown to one decimal: never "95%, needs 95%"
    assert "no tumour at 94.8%, needs 95%" in model._flags(near, near, near, None)[0]
    sure = weak.clone()
    sure[NEG], sure[0] = 0.96, 0.04
    assert model._flags(sure, sure, sure, None) == ()
    glioma = torch.zeros(len(CLASS_NAMES), dtype=torch.float64)
    glioma[0], glioma[NEG] = 0.90, 0.10
    assert model._flags(glioma, glioma, glioma, None) == ()  # a tumour answer is not held to the floor
    low = weak.clone()
    low[NEG], low[0] = 0.6, 0.4  # already flagged as low confidence: one flag, not two
    assert [f.split(" (")[0] for f in model._flags(low, low, low, None)] == ["low confidence"]
    # Cards since the cosine floor: a "no tumour" answer whose runner-up stands out is flagged
    # even at a high probability; one with evenly unlikely tumour classes is not.
    cosine = Classifier(tiny_model.network, dict(tiny_model.card, uncertainty={"low_confidence_below": 0.7,
                                                                                "notumor_cosine_below": 0.99}), "cpu")
    assert cosine.negative_score == "cosine" and cosine.negative_floor == 0.99
    clean = torch.full((len(CLASS_NAMES),), 0.01, dtype=torch.float64)
    clean[NEG] = 0.97
    standing = torch.full((len(CLASS_NAMES),), 0.001, dtype=torch.float64)
    standing[NEG], standing[0] = 0.97, 0.028
    assert cosine._flags(clean, clean, clean, None) == ()
    flag = cosine._flags(standing, standing, standing, None)
    assert len(flag) == 1 and flag[0].startswith(WEAK_NEGATIVE_FLAG) and "no tumour at 97.0%" in flag[0] and "needs 0.990" in flag[0]
    assert f"but {CLASS_LABELS[CLASS_NAMES[0]].lower()} stands out" in flag[0]  # the runner-up, named
    assert cosine.negative_values(standing.numpy()[None])[0] == pytest.approx(answer_cosine(standing.numpy()))
    # Weights whose card fitted no floor keep the old behaviour.
    plain = Classifier(tiny_model.network, dict(tiny_model.card, uncertainty={"low_confidence_below": 0.7}), "cpu")
    assert plain.negative_floor is None and plain._flags(weak, weak, weak, None) == ()


def test_prediction_carries_the_gate_and_flags(tiny_weights):
    model = load_model(tiny_weights, device="cpu")
    blank = model.predict(Image.new("L", (128, 128), 0))
    assert blank.is_brain_mri is False and blank.flags[0].startswith("not recognised as a brain MRI")
    card = dict(model.card, uncertainty={"low_confidence_below": 1.01})  # every prediction is below
    strict = Classifier(model.network, card, "cpu")
    scan = Image.fromarray((np.random.default_rng(0).random((128, 128)) ** 3 * 255).astype(np.uint8))
    assert any(f.startswith("low confidence") for f in strict.predict(scan).flags)


def test_tapped_pass_gives_the_network_logits(tiny_model):
    batch = tiny_model.preprocess([Image.new("L", (80, 80), 90), Image.new("L", (64, 90), 10)])
    with torch.inference_mode():
        logits, taps = forward_with_taps(tiny_model.network, batch, (2, 4))
        assert torch.allclose(logits, tiny_model.network(batch), atol=1e-5)
    assert taps.shape == (2, 2 * (40 + 112))


def test_one_pass_gives_the_network_outputs(tiny_model):
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 80), dtype=np.uint8)) for i in range(3)]
    outputs, _ = tiny_model._outputs(images)
    expected = torch.softmax(tiny_model.logits(images).double() / tiny_model.temperature, dim=-1)
    assert torch.allclose(outputs.plain, expected, atol=1e-5)
    assert outputs.mirror is None  # no mirror check by default: the scans alone
    checked, _ = Classifier(tiny_model.network, tiny_model.card, "cpu", mirror_check=True)._outputs(images)
    assert torch.allclose(checked.plain, expected, atol=1e-5)
    mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
    expected_mirror = torch.softmax(tiny_model.logits(mirrored).double() / tiny_model.temperature, dim=-1)
    assert torch.allclose(checked.mirror, expected_mirror, atol=1e-4)


# ---------------------------------------------------------------------- shipped model
needs_gate = pytest.mark.skipif(not SHIPPED_GATE, reason="no out-of-distribution gate in assets/ yet")


@needs_gate
def test_shipped_gate_rejects_non_mri_and_accepts_real_scans(shipped_model, data_root):
    items = non_mri_images(data_root=data_root, n_fragment_scans=4)
    predictions = shipped_model.predict_batch([image for _, image in items])
    missed = [kind for (kind, _), p in zip(items, predictions) if p.is_brain_mri]
    assert len(missed) <= 0.05 * len(items), missed
    files = [f for name in CLASS_NAMES for f in sorted((data_root / "Testing" / name).glob("*.jpg"))[::40]]
    scans = shipped_model.predict_batch([read_scan(f) for f in files])
    rejected = [f.name for f, p in zip(files, scans) if not p.is_brain_mri]
    assert len(rejected) <= max(1, 0.02 * len(files)), rejected
    assert all(p.ood_score > 0 for p in scans)


@needs_gate
def test_shipped_predict_batch_equals_predict(shipped_model, scan_paths):
    images = [read_scan(p) for p in scan_paths.values()] + [Image.new("L", (200, 200), 30)]
    batch = shipped_model.predict_batch(images)
    for image, together in zip(images, batch):
        alone = shipped_model.predict(image)
        assert alone.label == together.label and alone.flags == together.flags
        assert alone.is_brain_mri == together.is_brain_mri
        assert alone.ood_score == pytest.approx(together.ood_score, abs=1e-4)
        for name in CLASS_NAMES:
            assert alone.probabilities[name] == pytest.approx(together.probabilities[name], abs=1e-4)


@needs_gate
def test_shipped_card_records_calibration_and_gate():
    card = json.loads((ASSETS_DIR / MODEL_CARD_NAME).read_text())
    assert card["temperature"] > 0 and card["ood"]["file"] == OOD_NAME
    for split in ("validation", "testing"):
        assert set(card["calibration"][split]) >= {"ece_before", "ece_after"}


def test_tampered_shipped_gate_is_refused(tmp_path):
    if not SHIPPED_GATE:
        pytest.skip("no out-of-distribution gate in assets/ yet")
    for name in (WEIGHTS_NAME, MODEL_CARD_NAME, OOD_NAME):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / OOD_NAME).read_bytes())
    data[-8] ^= 0xFF
    (tmp_path / OOD_NAME).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="ood.safetensors"):
        load_model(tmp_path / WEIGHTS_NAME, device="cpu")


def test_csv_export_carries_the_gate_and_flags(tiny_model):
    buffer = io.BytesIO()
    Image.new("L", (128, 128), 0).save(buffer, format="PNG")
    rows = list(csv.DictReader(io.StringIO(results_csv([("blank.png", analyse_scan(tiny_model, buffer.getvalue()))]).decode())))
    assert rows[0]["status"] == "not_brain_mri" and rows[0]["is_brain_mri"] == "false"
    assert rows[0]["label"] == "" and rows[0]["flags"].startswith("not recognised as a brain MRI")
