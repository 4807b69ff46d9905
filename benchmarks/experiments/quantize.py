"""``python -m benchmarks.experiments.quantize``: an int8 graph of the shipped network, checked
against the float32 one the app serves, and timed against it.

Quantizes ``model.onnx`` statically with ONNX Runtime (QDQ, int8 weights per output channel,
uint8 activations; the first and last convolutions and the classifier stay float32), the
activation ranges calibrated on validation scans, never on Testing or the external set. Then the
int8 graph is served through the same :class:`core.Classifier` (calibration, gate and review
rules unchanged, only the runtime swapped) over Testing, its leak-free subset and every external
source, and compared with float32: accuracy, same label, same label and flags. Both are timed
in the same process, interleaved. int8 is not served by the app: on CPUs without AVX-512 VNNI it
is slower than float32, and plain int8 moves flags on more than 0.5 % of Testing
(``docs/performance.md``)::

    python -m benchmarks.experiments.quantize --output benchmarks/experiments/quantize.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.constants import CLASS_NAMES, OTHER_LESION_CLASS, data_dir, default_weights, external_dir
from core.model import Classifier, Prediction, load_model
from core.preprocess import input_array
from core.runtime import INPUT_NAME, ONNX_NAME, OnnxRuntime, open_session
from core.scan import read_scan
from core.weights import read_model_card
from train.config import TrainConfig
from train.evaluate import leak_free_mask, load_leak_free
from train.external import find_external
from train.splits import load_data

__all__ = ["EvalSet", "compare", "cpu_flags", "fidelity", "int8_classifier", "passes", "quantize_graph", "sensitive_nodes"]

logger = logging.getLogger(__name__)

#: Largest accuracy change (percentage points) allowed between int8 and float32 on any set.
MAX_ACCURACY_DROP_POINTS = 0.3
#: Smallest share of Testing scans that must get the same label and flags from both graphs.
MIN_SAME_TESTING = 0.995
#: How activation ranges are set from the calibration scans (ONNX Runtime's calibrators).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
_CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class EvalSet:
    """Scans with their true labels (a class name, or ``"other"`` for lesions of no class)."""

    name: str
    paths: tuple[Path, ...]
    labels: tuple[str, ...]


def quantize_graph(
    source: Path,
    output: Path,
    calibration: Sequence[np.ndarray],
    exclude: Sequence[str] = (),
    method: str = "minmax",
    op_types: Sequence[str] | None = None,
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Static int8 quantization of the ONNX graph ``source`` into ``output``: QDQ, int8 weights
    per output channel, uint8 activations whose ranges come from ``calibration`` (network
    inputs, float32 NCHW batches) by ``method`` (one of :data:`CALIBRATION_METHODS`). Nodes
    named in ``exclude`` stay float32; ``op_types`` limits which operators are quantized
    (default: all ONNX Runtime can)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}.")
    methods = dict(zip(CALIBRATION_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy)))
    if not calibration:
        raise ValueError("No calibration batches: quantization needs scans to set activation ranges.")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude), op_types_to_quantize=None if op_types is None else list(op_types),
            calibrate_method=methods[method], extra_options=dict(extra_options or {}),
        )
    return output


def sensitive_nodes(graph: Path) -> list[str]:
    """The nodes left in float32: the first convolution (it reads the image), the last one
    (the head) and the classifier (Gemm). Quantizing them moved the most answers
    (``docs/performance.md``)."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    return ([convs[0], convs[-1]] if convs else []) + [n.name for n in nodes if n.op_type == "Gemm"]


def int8_classifier(model: Classifier, graph: Path, threads: int = 1) -> Classifier:
    """``model`` served through the ONNX graph ``graph``: the same card, calibration, gate and
    review rules, only the runtime swapped."""
    runtime = OnnxRuntime(open_session(graph, threads))
    return Classifier(model.network, model.card, gate=model.gate, tta=model.tta, threads=threads, runtime=runtime)


