"""train.quantize and int8 serving: the fidelity check's rules, the quantized graph, which graph
``core`` serves, and the shipped int8 graph against the PyTorch float32 reference on a sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_model_dir
from core import load_model, read_scan
from core.constants import CLASS_NAMES
from core.model import Classifier, Prediction
from core.ort import INT8_NAME, ONNX_NAME, Recheck, load_runtime, open_session
from core.weights import WeightsError, read_model_card, sha256_file, write_model_card
from train.export import export_beside
from train.quantize import (
    CALIBRATION_METHODS,
    MAX_ACCURACY_DROP_POINTS,
    MIN_SAME_TESTING,
    fit_recheck,
    flag_kinds,
    passes,
    quantize_graph,
    serve_graph,
)

#: Testing scans per class for the check against PyTorch.
SAMPLE_PER_CLASS = 12


def _entry(change: float = 0.0, same: float = 1.0) -> dict[str, float]:
    return {"accuracy_change_points": change, "same_label_and_flags": same, "same_label": same, "max_prob_diff": 0.01}


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


def test_flag_kinds_ignore_the_figures():
    a = Prediction("glioma", 0.5, flags=("low confidence (50%)", "outside the training data (score 1.31)"))
    b = Prediction("glioma", 0.5, flags=("low confidence (51%)", "outside the training data (score 1.30)"))
    assert flag_kinds(a) == flag_kinds(b) == ("low confidence", "outside the training data")
    assert flag_kinds(Prediction("glioma", 0.9)) == ()


# ------------------------------------------------------------------- the quantized graph


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    weights = make_model_dir(tmp_path_factory.mktemp("int8_model"), seed=5)
    export_beside(weights)
    return weights


def _calibration(size: int, batches: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-2, 2, (4, 1, size, size)).astype(np.float32) for _ in range(batches)]


def _int8_input_shape(weights: Path) -> tuple[int, ...]:
    session = open_session(weights.parent / ONNX_NAME)
    return tuple(int(d) if isinstance(d, int) else 4 for d in session.get_inputs()[0].shape)


@pytest.fixture(scope="module")
def quantized(exported) -> Path:
    shape = _int8_input_shape(exported)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-2, 2, (4, *shape[1:])).astype(np.float32) for _ in range(2)]
    return quantize_graph(exported.parent / ONNX_NAME, exported.parent / INT8_NAME, batches)


def test_quantized_graph_holds_int8_weights_and_runs(exported, quantized):
    import onnx

    graph = onnx.load(str(quantized))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "the convolution weights are stored as int8"
    assert quantized.stat().st_size < 0.5 * (exported.parent / ONNX_NAME).stat().st_size

    model = load_model(exported, device="cpu", precision="float32")
    served = serve_graph(model, quantized, "int8")
    assert served.backend.precision == "int8" and model.backend.precision == "float32"
    rng = np.random.default_rng(1)
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8)) for _ in range(3)]
    for p in served.predict_batch(images):
        assert p.label in CLASS_NAMES and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_quantize_refuses_bad_arguments(exported, tmp_path):
    with pytest.raises(ValueError, match="calibration method 'median'.*minmax"):
        quantize_graph(exported.parent / ONNX_NAME, tmp_path / "x.onnx", _calibration(8), method="median")
    with pytest.raises(ValueError, match="No calibration"):
        quantize_graph(exported.parent / ONNX_NAME, tmp_path / "x.onnx", [])
    assert "minmax" in CALIBRATION_METHODS


# ------------------------------------------------------------------- which graph core serves


def _with_int8(exported: Path, quantized: Path, folder: Path, **fields) -> Path:
    shutil.copytree(exported.parent, folder)
    weights = folder / exported.name
    card = read_model_card(weights)
    card["onnx_int8"] = {
        "file": INT8_NAME, "sha256": sha256_file(folder / INT8_NAME), "weights_sha256": card["weights_sha256"],
        "float32_sha256": card["onnx"]["sha256"], "passed": True,
    } | fields
    write_model_card(weights, card)
    return weights


def test_int8_served_only_when_it_passed(exported, quantized, tmp_path):
    passed = _with_int8(exported, quantized, tmp_path / "passed")
    assert load_model(passed, device="cpu").backend.precision == "int8"
    assert load_model(passed, device="cpu", precision="float32").backend.precision == "float32"
    failed = _with_int8(exported, quantized, tmp_path / "failed", passed=False)
    assert load_model(failed, device="cpu").backend.precision == "float32"
    other = _with_int8(exported, quantized, tmp_path / "other", float32_sha256="0" * 64)
    assert load_model(other, device="cpu").backend.precision == "float32", "made from another float32 graph"


def test_tampered_int8_graph_is_refused(exported, quantized, tmp_path):
    weights = _with_int8(exported, quantized, tmp_path / "tampered")
    with open(weights.parent / INT8_NAME, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="int8 ONNX file"):
        load_model(weights, device="cpu")


def test_unknown_precision_names_the_accepted_ones(exported):
    card = read_model_card(exported)
    with pytest.raises(ValueError, match="'fp16'.*'int8', 'float32'"):
        load_runtime(exported.parent, card, precision="fp16")
    with pytest.raises(ValueError, match="'bf16'"):
        load_model(exported, device="cpu", precision="bf16")


# ------------------------------------------------------------------- the shipped graph


def test_shipped_int8_matches_pytorch_float32_on_testing_sample(shipped_model, data_root):
    """The served int8 graph against the PyTorch float32 reference (the same weights, gate and
    flags) on a sample of Testing: nearly always the same label and flags, and accuracy within
    one scan."""
    if shipped_model.backend.precision != "int8":
        pytest.skip("the shipped model card records no int8 graph that passed its fidelity check")
    reference = Classifier(shipped_model.network, shipped_model.card, "cpu", gate=shipped_model.gate)
    assert reference.backend.name == "pytorch"
    paths = [p for name in CLASS_NAMES for p in sorted((data_root / "Testing" / name).glob("*.jpg"))[::40][:SAMPLE_PER_CLASS]]
    labels = [p.parent.name for p in paths]
    images = [read_scan(p) for p in paths]
    a, b = reference.predict_batch(images), shipped_model.predict_batch(images)
    same = np.mean([x.label == y.label and flag_kinds(x) == flag_kinds(y) for x, y in zip(a, b)])
    assert same >= 0.95, f"same label and flags on {same:.1%} of {len(paths)} Testing scans"
    correct_a = sum(x.label == t for x, t in zip(a, labels))
    correct_b = sum(y.label == t for y, t in zip(b, labels))
    assert abs(correct_a - correct_b) <= 1
    assert max(abs(x.probabilities[c] - y.probabilities[c]) for x, y in zip(a, b) for c in CLASS_NAMES) < 0.25


def test_shipped_card_records_the_fidelity_check():
    from core.constants import default_weights

    if not default_weights().is_file():
        pytest.skip("no shipped weights")
    card = read_model_card(default_weights())
    info = card.get("onnx_int8")
    if not info:
        pytest.skip("no int8 graph recorded")
    report = info["fidelity"]
    assert info["passed"] == passes(report)["passed"]
    assert info["float32_sha256"] == card["onnx"]["sha256"]
    assert {"testing", "testing_leak_free"} <= set(report) and any(k.startswith("external/") for k in report)
    assert json.dumps(report)  # plain JSON figures


# ------------------------------------------------------------------- the float32 re-check


def test_recheck_rows_pick_scans_near_a_decision():
    recheck = Recheck(0.05, (0.9, 1.2))
    probs = np.array([
        [0.97, 0.01, 0.01, 0.01],  # clear: nothing near
        [0.50, 0.46, 0.02, 0.02],  # label margin 0.04 < 2 * 0.05
        [0.72, 0.10, 0.10, 0.08],  # confidence 0.72 within 0.05 of the 0.70 threshold
        [0.97, 0.01, 0.01, 0.01],  # score 1.1: float32's could be 0.92-1.22, either side of 1
        [0.97, 0.01, 0.01, 0.01],  # score 1.3: float32's 1.08-1.44, flagged either way
    ])
    scores = np.array([0.5, 0.5, 0.5, 1.1, 1.3])
    rows = recheck.rows([probs], scores, low_confidence=0.70, score_thresholds=(1.0, float("inf")))
    assert rows.tolist() == [False, True, True, True, False]
    mirror = probs.copy()
    mirror[0] = [0.51, 0.47, 0.01, 0.01]  # the mirror image's label could change
    assert recheck.rows([probs, probs, mirror], scores, 0.70, (1.0,))[0]


def test_recheck_rows_cover_the_floor_of_no_tumour_answers():
    recheck = Recheck(0.05, (0.9, 1.2), negative_tolerance=0.01)
    neg = CLASS_NAMES.index("notumor")
    probs = np.full((4, len(CLASS_NAMES)), 0.0)
    probs[:, 0] = [0.055, 0.035, 0.02, 0.945]
    probs[:, neg] = [0.945, 0.965, 0.98, 0.055]  # within 0.01 of 0.95, 0.015 away, clear, a glioma answer
    scores = np.full(4, 0.5)
    assert not recheck.rows([probs], scores, 0.70, (1.0,)).any()  # no floor: nothing near a decision
    assert recheck.rows([probs], scores, 0.70, (1.0,), negative=(neg, 0.95)).tolist() == [True, False, False, False]
    wide = Recheck(0.05, (0.9, 1.2))  # no negative tolerance: the probability tolerance serves
    assert wide.rows([probs], scores, 0.70, (1.0,), negative=(neg, 0.95)).tolist() == [True, True, True, False]
    # A floor on another value (the answer cosine): the band is read around that value instead;
    # a tumour answer stays out, whatever its value.
    cosine = np.array([0.99, 0.9955, 0.5, 0.995])
    assert recheck.rows([probs], scores, 0.70, (1.0,), (neg, 0.993), cosine).tolist() == [True, True, False, False]


def test_recheck_confirm_gate_reruns_every_raised_gate_state():
    probs = np.tile([0.97, 0.01, 0.01, 0.01], (4, 1))
    scores = np.array([0.5, 1.1, 3.0, 40.0])  # clear, inside the band, far above it, above the reject score
    banded = Recheck(0.05, (0.9, 1.2))
    assert banded.rows([probs], scores, 0.70, (1.0, 20.0)).tolist() == [False, True, False, False]
    confirming = Recheck(0.05, (0.9, 1.2), confirm_gate=True)
    assert confirming.rows([probs], scores, 0.70, (1.0, 20.0)).tolist() == [False, True, True, True]
    assert Recheck.from_card(confirming.to_card()) == confirming
    assert "confirm_gate" not in banded.to_card()  # cards written before the option read the same


def test_recheck_bands_validated_and_round_trip():
    with pytest.raises(ValueError, match="score_ratio"):
        Recheck(0.1, (1.2, 0.9))
    with pytest.raises(ValueError, match="negative_tolerance"):
        Recheck(0.1, (0.9, 1.2), negative_tolerance=-0.1)
    band = Recheck(0.1, (0.9, 1.2))
    assert Recheck.from_card(band.to_card()) == band and Recheck.from_card(None) is None
    narrow = Recheck(0.1, (0.9, 1.2), 0.02)
    assert Recheck.from_card(narrow.to_card()) == narrow


def test_recheck_serves_float32_answers_where_it_reruns(exported, quantized):
    model = load_model(exported, device="cpu", precision="float32")
    rng = np.random.default_rng(2)
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8)) for _ in range(6)]
    reference = model.predict_batch(images)
    always = serve_graph(model, quantized, "int8", recheck=Recheck(1.0, (1e-6, 1e6)))
    again = always.predict_batch(images)
    assert always.rechecked_scans == len(images)
    for a, b in zip(reference, again):
        assert a.label == b.label and a.flags == b.flags
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASS_NAMES) < 1e-9
    never = serve_graph(model, quantized, "int8", recheck=Recheck(0.0, (1.0, 1.0)))
    never.predict_batch(images)
    assert never.rechecked_scans == 0


@pytest.mark.slow
def test_main_writes_graph_card_and_report(tmp_path, data_root):
    """python -m train.quantize on a tiny model trained on nothing: the graph, the card entry
    and the report are written; without external sources the check does not pass, so core
    keeps serving float32."""
    from train.config import TrainConfig
    from train.quantize import get_args_parser, main

    weights = make_model_dir(tmp_path / "model", seed=7)
    card = read_model_card(weights)
    config = TrainConfig(data_dir=data_root, max_per_class=12, image_size=card["image_size"], workers=0)
    card["training"] = {"config": config.to_dict()}
    write_model_card(weights, card)
    export_beside(weights)
    report = tmp_path / "fidelity.json"
    args = get_args_parser().parse_args(
        ["--weights", str(weights), "--data-dir", str(data_root), "--no-external", "--calibration", "4",
         "--threads", "1", "--report", str(report)]
    )
    result = main(args)
    assert not result["checks"]["passed"] and not result["checks"]["every external source checked"]
    info = read_model_card(weights)["onnx_int8"]
    assert (weights.parent / info["file"]).is_file() and info["sha256"] == sha256_file(weights.parent / info["file"])
    assert info["calibration"]["scans"] == len(result["calibration_scans"]) <= 4
    assert set(result["calibration_scans"]).isdisjoint(str(p) for p in (data_root / "Testing").rglob("*"))
    assert info["passed"] is False and set(info["fidelity"]) == {"testing"} | ({"testing_leak_free"} & set(info["fidelity"]))
    assert 0 <= info["recheck"]["prob_tolerance"] <= 1
    stored = json.loads(report.read_text())
    assert stored["checks"] == result["checks"]
    assert stored["weights_sha256"] == sha256_file(weights) and stored["graph_sha256"] == info["sha256"]
    assert load_model(weights, device="cpu").backend.precision == "float32"


class _StubClassifier:
    """Just what fit_recheck reads: fixed probabilities per scan index, a floor of 0.9."""

    class_names = CLASS_NAMES
    negative_floor, low_confidence = 0.9, 0.5

    def __init__(self, probs: torch.Tensor) -> None:
        self.table = probs

    def _outputs(self, chunk):
        p = self.table[list(chunk)]
        return SimpleNamespace(probs=p, plain=p, mirror=None, problems=[None] * len(chunk)), None

    def _scores(self, out):
        return torch.ones(len(out.probs))

    def negative_values(self, probs):
        return np.asarray(probs)[:, CLASS_NAMES.index("notumor")]


def test_negative_quantile_narrows_only_the_floor_band():
    n, index = 200, CLASS_NAMES.index("notumor")
    shift = torch.linspace(0.0, 0.04, n, dtype=torch.float64)
    reference = torch.full((n, len(CLASS_NAMES)), 0.05 / 3, dtype=torch.float64)
    reference[:, index] = 0.95
    candidate = reference.clone()
    candidate[:, index] -= shift
    candidate[:, (index + 1) % len(CLASS_NAMES)] += shift
    scans = list(range(n))
    wide, summary = fit_recheck(_StubClassifier(reference), _StubClassifier(candidate), scans, quantile=0.995)
    narrow, narrow_summary = fit_recheck(
        _StubClassifier(reference), _StubClassifier(candidate), scans, quantile=0.995, negative_quantile=0.5
    )
    assert wide.negative_tolerance == pytest.approx(0.04 * 0.995, abs=1e-4)
    assert narrow.negative_tolerance == pytest.approx(0.02, abs=1e-3)
    assert narrow.prob_tolerance == wide.prob_tolerance and narrow.score_ratio == wide.score_ratio
    assert summary["negative_quantile"] == 0.995 and narrow_summary["negative_quantile"] == 0.5
