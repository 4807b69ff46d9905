"""``python -m benchmarks.experiments.int8``: int8 ONNX Runtime serving, its fidelity and speed.

Quantizes the shipped ``model.onnx`` statically (ONNX Runtime, QDQ, per-channel weights,
activations calibrated on scans of the validation split the model was selected on; never on
Testing or the external set), then serves the same model through the float32 and the int8
graph and reports:

- fidelity: accuracy on the official Testing split, its leak-free subset and every source of the
  external development set for both graphs, the share of Testing scans with the same label and
  flags, and the largest probability difference;
- speed, in one run with interleaved calls: ``predict`` p50 and ``predict_batch`` scans/s of
  float32 with the mirror pass (today's path, the baseline), float32 without it, int8 with
  and without it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import emit
from core import load_model, read_scan
from core.backend import OnnxBackend
from core.constants import CLASS_NAMES, OTHER_LESION_CLASS, external_dir
from core.model import Classifier
from core.ort import OnnxNetwork, open_session
from core.preprocess import input_array
from train.config import TrainConfig
from train.evaluate import load_leak_free
from train.external import find_external
from train.splits import load_data


def quantize(model: Classifier, calibration: Sequence[Path], output: Path) -> Path:
    """Static int8 QDQ quantization of the served graph, calibrated on ``calibration`` scans."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    backend = model.backend
    if not isinstance(backend, OnnxBackend):
        raise SystemExit("The model has no ONNX graph to quantize (python -m train.export).")
    source = Path(model.card["_folder"]) / model.card["onnx"]["file"]
    mean, std = backend.mean, backend.std

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [input_array([read_scan(p) for p in calibration[i : i + 16]], backend.image_size, mean, std)
                 for i in range(0, len(calibration), 16)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    prepared = output.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    return output


def _classifier_with(model: Classifier, graph: Path, threads: int, mirror_check: bool = True) -> Classifier:
    runtime = OnnxNetwork(open_session(graph), model.backend.stages, threads=threads)
    classifier = Classifier(model.network, model.card, "cpu", gate=model.gate, mirror_check=mirror_check)
    classifier.backend = OnnxBackend(runtime, model.image_size, model.card["mean"], model.card["std"])
    return classifier


def _accuracy(predictions, truths) -> float:
    return float(np.mean([p.label == t for p, t in zip(predictions, truths)]))


def fidelity(fp32: Classifier, int8: Classifier, sets: dict[str, tuple[list[Path], list[str]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (paths, truths) in sets.items():
        images = [read_scan(p) for p in paths]
        a, b = fp32.predict_batch(images), int8.predict_batch(images)
        known = [i for i, t in enumerate(truths) if t != OTHER_LESION_CLASS]
        entry = {
            "n_images": len(paths),
            "same_label_and_flags": float(np.mean([x.label == y.label and x.flags == y.flags for x, y in zip(a, b)])),
            "same_label": float(np.mean([x.label == y.label for x, y in zip(a, b)])),
            "max_prob_diff": float(max(abs(x.probabilities[c] - y.probabilities[c]) for x, y in zip(a, b) for c in CLASS_NAMES)),
        }
        if known:
            entry["accuracy_fp32"] = _accuracy([a[i] for i in known], [truths[i] for i in known])
            entry["accuracy_int8"] = _accuracy([b[i] for i in known], [truths[i] for i in known])
            entry["accuracy_diff_points"] = 100 * (entry["accuracy_int8"] - entry["accuracy_fp32"])
        out[name] = entry
    return out


def speed(variants: dict[str, Classifier], images: list, repeats: int) -> dict[str, Any]:
    """Interleaved: each round calls every variant once, so load drift hits them alike."""
    single: dict[str, list[float]] = {name: [] for name in variants}
    batch: dict[str, list[float]] = {name: [] for name in variants}
    for model in variants.values():
        model.predict(images[0])
        model.predict_batch(images[:32])
    for r in range(repeats):
        for name, model in variants.items():
            start = time.perf_counter()
            model.predict(images[r % len(images)])
            single[name].append(time.perf_counter() - start)
            if r % 5 == 0:
                start = time.perf_counter()
                model.predict_batch(images[:32])
                batch[name].append(time.perf_counter() - start)
    base = "float32, scan + mirror (today)"
    out = {}
    for name in variants:
        p50 = statistics.median(single[name]) * 1000
        rate = 32 / statistics.median(batch[name])
        out[name] = {"predict_p50_ms": round(p50, 2), "batch32_scans_per_s": round(rate, 1)}
    for name in variants:
        out[name]["predict_speedup"] = round(out[base]["predict_p50_ms"] / out[name]["predict_p50_ms"], 2)
        out[name]["batch_speedup"] = round(out[name]["batch32_scans_per_s"] / out[base]["batch32_scans_per_s"], 2)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--calibration", type=int, default=256, help="validation scans to calibrate on")
    parser.add_argument("--repeats", type=int, default=60, help="interleaved predict calls per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)

    model = load_model(args.weights, device="cpu", threads=args.threads)
    from core.constants import default_weights

    model.card["_folder"] = str(Path(args.weights or default_weights()).parent)
    config = TrainConfig.from_dict(model.card["training"]["config"])
    _, val, test = load_data(config)
    rng = np.random.default_rng(0)
    calibration = [val[i].path for i in sorted(rng.choice(len(val), min(args.calibration, len(val)), replace=False))]
    leak_free = load_leak_free(None)
    base = Path(config.data_dir).resolve()
    sets = {
        "testing": ([s.path for s in test], [CLASS_NAMES[s.label] for s in test]),
        "testing_leak_free": (
            [s.path for s in test if s.path.resolve().relative_to(base).as_posix() in leak_free],
            [CLASS_NAMES[s.label] for s in test if s.path.resolve().relative_to(base).as_posix() in leak_free],
        ),
    }
    for source in sorted({s.source for s in find_external(external_dir())}):
        scans = [s for s in find_external(external_dir()) if s.source == source]
        sets[f"external/{source}"] = ([s.path for s in scans], [s.label for s in scans])
    with tempfile.TemporaryDirectory() as folder:
        graph = quantize(model, calibration, Path(folder) / "model.int8.onnx")
        fp32 = _classifier_with(model, Path(model.card["_folder"]) / model.card["onnx"]["file"], args.threads)
        int8 = _classifier_with(model, graph, args.threads)
        result: dict[str, Any] = {"calibration_scans": len(calibration), "fidelity": fidelity(fp32, int8, sets)}
        fp32_single = _classifier_with(model, Path(model.card["_folder"]) / model.card["onnx"]["file"], args.threads, False)
        int8_single = _classifier_with(model, graph, args.threads, False)
        result["fidelity_without_mirror"] = fidelity(fp32, int8_single, {"testing": sets["testing"]})
        images = [read_scan(p) for p in sets["testing"][0][:64]]
        result["speed"] = speed({
            "float32, scan + mirror (today)": fp32,
            "float32, scan only": fp32_single,
            "int8, scan + mirror": int8,
            "int8, scan only": int8_single,
        }, images, args.repeats)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
