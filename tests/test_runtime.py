"""core.runtime: ONNX Runtime and PyTorch give the same outputs, and open_runtime serves a graph
only when it is the card's, made from its weights, tapping its gate's blocks and answering as
the network does.

The fast tests run a linear graph built here with ``onnx.helper`` (channel means times a
matrix: milliseconds to build) against the same computation in PyTorch; the slow ones export a
real network with ``train.export``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_IMAGE_SIZE, make_model_dir
from core import CLASS_NAMES, load_model, read_scan
from core.model import build_network
from core.ood import forward_with_taps
from core.runtime import ONNX_NAME, OnnxRuntime, TorchRuntime, open_runtime, open_session, with_mirror
from core.weights import WeightsError, load_weights, read_model_card, sha256_file, write_model_card
from train.export import export_beside, export_onnx, fold_grey_stem, grey_input, scoring_runtime

CPU = torch.device("cpu")
#: Largest logit or tap difference accepted between ONNX Runtime and PyTorch.
ATOL = 1e-4
#: Input size of the linear graph (it averages every pixel, so any size works).
SIZE = 16
WEIGHTS_SHA = "a" * 64


# ---------------------------------------------------------------------- a linear graph and its network
class Linear(torch.nn.Module):
    """logits = (mean of each channel) @ weight + bias: what :func:`linear_graph` computes."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight + self.bias


def linear_net(seed: int) -> Linear:
    rng = np.random.default_rng(seed)
    return Linear(rng.normal(size=(3, len(CLASS_NAMES))), rng.normal(size=len(CLASS_NAMES)))


def linear_graph(path: Path, net: Linear, grey: bool = False, taps: bool = False) -> Path:
    """``net`` as an ONNX graph at ``path``; ``grey``: it takes one channel (the weights summed
    over the three, as ``train.export.fold_grey_stem`` folds the stem); ``taps``: the channel
    means are a second output."""
    from onnx import TensorProto, helper, numpy_helper, save

    weight = net.weight.detach().numpy()
    if grey:
        weight = weight.sum(axis=0, keepdims=True)
    channels = weight.shape[0]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weight.shape[1]])]
    if taps:
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", channels]))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        outputs,
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(net.bias.detach().numpy(), "bias")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def graph_card(path: Path, stages: list[int] | None = None) -> dict:
    """A model card naming the graph at ``path``, made from the card's weights."""
    info = {"file": path.name, "sha256": sha256_file(path), "weights_sha256": WEIGHTS_SHA, "stages": stages or []}
    return {"image_size": SIZE, "weights_sha256": WEIGHTS_SHA, "onnx": info}


def batch_of(n: int, channels: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, channels, size, size)).astype(np.float32)


@pytest.fixture()
def served(tmp_path) -> tuple[Path, dict, Linear]:
    """A folder with a grey linear graph, its card and the network it was made from."""
    net = linear_net(0)
    path = linear_graph(tmp_path / ONNX_NAME, net, grey=True)
    return tmp_path, graph_card(path), net


# ---------------------------------------------------------------------- the same outputs
def test_onnx_runtime_equals_torch_runtime(tmp_path):
    net = linear_net(1)
    onnx = OnnxRuntime(open_session(linear_graph(tmp_path / ONNX_NAME, net, taps=True)))
    plain = TorchRuntime(net, CPU)
    assert (onnx.name, onnx.channels, plain.name, plain.channels) == ("onnxruntime", 3, "pytorch", 3)
    for n in (1, 5):
        batch = batch_of(n, 3, seed=n)
        (logits, taps), (expected, no_taps) = onnx.run(batch), plain.run(batch)
        assert logits.dtype == expected.dtype == np.float64 and logits.shape == expected.shape == (n, len(CLASS_NAMES))
        assert np.abs(logits - expected).max() < 1e-5
        assert no_taps is None  # no gate stages: no taps
        assert taps.dtype == np.float64 and np.abs(taps - batch.mean(axis=(2, 3))).max() < 1e-6
    assert np.abs(onnx.run(batch_of(1, 3, 7))[0] - onnx.run(batch_of(1, 3, 8))[0]).max() > 1e-3