def cpu_flags() -> list[str]:
    """The CPU's integer dot-product flags that ONNX Runtime's int8 kernels use (Linux only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "amx_int8"))


def _accuracy(predictions: Sequence[Prediction], labels: Sequence[str]) -> float | None:
    known = [(p, t) for p, t in zip(predictions, labels) if t != OTHER_LESION_CLASS]
    return float(np.mean([p.label == t for p, t in known])) if known else None


def compare(a: Sequence[Prediction], b: Sequence[Prediction], labels: Sequence[str]) -> dict[str, Any]:
    """Predictions ``b`` (int8) against ``a`` (float32) of the same scans with true ``labels``:
    scans, the shares with the same label, with the same label and flags and with the same
    flags, the largest probability difference; and the accuracy of both (lesions of no class
    left out) with the change in points, where there are labelled scans."""
    entry: dict[str, Any] = {
        "n_images": len(a),
        "same_label": float(np.mean([x.label == y.label for x, y in zip(a, b)])),
        "same_label_and_flags": float(np.mean([x.label == y.label and x.flag_kinds == y.flag_kinds for x, y in zip(a, b)])),
        "same_flags": float(np.mean([x.flag_kinds == y.flag_kinds for x, y in zip(a, b)])),
        "max_prob_diff": float(max(abs(x.probabilities[c] - y.probabilities[c]) for x, y in zip(a, b) for c in CLASS_NAMES)),
    }
    acc_a, acc_b = _accuracy(a, labels), _accuracy(b, labels)
    if acc_a is not None and acc_b is not None:
        entry.update(accuracy_float32=acc_a, accuracy_int8=acc_b, accuracy_change_points=100 * (acc_b - acc_a))
    return entry


def fidelity(reference: Classifier, candidate: Classifier, sets: Sequence[EvalSet], batch_size: int = 32) -> dict[str, Any]:
    """Per set: scans, accuracy of both (lesions of no class left out), the change in points,
    the share with the same label, with the same label and flags, the largest probability
    difference."""
    out: dict[str, Any] = {}
    for s in sets:
        images = [read_scan(p) for p in s.paths]
        a = reference.predict_batch(images, batch_size)
        out[s.name] = entry = compare(a, candidate.predict_batch(images, batch_size), s.labels)
        logger.info("fidelity on %s: %s", s.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    return out


def passes(report: dict[str, Any], testing: str = "testing") -> dict[str, bool]:
    """Each condition of the fidelity check, and ``passed`` for all of them."""
    checks = {
        f"accuracy within {MAX_ACCURACY_DROP_POINTS} points on {name}": abs(entry["accuracy_change_points"]) <= MAX_ACCURACY_DROP_POINTS + 1e-9
        for name, entry in report.items() if "accuracy_change_points" in entry
    }
    checks["every external source checked"] = any(name.startswith("external/") for name in report)
    checks[f"same label and flags on at least {MIN_SAME_TESTING:.1%} of {testing}"] = (
        testing in report and report[testing]["same_label_and_flags"] >= MIN_SAME_TESTING
    )
    return {**checks, "passed": all(checks.values())}


def calibration_batches(model: Classifier, config: TrainConfig, count: int, seed: int = 0) -> list[np.ndarray]:
    """Network inputs of ``count`` validation scans of ``config`` drawn at random, in batches."""
    _, val, _ = load_data(config)
    if not val:
        raise SystemExit("The training configuration gives no validation scans to calibrate on.")
    rng = np.random.default_rng(seed)
    paths = [val[i].path for i in sorted(rng.choice(len(val), min(count, len(val)), replace=False))]
    channels = model.runtime.channels
    mean, std = list(model.card["mean"])[:channels], list(model.card["std"])[:channels]
    return [
        input_array([read_scan(p) for p in paths[i : i + _CALIBRATION_BATCH]], model.image_size, mean, std, model.crop_head)
        for i in range(0, len(paths), _CALIBRATION_BATCH)
    ]


def timings(models: dict[str, Classifier], images: Sequence[Any], rounds: int = 3, calls: int = 40) -> dict[str, Any]:
    """``predict`` p50 (ms) and ``predict_batch`` throughput (scans/s) of each model, the models
    interleaved round by round in this process."""
    single: dict[str, list[float]] = {name: [] for name in models}
    batch: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        model.predict_batch(images[:8])
    for _ in range(rounds):
        for name, model in models.items():
            for image in images[:calls]:
                start = time.perf_counter()
                model.predict(image)
                single[name].append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            model.predict_batch(images)
            batch[name].append(len(images) / (time.perf_counter() - start))
    return {name: {"predict_p50_ms": float(np.median(single[name])), "predict_batch_scans_per_s": float(np.median(batch[name]))}
            for name in models}


def evaluation_sets(config: TrainConfig, external: Path | None, audit: Path | None = None) -> list[EvalSet]:
    """Official Testing, its leak-free subset (when an audit report is found) and every source
    of the external development set (when ``external`` is given)."""
    _, _, test = load_data(config.replace(no_test=False))
    if not test:
        raise SystemExit(f"No Testing scans under {str(config.data_dir)!r}; pass --data-dir.")
    sets = [EvalSet("testing", tuple(s.path for s in test), tuple(CLASS_NAMES[s.label] for s in test))]
    leak_free = load_leak_free(audit)
    if leak_free is not None:
        mask = leak_free_mask([s.path for s in test], config.data_dir, leak_free)
        kept = [s for s, keep in zip(test, mask) if keep]
        sets.append(EvalSet("testing_leak_free", tuple(s.path for s in kept), tuple(CLASS_NAMES[s.label] for s in kept)))
    if external is not None:
        scans = find_external(external)
        for source in sorted({s.source for s in scans}):
            mine = [s for s in scans if s.source == source]
            sets.append(EvalSet(f"external/{source}", tuple(s.path for s in mine), tuple(s.label for s in mine)))
    return sets


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="weights with model.onnx beside them (default: the shipped model)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--calibration", type=int, default=256, help="validation scans to calibrate on (default: 256)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default: 2)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the report")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    weights = Path(args.weights or default_weights())
    card = read_model_card(weights)
    config = TrainConfig.from_dict(card["training"]["config"]).replace(data_dir=data_dir())
    reference = load_model(weights, device="cpu", threads=args.threads)
    with tempfile.TemporaryDirectory() as folder:
        graph = quantize_graph(weights.parent / ONNX_NAME, Path(folder) / "model.int8.onnx",
                               calibration_batches(reference, config, args.calibration, config.seed),
                               exclude=sensitive_nodes(weights.parent / ONNX_NAME))
        candidate = int8_classifier(reference, graph, args.threads)
    sets = evaluation_sets(config, Path(args.external or external_dir()), None)
    report = fidelity(reference, candidate, sets)
    images = [read_scan(p) for p in sets[0].paths[:64]]
    result = {
        "weights_sha256": card["weights_sha256"],
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(), "threads": args.threads},
        "checks": passes(report),
        "fidelity": report,
        "speed": timings({"float32 (served)": reference, "int8": candidate}, images),
    }
    text = json.dumps(result, indent=1)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
