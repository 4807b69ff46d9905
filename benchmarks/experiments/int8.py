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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.experiments import emit
from core import load_model, read_scan
from core.constants import data_dir, default_weights, external_dir
from core.model import Classifier
from core.ort import INT8_NAME, ONNX_NAME
from train.config import TrainConfig
from train.quantize import calibration_batches, evaluation_sets, fidelity, quantize_graph, serve_graph


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
    parser.add_argument("--graph-dir", type=Path, default=Path("runs/int8-experiment"), help="folder for the quantized graph")
    args = parser.parse_args(argv)

    weights = Path(args.weights or default_weights())
    model = load_model(weights, device="cpu", threads=args.threads, precision="float32")
    config = TrainConfig.from_dict(model.card["training"]["config"]).replace(data_dir=data_dir())
    batches, paths = calibration_batches(model, config, args.calibration, config.seed)
    args.graph_dir.mkdir(parents=True, exist_ok=True)
    graph = quantize_graph(weights.parent / ONNX_NAME, args.graph_dir / INT8_NAME, batches)
    fp32 = serve_graph(model, weights.parent / ONNX_NAME, "float32", args.threads)
    int8 = serve_graph(model, graph, "int8", args.threads)
    sets = evaluation_sets(config, external_dir(), None)
    result: dict[str, Any] = {"calibration_scans": len(paths), "fidelity": fidelity(fp32, int8, sets)}
    fp32_single = serve_graph(model, weights.parent / ONNX_NAME, "float32", args.threads)
    fp32_single.mirror_check = False
    int8_single = serve_graph(fp32_single, graph, "int8", args.threads)
    result["fidelity_without_mirror"] = fidelity(fp32, int8_single, sets[:1])
    images = [read_scan(p) for p in sets[0].paths[:64]]
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