def test_open_runtime_serves_the_cards_graph(served):
    folder, card, net = served
    runtime = open_runtime(folder, card, net, CPU, (), threads=2)
    assert isinstance(runtime, OnnxRuntime) and runtime.channels == 1
    grey = batch_of(3, 1, seed=2)
    logits, taps = runtime.run(grey)
    assert taps is None and np.abs(logits - TorchRuntime(net, CPU).run(grey)[0]).max() < 1e-5


def test_grey_graph_takes_one_channel_or_three_equal_ones(served):
    """The training loaders repeat a grey scan three times: a 1-channel graph takes that, and
    refuses three channels that differ or any other shape, naming the shape it takes."""
    folder, card, net = served
    runtime = open_runtime(folder, card, net, CPU, (), threads=1)
    grey = batch_of(2, 1, seed=3)
    logits, _ = runtime.run(grey)
    assert np.array_equal(runtime.run(np.repeat(grey, 3, axis=1))[0], logits)
    unequal = np.repeat(grey, 3, axis=1)
    unequal[:, 1] += 0.5
    with pytest.raises(ValueError, match="channels differ"):
        runtime.run(unequal)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*\(2, 2, 16, 16\)"):
        runtime.run(np.zeros((2, 2, SIZE, SIZE), dtype=np.float32))


def test_grey_graph_refuses_a_third_channel_that_differs(served):
    folder, card, net = served
    runtime = open_runtime(folder, card, net, CPU, (), threads=1)
    unequal = np.repeat(batch_of(2, 1, seed=4), 3, axis=1)
    unequal[:, 2] += 0.5
    with pytest.raises(ValueError, match="channels differ"):
        runtime.run(unequal)


def test_three_channel_graph_refuses_one_channel(tmp_path):
    runtime = OnnxRuntime(open_session(linear_graph(tmp_path / ONNX_NAME, linear_net(5))))
    assert runtime.channels == 3
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        runtime.run(batch_of(1, 1, seed=5))


def test_torch_runtime_gives_a_grey_channel_three_times():
    runtime = TorchRuntime(linear_net(6), CPU)
    grey = batch_of(2, 1, seed=6)
    logits, _ = runtime.run(grey)
    assert np.array_equal(logits, runtime.run(np.repeat(grey, 3, axis=1))[0])
    assert not np.array_equal(logits, runtime.run(np.repeat(grey, 3, axis=1) + 0.1)[0])


# ---------------------------------------------------------------------- the mirror images
@pytest.mark.parametrize("as_tensor", [False, True])
def test_with_mirror_appends_the_mirror_images(as_tensor):
    batch = batch_of(3, 1, seed=9)
    doubled = with_mirror(torch.from_numpy(batch) if as_tensor else batch)
    assert doubled.dtype == np.float32 and doubled.shape == (6, 1, SIZE, SIZE)
    assert np.array_equal(doubled[:3], batch)
    for i in range(3):
        assert np.array_equal(doubled[3 + i, 0], np.fliplr(batch[i, 0]))
    assert not np.array_equal(doubled[3:], batch)  # random images are not symmetric


# ---------------------------------------------------------------------- what open_runtime refuses
def test_tampered_graph_is_refused(served):
    folder, card, net = served
    path = folder / ONNX_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="model.onnx.*does not match its model card"):
        open_runtime(folder, card, net, CPU, (), threads=1)


def test_graph_of_other_weights_is_refused(served):
    folder, card, net = served
    card["onnx"]["weights_sha256"] = "0" * 64
    with pytest.raises(WeightsError, match="model.onnx.*other weights"):
        open_runtime(folder, card, net, CPU, (), threads=1)


def test_graph_tapping_other_stages_is_refused(served):
    """The gate needs blocks 2 and 4; the graph taps none."""
    folder, card, net = served
    with pytest.raises(WeightsError, match=r"taps blocks \(\) but .* needs \(2, 4\)"):
        open_runtime(folder, card, net, CPU, (2, 4), threads=1)


def test_missing_graph_is_refused(served):
    folder, card, net = served
    (folder / ONNX_NAME).unlink()
    with pytest.raises(WeightsError, match="model.onnx.*not found"):
        open_runtime(folder, card, net, CPU, (), threads=1)


