"""ONNX Runtime serving: export, integrity checks, and the same answers as PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_model_dir
from core import load_model, read_scan
from core.constants import CLASS_NAMES
from core.model import build_network
from core.ood import forward_with_taps
from core.ort import ONNX_NAME, load_runtime
from core.weights import WeightsError, load_weights, write_model_card
from train.export import export_beside, export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny random model with its ONNX file recorded in the card."""
    weights = make_model_dir(tmp_path_factory.mktemp("onnx_model"), seed=3)
    card = export_beside(weights)
    assert card["onnx"]["file"] == ONNX_NAME
    return weights


def _copy(weights: Path, folder: Path) -> Path:
    shutil.copytree(weights.parent, folder)
    return folder / weights.name


def _without_onnx(weights: Path, folder: Path) -> Path:
    copy = _copy(weights, folder)
    card = json.loads(copy.with_name("model_card.json").read_text())
    card.pop("onnx")
    write_model_card(copy, card)
    return copy


def _scans() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (96 + 8 * i, 80, 3), dtype=np.uint8)) for i in range(5)]


def test_export_records_file_and_hash(exported):
    card = json.loads(exported.with_name("model_card.json").read_text())
    info = card["onnx"]
    assert (exported.parent / info["file"]).is_file()
    assert info["weights_sha256"] == card["weights_sha256"]
    assert info["max_abs_diff"] <= 1e-4
    assert info["stages"] == []  # the tiny model has no out-of-distribution gate


def test_runtime_matches_pytorch(exported, tmp_path):
    served = load_model(exported, device="cpu")
    plain = load_model(_without_onnx(exported, tmp_path / "plain"), device="cpu")
    assert served.runtime is not None and plain.runtime is None
    scans = _scans()
    for a, b in zip(served.predict_batch(scans), plain.predict_batch(scans)):
        assert a.label == b.label and a.flags == b.flags
        for name in CLASS_NAMES:
            assert abs(a.probabilities[name] - b.probabilities[name]) < 1e-4
    assert served.predict(scans[0]) == served.predict_batch(scans[:1])[0]


def test_export_with_gate_taps(tmp_path):
    torch.manual_seed(1)
    net = build_network("efficientnet_lite0").eval()
    card = {"image_size": 64, "weights_sha256": "x" * 64, "ood": {"stages": [2, 4]}}
    info = export_onnx(net, card, tmp_path)
    runtime = load_runtime(tmp_path, {**card, "onnx": info}, threads=2)
    batch = torch.rand(3, 3, 64, 64) * 2 - 1
    logits, taps = runtime(batch)
    with torch.inference_mode():
        expected_logits, expected_taps = forward_with_taps(net, batch, (2, 4))
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    assert torch.allclose(taps, expected_taps, atol=1e-4)


def test_tampered_onnx_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path / "tampered")
    onnx = copy.with_name(ONNX_NAME)
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="model.onnx"):
        load_model(copy, device="cpu")


def test_onnx_of_other_weights_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path / "other")
    _, card = load_weights(copy)
    card["onnx"]["weights_sha256"] = "0" * 64
    write_model_card(copy, card)
    with pytest.raises(WeightsError, match="other weights"):
        load_model(copy, device="cpu")


def test_missing_onnx_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path / "missing")
    copy.with_name(ONNX_NAME).unlink()
    with pytest.raises(WeightsError, match="not found"):
        load_model(copy, device="cpu")


def test_shipped_model_runtime_matches_pytorch(shipped_model, data_root, tmp_path):
    """The shipped ONNX file gives the shipped weights' probabilities within 1e-4 (issue 9)."""
    if shipped_model.runtime is None:
        pytest.skip("the shipped model card names no ONNX file")
    from core.constants import default_weights

    plain = load_model(_without_onnx(default_weights(), tmp_path / "plain"), device="cpu")
    scans = [read_scan(p) for name in CLASS_NAMES for p in sorted((data_root / "Testing" / name).glob("*.jpg"))[:6]]
    for a, b in zip(shipped_model.predict_batch(scans), plain.predict_batch(scans)):
        assert a.label == b.label and a.flags == b.flags and a.is_brain_mri == b.is_brain_mri
        assert max(abs(a.probabilities[n] - b.probabilities[n]) for n in CLASS_NAMES) < 1e-4
        assert abs(a.ood_score - b.ood_score) < 1e-3


def test_threads_option(exported):
    torch_threads = torch.get_num_threads()
    try:
        model = load_model(exported, device="cpu", threads=1)
        assert model.runtime.threads == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            load_model(exported, device="cpu", threads=0)
    finally:
        torch.set_num_threads(torch_threads)
