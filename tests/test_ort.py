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
from core.backend import OnnxBackend, TorchBackend
from train.export import export_beside, export_onnx, fold_grey_stem, grey_input, scoring_backend


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
    assert served.backend.name == "onnxruntime" and plain.backend.name == "pytorch"
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
    logits, taps = runtime.run(batch.numpy())
    with torch.inference_mode():
        expected_logits, expected_taps = forward_with_taps(net, batch, (2, 4))
    assert np.abs(logits - expected_logits.numpy()).max() < 1e-4
    assert np.abs(taps - expected_taps.numpy()).max() < 1e-4


def test_grey_input_export(exported):
    """Equal normalisation for every channel: the graph takes the grey channel alone, with the
    stem's weights summed, and answers as the 3-channel network given that channel three times."""
    card = json.loads(exported.with_name("model_card.json").read_text())
    assert grey_input(card) and card["onnx"]["input_channels"] == 1
    runtime = load_runtime(exported.parent, card, threads=2)
    assert runtime.channels == 1
    state, _ = load_weights(exported)
    net = build_network(card["arch"]).eval()
    net.load_state_dict(state)
    grey = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        expected, expected_taps = forward_with_taps(net, grey.expand(-1, 3, -1, -1), runtime.stages)
    logits, taps = runtime.run(grey.numpy())
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    if runtime.stages:
        assert np.abs(taps - expected_taps.numpy()).max() < 1e-4
    # The back-end takes the usual 3 equal channels, and refuses channels that differ.
    backend = OnnxBackend(runtime, 64, card["mean"], card["std"])
    same, _ = backend.run(grey.expand(-1, 3, -1, -1))
    assert np.abs(same - logits).max() < 1e-6
    with pytest.raises(ValueError, match="channels differ"):
        backend.run(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        runtime.run(np.zeros((1, 3, 64, 64), dtype=np.float32))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_run_with_mirror_equals_the_doubled_batch(exported, threads):
    card = json.loads(exported.with_name("model_card.json").read_text())
    runtime = load_runtime(exported.parent, card, threads=threads)
    for n in (1, 2, 5):
        array = np.random.default_rng(n).uniform(-1, 1, (n, runtime.channels, 64, 64)).astype(np.float32)
        logits, _ = runtime.run(array, mirror=True)
        expected, _ = runtime.run(np.concatenate([array, array[..., ::-1]]))
        assert logits.shape == (2 * n, len(CLASS_NAMES))
        assert np.abs(logits - expected).max() < 1e-5


def test_a_lone_scan_runs_on_every_thread_with_the_same_answer(exported):
    """With threads > 1 a single row, which concurrent runs cannot share, runs in the session
    with that many intra-op threads; its outputs equal the single-threaded session's."""
    card = json.loads(exported.with_name("model_card.json").read_text())
    single = load_runtime(exported.parent, card, threads=1)
    runtime = load_runtime(exported.parent, card, threads=2)
    assert single.wide is None and runtime.wide is not None
    used = []
    wide = runtime.wide

    class Spy:
        def run(self, *args):
            used.append(len(args[1]["image"]))
            return wide.run(*args)

    runtime.wide = Spy()
    array = np.random.default_rng(7).uniform(-1, 1, (1, runtime.channels, 64, 64)).astype(np.float32)
    logits, _ = runtime.run(array)
    assert used == [1]
    assert np.abs(logits - single.run(array)[0]).max() < 1e-5
    runtime.run(np.concatenate([array, array]))  # two rows: one per thread, not the wide session
    runtime.run(array, mirror=True)
    assert used == [1]


def test_per_channel_normalisation_keeps_three_channels(tmp_path):
    """Channels normalised differently are not equal: no folding, a 3-channel graph."""
    torch.manual_seed(2)
    net = build_network("efficientnet_lite0").eval()
    card = {"image_size": 64, "weights_sha256": "x" * 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert not grey_input(card)
    info = export_onnx(net, card, tmp_path)
    assert info["input_channels"] == 3
    assert load_runtime(tmp_path, {**card, "onnx": info}, threads=1).channels == 3


def test_fold_grey_stem_is_exact():
    torch.manual_seed(4)
    net = build_network("efficientnet_lite0").eval()
    folded = fold_grey_stem(net)
    assert folded.conv_stem.weight.shape[1] == 1 and net.conv_stem.weight.shape[1] == 3
    grey = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(folded(grey), net(grey.expand(-1, 3, -1, -1)), atol=1e-5)
    assert fold_grey_stem(torch.nn.Linear(3, 3)) is None


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


def test_shipped_model_runtime_matches_pytorch(shipped_float32_model, data_root, tmp_path):
    """The shipped float32 ONNX file gives the shipped weights' probabilities within 1e-4 (issue 9)."""
    shipped_model = shipped_float32_model
    if shipped_model.backend.name != "onnxruntime" or shipped_model.backend.precision != "float32":
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
        assert model.backend.runtime.threads == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            load_model(exported, device="cpu", threads=0)
    finally:
        torch.set_num_threads(torch_threads)


def test_scoring_backend_scores_as_pytorch():
    """train.finalize scores scans through ONNX Runtime on the CPU: same logits and gate taps."""
    torch.manual_seed(6)
    net = build_network("efficientnet_lite0").eval()
    card = {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    scorer, exported = scoring_backend(net, card, torch.device("cpu"), (2, 4))
    assert isinstance(scorer, OnnxBackend) and exported is not None and exported[1]["stages"] == [2, 4]
    batch = (torch.rand(4, 1, 64, 64) * 2 - 1).expand(-1, 3, -1, -1)
    with torch.inference_mode():
        expected, expected_taps = forward_with_taps(net, batch, (2, 4))
    logits, taps = scorer.run(batch)
    assert np.abs(logits - expected.numpy()).max() < 1e-4 and np.abs(taps - expected_taps.numpy()).max() < 1e-4
    mirrored, _ = scorer.run(batch, mirror=True)
    assert np.abs(mirrored[:4] - logits).max() < 1e-6 and mirrored.shape[0] == 8
    plain, none = scoring_backend(net, card, torch.device("meta"), (2, 4))  # not the CPU: PyTorch
    assert isinstance(plain, TorchBackend) and plain.net is net and none is None