def test_file_that_is_no_graph_is_refused(tmp_path):
    path = tmp_path / ONNX_NAME
    path.write_bytes(b"not an ONNX graph")
    with pytest.raises(WeightsError, match="model.onnx.*could not be loaded"):
        open_runtime(tmp_path, graph_card(path), linear_net(0), CPU, (), threads=1)


def test_graph_unlike_the_network_falls_back_to_pytorch(served, caplog):
    """A graph whose outputs differ from the network's on the test batch is not served."""
    folder, card, _ = served
    other = linear_net(1)
    with caplog.at_level(logging.WARNING, logger="core.runtime"):
        runtime = open_runtime(folder, card, other, CPU, (), threads=1)
    assert isinstance(runtime, TorchRuntime) and runtime.net is other
    assert "differ" in caplog.text


def test_pytorch_without_a_graph_or_off_the_cpu(served):
    folder, card, net = served
    without = {key: value for key, value in card.items() if key != "onnx"}
    plain = open_runtime(folder, without, net, CPU, (), threads=1)
    assert isinstance(plain, TorchRuntime) and plain.net is net
    # Off the CPU the graph is not even opened: a damaged one goes unnoticed.
    (folder / ONNX_NAME).write_bytes(b"damaged")
    elsewhere = open_runtime(folder, card, net, torch.device("meta"), (2, 4), threads=1)
    assert isinstance(elsewhere, TorchRuntime) and elsewhere.device.type == "meta" and elsewhere.stages == (2, 4)


def test_scoring_runtime_off_the_cpu_is_the_network():
    net = linear_net(2)
    runtime, exported = scoring_runtime(net, {"image_size": SIZE}, torch.device("meta"), (2, 4))
    assert isinstance(runtime, TorchRuntime) and runtime.net is net and runtime.stages == (2, 4) and exported is None


# ---------------------------------------------------------------------- real networks, exported
def _copy(weights: Path, folder: Path) -> Path:
    shutil.copytree(weights.parent, folder)
    return folder / weights.name


def _without_graph(weights: Path, folder: Path) -> Path:
    copy = _copy(weights, folder)
    card = read_model_card(copy)
    card.pop("onnx")
    write_model_card(copy, card)
    return copy


