"""``python -m benchmarks.experiments.int8``: the serving options tried, with fidelity and speed.

Serves the shipped weights through each option and reports, per option, its fidelity against
the float32 ONNX Runtime path (accuracy change on the official Testing split, its leak-free
subset and every source of the external development set; the share of Testing scans with the
same label and flags; the largest probability difference; the share run again in float32) and,
in one run with interleaved calls, ``predict`` p50 and ``predict_batch`` scans/s at batch 32
against today's path (float32, scan and mirror image). The options:

- float32, scan and mirror image (today's path, the baseline); float32, scan only;
- int8 (ONNX Runtime static QDQ quantization, calibrated on validation scans) of every node;
- int8 with the first convolution, the head and the classifier left in float32;
- that, with near-boundary answers run again in float32 (the shipped option,
  ``python -m train.quantize``), with and without the mirror image.

The graphs of the first two int8 options are written to ``--graph-dir``; the last is the
shipped ``model.int8.onnx`` with its card's re-check bands.
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
from core.ort import INT8_NAME, ONNX_NAME, Recheck
from train.config import TrainConfig
from train.quantize import calibration_batches, evaluation_sets, fidelity, passes, quantize_graph, sensitive_nodes, serve_graph

BASELINE = "float32, scan + mirror (today)"


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
    out = {}
    for name in variants:
        out[name] = {
            "predict_p50_ms": round(statistics.median(single[name]) * 1000, 2),
            "batch32_scans_per_s": round(32 / statistics.median(batch[name]), 1),
        }
    for name in variants:
        out[name]["predict_speedup"] = round(out[BASELINE]["predict_p50_ms"] / out[name]["predict_p50_ms"], 2)
        out[name]["batch_speedup"] = round(out[name]["batch32_scans_per_s"] / out[BASELINE]["batch32_scans_per_s"], 2)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--calibration", type=int, default=256, help="validation scans to calibrate on")
    parser.add_argument("--repeats", type=int, default=60, help="interleaved predict calls per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    parser.add_argument("--graph-dir", type=Path, default=Path("runs/int8-experiment"), help="folder for the quantized graphs")
    args = parser.parse_args(argv)

    weights = Path(args.weights or default_weights())
    # The baseline is the path served before issue 18: float32, the scan and its mirror image.
    model = load_model(weights, device="cpu", threads=args.threads, precision="float32", mirror_check=True)
    info = model.card.get("onnx_int8")
    if not info:
        raise SystemExit("The model card records no int8 graph; run python -m train.quantize first.")
    config = TrainConfig.from_dict(model.card["training"]["config"]).replace(data_dir=data_dir())
    batches, paths, _ = calibration_batches(model, config, args.calibration, config.seed)
    args.graph_dir.mkdir(parents=True, exist_ok=True)
    source = weights.parent / ONNX_NAME
    every_node = quantize_graph(source, args.graph_dir / "every_node.onnx", batches)
    kept = quantize_graph(source, args.graph_dir / "stem_head_float.onnx", batches, exclude=sensitive_nodes(source))
    recheck = Recheck.from_card(info.get("recheck"))

    def scan_only(m: Classifier) -> Classifier:
        m.mirror_check = False
        return m

    fp32 = serve_graph(model, source, "float32", args.threads)
    variants = {
        BASELINE: fp32,
        "float32, scan only": scan_only(serve_graph(model, source, "float32", args.threads)),
        "int8 every node, scan + mirror": serve_graph(model, every_node, "int8", args.threads),
        "int8 (stem, head, classifier float32), scan + mirror": serve_graph(model, kept, "int8", args.threads),
        "int8 + float32 re-check (shipped), scan + mirror": serve_graph(model, weights.parent / INT8_NAME, "int8", args.threads, recheck),
        "int8 + float32 re-check, scan only": scan_only(serve_graph(model, weights.parent / INT8_NAME, "int8", args.threads, recheck)),
    }
    sets = evaluation_sets(config, external_dir(), None)
    reference_scan_only = variants["float32, scan only"]
    result: dict[str, Any] = {"calibration_scans": len(paths), "threads": args.threads, "recheck": info.get("recheck"), "fidelity": {}}
    for name, candidate in variants.items():
        if name == BASELINE:
            continue
        # Without the mirror image there is no mirror flag: compare with float32 scan only.
        reference = reference_scan_only if not candidate.mirror_check else fp32
        report = fidelity(reference, candidate, sets)
        result["fidelity"][name] = {"checks": passes(report), "sets": report}
    images = [read_scan(p) for p in sets[0].paths[:64]]
    result["speed"] = speed(variants, images, args.repeats)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
