"""``python -m benchmarks.experiments.int8_variants``: ways of quantizing the shipped graph to
int8, each without the float32 re-check, against the float32 path.

Every variant is calibrated on the same 256 validation scans (``train.quantize``) and served
with the same gate and flags. Per variant and set (official Testing, its leak-free subset,
every source of the external development set): the share of scans with the same label, with
the same label and flags, the accuracy change in points and the largest probability difference;
and the graph's median time for one scan on one thread. The variants:

- ``every_node``: MinMax ranges, every node ONNX Runtime can quantize;
- ``stem_head_float``: the first convolution, the head and the classifier left in float32;
- ``percentile``, ``entropy``: those left in float32, other calibration methods;
- ``dedicated_pairs``: ONNX Runtime's ``DedicatedQDQPair`` (the gate's taps read their own pair);
- ``tapped_float``: also the two convolutions whose outputs the gate taps left in float32;
- ``depthwise_float``: also every depthwise convolution left in float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import emit
from core import load_model, read_scan
from core.constants import data_dir, default_weights, external_dir
from core.ort import INPUT_NAME, ONNX_NAME, open_session
from train.config import TrainConfig
from train.quantize import calibration_batches, compare, evaluation_sets, quantize_graph, sensitive_nodes, serve_graph


def pass_ms(graph: Path, image_size: int, repeats: int = 100) -> float:
    """Median time of one scan through ``graph`` on one thread."""
    session = open_session(graph)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, image_size, image_size)).astype(np.float32)
    for _ in range(10):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.int8_variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    parser.add_argument("--graph-dir", type=Path, default=Path("runs/int8-variants"), help="folder for the quantized graphs")
    args = parser.parse_args(argv)

    import onnx

    weights = Path(args.weights or default_weights())
    source = weights.parent / ONNX_NAME
    reference = load_model(weights, device="cpu", threads=args.threads, precision="float32")
    config = TrainConfig.from_dict(reference.card["training"]["config"]).replace(data_dir=data_dir())
    batches, _, _ = calibration_batches(reference, config, 256, config.seed)
    sets = evaluation_sets(config, external_dir(), None)
    images = {s.name: [read_scan(p) for p in s.paths] for s in sets}
    expected = {s.name: reference.predict_batch(images[s.name]) for s in sets}

    convs = [n for n in onnx.load(str(source)).graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    stages = reference.gate.stages if reference.gate is not None else ()
    # The last projection of each tapped block (blocks.S.<last>.conv_pwl).
    tapped = []
    for stage in stages:
        mine = [n for n in convs if n.input[1].startswith(f"net.blocks.{stage}.") and "conv_pwl" in n.input[1]]
        tapped += [mine[-1].name] if mine else []
    kept = sensitive_nodes(source)
    variants: dict[str, dict[str, Any]] = {
        "every_node": {},
        "stem_head_float": {"exclude": kept},
        "percentile": {"exclude": kept, "method": "percentile"},
        "entropy": {"exclude": kept, "method": "entropy"},
        "dedicated_pairs": {"exclude": kept, "extra_options": {"DedicatedQDQPair": True}},
        "tapped_float": {"exclude": kept + tapped},
        "depthwise_float": {"exclude": kept + depthwise},
    }
    args.graph_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"calibration_scans": 256, "float32_pass_ms": pass_ms(source, reference.image_size), "variants": {}}
    for name, options in variants.items():
        graph = quantize_graph(source, args.graph_dir / f"{name}.onnx", batches, **options)
        candidate = serve_graph(reference, graph, "int8", args.threads)
        row: dict[str, Any] = {"pass_ms": pass_ms(graph, reference.image_size), "sets": {}}
        for s in sets:
            entry = compare(expected[s.name], candidate.predict_batch(images[s.name]), s.labels)
            row["sets"][s.name] = {
                "same_label": round(entry["same_label"], 4),
                "same_label_and_flags": round(entry["same_label_and_flags"], 4),
                "accuracy_change_points": round(entry["accuracy_change_points"], 2) if "accuracy_change_points" in entry else None,
                "max_prob_diff": round(entry["max_prob_diff"], 3),
            }
        result["variants"][name] = row
        print(name, row["pass_ms"], row["sets"]["testing"], file=sys.stderr, flush=True)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