def _expected(net: torch.nn.Module, batch: np.ndarray, stages: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray | None]:
    """The plain PyTorch network's logits and taps, a grey channel given three times."""
    with torch.inference_mode():
        logits, taps = forward_with_taps(net, torch.from_numpy(batch).expand(-1, 3, -1, -1), stages)
    return logits.numpy(), None if taps is None else taps.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny random model (grey normalisation, no gate) with its ONNX graph recorded in the card."""
    weights = make_model_dir(tmp_path_factory.mktemp("onnx_model"), seed=3)
    card = export_beside(weights)
    assert card["onnx"]["file"] == ONNX_NAME
    return weights


@pytest.mark.slow
def test_exported_network_is_served_with_the_weights_answers(exported, tmp_path):
    """train.export records the graph in the card; load_model serves it, with the answers of the
    weights in PyTorch."""
    card = read_model_card(exported)
    info = card["onnx"]
    assert info["weights_sha256"] == card["weights_sha256"] and info["sha256"] == sha256_file(exported.with_name(ONNX_NAME))
    assert info["max_abs_diff"] <= ATOL and info["stages"] == [] and info["input_channels"] == 1 and grey_input(card)
    model = load_model(exported, device="cpu")
    plain = load_model(_without_graph(exported, tmp_path / "plain"), device="cpu")
    assert isinstance(model.runtime, OnnxRuntime) and model.runtime.channels == 1 and isinstance(plain.runtime, TorchRuntime)
    state, _ = load_weights(exported)
    net = build_network(card["arch"]).eval()
    net.load_state_dict(state)
    grey = batch_of(3, 1, seed=5, size=TINY_IMAGE_SIZE)
    assert np.abs(model.runtime.run(grey)[0] - _expected(net, grey)[0]).max() < ATOL
    rng = np.random.default_rng(0)
    scans = [Image.fromarray(rng.integers(0, 255, (96 + 8 * i, 80), dtype=np.uint8)) for i in range(5)]
    for a, b in zip(model.predict_batch(scans), plain.predict_batch(scans)):
        assert a.label == b.label and a.flag_kinds == b.flag_kinds
        assert max(abs(a.probabilities[n] - b.probabilities[n]) for n in CLASS_NAMES) < 1e-4


@pytest.mark.slow
def test_scoring_runtime_scores_as_pytorch_and_taps_the_gate(tmp_path):
    """train.finalize scores scans through ONNX Runtime on the CPU: the logits and the gate's
    taps of the network; the graph it returns is served by open_runtime for those stages."""
    torch.manual_seed(6)
    net = build_network("efficientnet_lite0").eval()
    card = {"image_size": TINY_IMAGE_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3}
    scorer, (data, info) = scoring_runtime(net, card, CPU, (2, 4))
    assert isinstance(scorer, OnnxRuntime) and scorer.channels == 1
    assert info["stages"] == [2, 4] and hashlib.sha256(data).hexdigest() == info["sha256"]
    batch = np.repeat(batch_of(4, 1, seed=12, size=TINY_IMAGE_SIZE), 3, axis=1)  # three equal channels
    logits, taps = scorer.run(batch)
    expected, expected_taps = _expected(net, batch, (2, 4))
    assert taps.shape == expected_taps.shape == (4, 2 * (40 + 112))
    assert np.abs(logits - expected).max() < ATOL and np.abs(taps - expected_taps).max() < ATOL
    (tmp_path / ONNX_NAME).write_bytes(data)
    served = open_runtime(tmp_path, {**card, "weights_sha256": info["weights_sha256"], "onnx": info}, net, CPU, (2, 4), 1)
    assert isinstance(served, OnnxRuntime)


@pytest.mark.slow
def test_per_channel_normalisation_keeps_three_channels(tmp_path):
    """Channels normalised differently are not equal: no folding, a 3-channel graph."""
    torch.manual_seed(2)
    net = build_network("efficientnet_lite0").eval()
    card = {"image_size": TINY_IMAGE_SIZE, "weights_sha256": "x" * 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert not grey_input(card)
    info = export_onnx(net, card, tmp_path)
    assert info["input_channels"] == 3
    runtime = open_runtime(tmp_path, {**card, "onnx": info}, net, CPU, (), threads=1)
    assert isinstance(runtime, OnnxRuntime) and runtime.channels == 3


def test_fold_grey_stem_is_exact():
    torch.manual_seed(4)
    net = build_network("efficientnet_lite0").eval()
    folded = fold_grey_stem(net)
    assert folded.conv_stem.weight.shape[1] == 1 and net.conv_stem.weight.shape[1] == 3
    grey = torch.rand(2, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.inference_mode():
        assert torch.allclose(folded(grey), net(grey.expand(-1, 3, -1, -1)), atol=1e-5)
    assert fold_grey_stem(torch.nn.Linear(3, 3)) is None


@pytest.mark.slow
def test_shipped_graph_gives_the_shipped_weights_answers(shipped_model, data_root, tmp_path):
    """The shipped float32 ONNX graph gives the shipped weights' probabilities within 1e-4."""
    if not isinstance(shipped_model.runtime, OnnxRuntime):
        pytest.skip("the shipped model card names no ONNX file")
    from core.constants import default_weights

    plain = load_model(_without_graph(default_weights(), tmp_path / "plain"), device="cpu")
    assert isinstance(plain.runtime, TorchRuntime)
    scans = [read_scan(p) for name in CLASS_NAMES for p in sorted((data_root / "Testing" / name).glob("*.jpg"))[:6]]
    for a, b in zip(shipped_model.predict_batch(scans), plain.predict_batch(scans)):
        assert a.label == b.label and a.flag_kinds == b.flag_kinds and a.is_brain_mri == b.is_brain_mri
        assert max(abs(a.probabilities[n] - b.probabilities[n]) for n in CLASS_NAMES) < 1e-4
        assert abs(a.ood_score - b.ood_score) < 1e-3
