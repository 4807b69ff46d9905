"""Is it a brain MRI like the training scans? core.ood's image checks and feature gate, and
train.ood's fitting of the gate (synthetic features), with the shipped gate checked on
generated non-MRI images and real scans when assets/ and the dataset are at hand."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core import load_model, read_scan
from core.constants import ASSETS_DIR, CLASS_NAMES, MODEL_CARD_NAME, WEIGHTS_NAME
from core.model import build_network
from core.ood import (
    OOD_NAME,
    FeatureGate,
    ImageLimits,
    forward_with_taps,
    image_problem,
    image_stats,
    load_gate,
    save_gate,
    stage_statistics,
)
from core.rules import ImageProblem
from core.weights import WeightsError, sha256_file
from train.non_mri import KINDS, non_mri_images
from train.ood import SplitOutputs, fit_gate, fit_reject_threshold, rejection_rate

SHIPPED_GATE = (ASSETS_DIR / OOD_NAME).is_file()
needs_gate = pytest.mark.skipif(not SHIPPED_GATE, reason="no out-of-distribution gate in assets/ yet")


def _gate(reject: float | None = None, threshold: float = 1.0) -> FeatureGate:
    """Two features, every class mean at the origin, identity precision: the distance is the norm."""
    means = torch.zeros(len(CLASS_NAMES), 2, dtype=torch.float64)
    return FeatureGate(means, torch.eye(2, dtype=torch.float64), threshold=threshold, stages=(2, 4), reject_threshold=reject)


# ---------------------------------------------------------------------- image checks
@pytest.mark.parametrize(
    "image, check",
    [
        (Image.new("L", (256, 256), 0), "blank"),
        (Image.fromarray(np.full((200, 200), 128, np.uint8) + np.random.default_rng(0).integers(0, 3, (200, 200), dtype=np.uint8)), "blank"),
        (Image.new("RGB", (256, 256), (200, 40, 40)), "blank"),  # a flat colour is blank first
        (Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)), "colour"),
        (Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (40, 4))), "aspect"),
    ],
    ids=["black", "near-constant", "flat-red", "colour-noise", "strip"],
)
def test_image_checks_reject_constructed_non_mri(image, check):
    """The problem names the check, the value it measured and the limit it crossed."""
    problem = image_problem(image)
    assert isinstance(problem, ImageProblem) and problem.check == check
    stats, limits = image_stats(image), ImageLimits()
    value, limit = {"blank": (stats["std"], limits.min_std), "colour": (stats["colour"], limits.max_colour),
                    "aspect": (stats["aspect"], limits.max_aspect)}[check]
    assert (problem.value, problem.limit) == (value, limit)
    assert value < limit if check == "blank" else value > limit


def test_image_checks_read_their_limits(scan_paths):
    scan = read_scan(scan_paths["glioma"])
    assert image_problem(scan) is None
    stats = image_stats(scan)
    strict = image_problem(scan, ImageLimits(min_std=stats["std"] + 0.01))
    assert strict == ImageProblem("blank", stats["std"], stats["std"] + 0.01)
    wide = scan.resize((scan.width * 3, scan.height))
    assert image_problem(wide).check == "aspect" and image_problem(wide, ImageLimits(max_aspect=4.0)) is None


def test_image_stats_of_a_grey_image():
    halves = np.zeros((100, 300), np.uint8)
    halves[:, 150:] = 255
    image = Image.fromarray(halves)  # 300 x 100: half black, half white
    stats = image_stats(image)
    assert stats["colour"] == 0.0 and stats["aspect"] == 3.0
    assert stats["std"] == pytest.approx(0.5, abs=0.01)
    assert image_stats(image.convert("RGB"))["colour"] == 0.0


def test_image_checks_accept_real_scans(data_root):
    files = [f for name in CLASS_NAMES for f in sorted((data_root / "Testing" / name).glob("*.jpg"))[:15]]
    problems = [(f.name, image_problem(read_scan(f))) for f in files]
    assert [p for p in problems if p[1] is not None] == []


# ---------------------------------------------------------------------- the feature gate
def test_gate_tells_outside_training_from_not_mri():
    gate = _gate(3.0)
    scores = gate.score(torch.tensor([[0.5, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    assert scores.tolist() == pytest.approx([0.5, 2.0, 4.0])
    assert gate.reject_score == pytest.approx(3.0)
    assert _gate(None).reject_score == pytest.approx(1.0)  # gates with one threshold for both
    assert _gate(6.0, threshold=2.0).reject_score == pytest.approx(3.0)  # a score is a distance over the threshold


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(precision=torch.eye(3, dtype=torch.float64)), r"precision must be \(2, 2\)"),
        (dict(threshold=0.0), "threshold must be a positive number, got 0.0"),
        (dict(threshold=float("nan")), "threshold must be a positive number, got nan"),
        (dict(reject_threshold=0.5), r"reject_threshold must be a number at least threshold \(1.0\), got 0.5"),
    ],
)
def test_a_gate_with_bad_values_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(_gate(), **change)


def test_gate_distance_is_the_distance_to_the_nearest_class_mean():
    """The expanded NumPy form equals the textbook Mahalanobis distance, for arrays and tensors."""
    rng = np.random.default_rng(2)
    means = rng.normal(0, 3, (4, 6))
    a = rng.normal(size=(6, 6))
    precision = a @ a.T + np.eye(6)
    gate = FeatureGate(torch.as_tensor(means), torch.as_tensor(precision), threshold=2.0)
    points = rng.normal(0, 3, (20, 6))
    diff = points[:, None, :] - means[None]
    direct = np.sqrt(np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1))
    np.testing.assert_allclose(gate.distance(points).numpy(), direct, rtol=1e-9)
    np.testing.assert_allclose(gate.distance(torch.as_tensor(points)).numpy(), direct, rtol=1e-9)
    np.testing.assert_allclose(gate.score(torch.as_tensor(points)).numpy(), direct / 2.0, rtol=1e-9)
    assert gate.distance(means).numpy() == pytest.approx(np.zeros(4), abs=1e-6)


def test_gate_file_round_trip_and_tamper(tmp_path):
    gate = FeatureGate(torch.zeros(4, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 2.0, (1, 3), 5.0)
    sha = save_gate(gate, tmp_path / OOD_NAME)
    assert sha == sha256_file(tmp_path / OOD_NAME)
    card = {"ood": {"file": OOD_NAME, "sha256": sha}}
    loaded = load_gate(tmp_path, card)
    assert (loaded.threshold, loaded.stages, loaded.reject_threshold) == (2.0, (1, 3), 5.0)
    assert loaded.reject_score == pytest.approx(2.5)
    assert torch.allclose(loaded.distance(torch.tensor([[3.0, 4.0, 0.0]])), torch.tensor([5.0], dtype=torch.float64))
    with open(tmp_path / OOD_NAME, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x00")
    with pytest.raises(WeightsError, match="ood.safetensors.*does not match"):
        load_gate(tmp_path, card)
    assert load_gate(tmp_path, {}) is None


def test_a_gate_file_that_is_not_safetensors_is_refused(tmp_path):
    (tmp_path / OOD_NAME).write_bytes(b"\x00" * 32)
    with pytest.raises(WeightsError, match="ood.safetensors.*not valid"):
        load_gate(tmp_path, {"ood": {"file": OOD_NAME, "sha256": sha256_file(tmp_path / OOD_NAME)}})


# ---------------------------------------------------------------------- the tapped forward pass
def test_tapped_pass_gives_the_network_logits_and_block_statistics():
    torch.manual_seed(0)
    net = build_network("efficientnet_lite0").eval()
    batch = torch.rand(2, 3, 64, 64) * 2 - 1
    blocks = []
    handles = [net.blocks[i].register_forward_hook(lambda _m, _i, out: blocks.append(out)) for i in (2, 4)]
    with torch.inference_mode():
        logits, taps = forward_with_taps(net, batch, (2, 4))
        for handle in handles:
            handle.remove()
        assert torch.allclose(logits, net(batch), atol=1e-5)
        assert forward_with_taps(net, batch, ())[1] is None
    assert taps.shape == (2, 2 * (40 + 112))
    assert torch.equal(taps, torch.cat([stage_statistics(b) for b in blocks], dim=1))
    with pytest.raises(ValueError, match=r"Stages \(2, 40\)"):
        forward_with_taps(net, batch, (2, 40))


def test_stage_statistics_are_channel_means_then_stds():
    x = torch.rand(3, 5, 7, 9)
    stats = stage_statistics(x)
    assert stats.shape == (3, 10)
    assert torch.allclose(stats[:, :5], x.mean(dim=(2, 3))) and torch.allclose(stats[:, 5:], x.flatten(2).std(dim=2))


# ---------------------------------------------------------------------- fitting the gate (train.ood)
def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(0).normal(0, 3, size=(4, 16))
    targets = rng.integers(0, 4, n)
    return means[targets] + rng.normal(size=(n, 16)), targets


def test_fitted_gate_accepts_the_training_distribution_and_rejects_far_points():
    train, train_targets = _clusters(2000, seed=1)
    val, _ = _clusters(500, seed=2)
    held, _ = _clusters(500, seed=3)
    gate = fit_gate(train, train_targets, val, num_classes=4, val_reject_rate=0.01)
    assert (gate.score(torch.as_tensor(val)).numpy() > 1).mean() == pytest.approx(0.01, abs=0.003)
    assert (gate.score(torch.as_tensor(held)).numpy() > 1).mean() < 0.05
    far = np.random.default_rng(4).normal(0, 1, size=(50, 16)) + 20
    assert (gate.score(torch.as_tensor(far)).numpy() > 1).all()


def test_fit_gate_refuses_bad_input():
    train, targets = _clusters(200, seed=1)
    with pytest.raises(ValueError, match=r"lack the classes \[3\]"):
        fit_gate(train[targets != 3], targets[targets != 3], train, num_classes=4)
    with pytest.raises(ValueError, match="val_reject_rate must be in \\(0, 1\\), got 1.5"):
        fit_gate(train, targets, train, num_classes=4, val_reject_rate=1.5)


def test_fit_reject_threshold_is_a_quantile_of_the_non_mri_distances():
    non_mri = np.stack([np.linspace(2.0, 11.0, 100), np.zeros(100)], axis=1)
    gate = fit_reject_threshold(_gate(None), non_mri, rate=0.95)
    assert (gate.distance(torch.as_tensor(non_mri)).numpy() > gate.reject_threshold).mean() == pytest.approx(0.95, abs=0.011)
    close = fit_reject_threshold(_gate(None), np.zeros((10, 2)), rate=0.95)
    assert close.reject_threshold == pytest.approx(1.0)  # never below the in-distribution threshold
    with pytest.raises(ValueError, match="rate must be in \\(0, 1\\), got 0"):
        fit_reject_threshold(_gate(None), non_mri, rate=0)


def test_rejection_rate_counts_each_verdict_once():
    gate = _gate(3.0)
    features = np.array([[0.5, 0], [2.0, 0], [2.0, 0], [4.0, 0], [0.5, 0]])
    rejected = np.array([False, False, True, False, True])
    outputs = SplitOutputs(features=features, logits=np.zeros((5, 4)), targets=np.zeros(5, int), image_rejected=rejected)
    rates = rejection_rate(gate, outputs)
    # features: the one beyond 3; image checks: two; either: three; outside: the one at 2 that passed the checks.
    assert rates == pytest.approx({"features": 1 / 5, "image_checks": 2 / 5, "either": 3 / 5, "outside_training": 1 / 5})


def test_non_mri_set_covers_every_kind(data_root):
    items = non_mri_images(data_root=data_root, n_fragment_scans=4)
    assert {kind for kind, _ in items} == set(KINDS)
    assert all(image.mode in ("L", "RGB") for _, image in items)


# ---------------------------------------------------------------------- the shipped gate
@needs_gate
def test_shipped_card_describes_the_shipped_gate():
    """The thresholds and blocks the card states are those of the gate file it names, and the
    served review rules read them."""
    card = json.loads((ASSETS_DIR / MODEL_CARD_NAME).read_text())
    gate = load_gate(ASSETS_DIR, card)
    info = card["ood"]
    assert info["file"] == OOD_NAME and list(gate.stages) == info["stages"] == card["onnx"]["stages"]
    assert gate.threshold == pytest.approx(info["threshold"]) and gate.reject_threshold == pytest.approx(info["reject_threshold"])
    assert gate.reject_score > 1


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
def test_tampered_shipped_gate_is_refused(tmp_path):
    for name in (WEIGHTS_NAME, MODEL_CARD_NAME, OOD_NAME):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / OOD_NAME).read_bytes())
    data[-8] ^= 0xFF
    (tmp_path / OOD_NAME).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="ood.safetensors"):
        load_model(tmp_path / WEIGHTS_NAME, device="cpu")
