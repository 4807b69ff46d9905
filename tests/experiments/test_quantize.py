"""benchmarks.experiments.quantize: the fidelity check's rules and comparison, the CPU flags it
records, and (slow) an int8 graph of a tiny exported model served through ``int8_classifier``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.experiments import quantize
from benchmarks.experiments.quantize import (
    CALIBRATION_METHODS,
    MAX_ACCURACY_DROP_POINTS,
    MIN_SAME_TESTING,
    compare,
    cpu_flags,
    passes,
    quantize_graph,
    sensitive_nodes,
)
from conftest import make_model_dir
from core.constants import CLASS_NAMES, OTHER_LESION_CLASS
from core.model import Prediction
from core.rules import LOW_CONFIDENCE, OUTSIDE_TRAINING, Flag


def _entry(change: float = 0.0, same: float = 1.0) -> dict[str, float]:
    return {"accuracy_change_points": change, "same_label_and_flags": same, "same_label": same, "max_prob_diff": 0.01}


def _prediction(label: str, confidence: float, *flags: Flag) -> Prediction:
    rest = (1.0 - confidence) / (len(CLASS_NAMES) - 1)
    probabilities = {name: confidence if name == label else rest for name in CLASS_NAMES}
    return Prediction(label, confidence, probabilities, flags=flags)


# ------------------------------------------------------------------- the check's rules


def test_passes_when_every_set_within_limits():
    report = {"testing": _entry(0.0, MIN_SAME_TESTING), "external/a": _entry(-MAX_ACCURACY_DROP_POINTS), "external/b": _entry(0.1)}
    checks = passes(report)
    assert checks["passed"] and all(checks.values())


@pytest.mark.parametrize("change", [MAX_ACCURACY_DROP_POINTS + 0.01, -(MAX_ACCURACY_DROP_POINTS + 0.01), 1.5])
def test_fails_when_one_source_moves_too_far(change):
    checks = passes({"testing": _entry(), "external/a": _entry(change)})
    assert not checks["passed"]
    assert [name for name, ok in checks.items() if not ok] == [f"accuracy within {MAX_ACCURACY_DROP_POINTS} points on external/a", "passed"]


def test_fails_when_testing_labels_or_flags_differ():
    assert not passes({"testing": _entry(0.0, MIN_SAME_TESTING - 0.001), "external/a": _entry()})["passed"]
    assert not passes({"external/a": _entry()})["passed"], "no Testing figures: the check cannot pass"
    assert not passes({"testing": _entry()})["passed"], "no external source: the check cannot pass"


def test_compare_counts_labels_and_flag_kinds_not_the_flags_numbers():
    reference = [
        _prediction("glioma", 0.9),
        _prediction("notumor", 0.6, Flag(LOW_CONFIDENCE, 0.6, 0.7)),
        _prediction("pituitary", 0.8, Flag(OUTSIDE_TRAINING, 1.30, 1.0)),
        _prediction("meningioma", 0.95),
    ]
    candidate = [
        _prediction("glioma", 0.85),  # same label, no flag
        _prediction("notumor", 0.65, Flag(LOW_CONFIDENCE, 0.65, 0.7)),  # same flag kind, other figures
        _prediction("pituitary", 0.8),  # the flag is gone
        _prediction("glioma", 0.5, Flag(LOW_CONFIDENCE, 0.5, 0.7)),  # another label
    ]
    labels = ["glioma", "notumor", "meningioma", OTHER_LESION_CLASS]
    entry = compare(reference, candidate, labels)
    assert entry["n_images"] == 4
    assert entry["same_label"] == 0.75 and entry["same_flags"] == 0.5 and entry["same_label_and_flags"] == 0.5
    assert entry["max_prob_diff"] == pytest.approx(0.95 - (1 - 0.5) / 3)
    # The lesion of no class is left out of the accuracies: 2 of 3 right in both.
    assert entry["accuracy_float32"] == entry["accuracy_int8"] == pytest.approx(2 / 3)
    assert entry["accuracy_change_points"] == 0.0
    unlabelled = compare(reference[:1], candidate[:1], [OTHER_LESION_CLASS])
    assert "accuracy_float32" not in unlabelled and unlabelled["same_label_and_flags"] == 1.0


class _CpuInfo:
    def __init__(self, text: str | None):
        self.text = text

    def __call__(self, path: str) -> _CpuInfo:
        assert path == "/proc/cpuinfo"
        return self

    def read_text(self) -> str:
        if self.text is None:
            raise OSError("no /proc here")
        return self.text


def test_cpu_flags_keep_the_int8_dot_product_features(monkeypatch):
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_int8 avx_vnni\nflags\t: ignored\n"
    monkeypatch.setattr(quantize, "Path", _CpuInfo(text))
    assert cpu_flags() == ["amx_int8", "avx2", "avx512_vnni", "avx512f", "avx_vnni"]
    monkeypatch.setattr(quantize, "Path", _CpuInfo("processor\t: 0\n"))
    assert cpu_flags() == []
    monkeypatch.setattr(quantize, "Path", _CpuInfo(None))
    assert cpu_flags() == []


def test_quantize_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="calibration method 'median'.*minmax"):
        quantize_graph(tmp_path / "model.onnx", tmp_path / "x.onnx", [np.zeros((1, 1, 8, 8), np.float32)], method="median")
    with pytest.raises(ValueError, match="No calibration"):
        quantize_graph(tmp_path / "model.onnx", tmp_path / "x.onnx", [])
    assert "minmax" in CALIBRATION_METHODS


def test_sensitive_nodes_are_the_first_and_last_convolutions_and_the_classifier(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="stem"),
        helper.make_node("Relu", ["a"], ["b"], name="act"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="block"),
        helper.make_node("Conv", ["c", "w3"], ["d"], name="head"),
        helper.make_node("Flatten", ["d"], ["e"], name="flat"),
        helper.make_node("Gemm", ["e", "fc"], ["y"], name="classifier"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert sensitive_nodes(path) == ["stem", "head", "classifier"]


# ------------------------------------------------------------------- end to end


def _assert_int8_except(graph: Path, kept: list[str]) -> None:
    """``graph`` holds int8 weights, and the nodes named in ``kept`` read no dequantized weight."""
    import onnx

    model = onnx.load(str(graph))
    nodes = model.graph.node
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in nodes}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer), "convolution weights stored as int8"
    dequantized = {out for n in nodes if n.op_type == "DequantizeLinear" for out in n.output}
    by_name = {n.name: n for n in nodes}
    assert kept and set(kept) <= set(by_name)
    for name in kept:
        assert not set(by_name[name].input[1:]) & dequantized, f"{name} should stay float32"
    assert any(n.op_type == "Conv" and n.name not in kept and n.input[1] in dequantized for n in nodes)


@pytest.mark.slow
def test_main_quantizes_a_tiny_model_and_serves_it_beside_float32(tmp_path, data_root, capsys):
    """The study on a tiny exported model: calibrated on validation scans only, the int8 graph
    served through ``int8_classifier`` (same card, gate and rules, only the runtime swapped),
    compared with float32 on Testing and an external source, and timed beside it."""
    from core import load_model
    from core.runtime import ONNX_NAME
    from core.weights import read_model_card, write_model_card
    from train.config import TrainConfig
    from train.export import export_beside

    weights = make_model_dir(tmp_path / "model", seed=5)
    card = read_model_card(weights)
    config = TrainConfig(data_dir=data_root, max_per_class=12, image_size=card["image_size"], split="stratified", workers=0)
    card["training"] = {"config": config.to_dict()}
    write_model_card(weights, card)
    export_beside(weights)
    external = tmp_path / "external"
    (external / "clinic" / "glioma").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8)).save(external / "clinic" / "glioma" / f"{i}.png")

    reference = load_model(weights, device="cpu", threads=1)
    assert reference.runtime.name == "onnxruntime"
    batches = quantize.calibration_batches(reference, config, 6)
    assert 0 < sum(len(b) for b in batches) <= 6 and batches[0].shape[1:] == (reference.runtime.channels, 64, 64)
    graph = quantize_graph(weights.parent / ONNX_NAME, tmp_path / "model.int8.onnx", batches,
                           exclude=sensitive_nodes(weights.parent / ONNX_NAME))
    _assert_int8_except(graph, sensitive_nodes(weights.parent / ONNX_NAME))
    candidate = quantize.int8_classifier(reference, graph)
    assert candidate.runtime.name == "onnxruntime" and candidate.runtime is not reference.runtime
    assert candidate.card is reference.card and candidate.gate is reference.gate and candidate.rules == reference.rules
    images = [Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8)) for _ in range(3)]
    for p in candidate.predict_batch(images):
        assert p.label in CLASS_NAMES and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)

    out = tmp_path / "quantize.json"
    args = quantize.get_args_parser().parse_args(["--weights", str(weights), "--external", str(external), "--calibration", "4",
                                                  "--threads", "1", "--output", str(out)])
    result = quantize.main(args)
    assert json.loads(out.read_text()) == result
    assert result["machine"]["cpu_flags"] == cpu_flags()
    assert {"testing", "external/clinic"} <= set(result["fidelity"])
    testing = result["fidelity"]["testing"]
    assert testing["n_images"] == 4 * 12 and 0 <= testing["same_label_and_flags"] <= testing["same_label"] <= 1
    assert "accuracy_change_points" in testing and "accuracy_change_points" in result["fidelity"]["external/clinic"]
    assert result["checks"]["every external source checked"]
    assert result["checks"]["passed"] == all(v for k, v in result["checks"].items() if k != "passed")
    for row in result["speed"].values():
        assert row["predict_p50_ms"] > 0 and row["predict_batch_scans_per_s"] > 0
    assert set(result["speed"]) == {"float32 (served)", "int8"}
    assert capsys.readouterr().out.strip().startswith("{")
