"""``python -m benchmarks.experiments.candidate_latency --candidate WEIGHTS``: a candidate model's
``predict`` and ``explain`` latency against the shipped model's, side by side in one run.

A new network may take at most 1.7x the shipped model's ``predict`` p50 and 2x its ``explain``
p50, measured in the same run (machines of one kind differ in speed by about 2x). Both models
are loaded as the app loads them (``load_model``: float32 ONNX Runtime where the card names a
graph, else PyTorch; Grad-CAM in PyTorch) and called in turn on the same scans, cycling through
256 Testing scans as ``python -m benchmarks`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.experiments import emit
from benchmarks.inference import BATCHES, BATCH_SIZE, _summary_ms, _time_interleaved, environment, scan_files
from core import load_model, read_scan
from core.constants import data_dir, default_weights

#: Largest allowed ratio (candidate / shipped p50) per call.
LIMITS = {"predict": 1.7, "explain": 2.0}


def measure(shipped: Path, candidate: Path, root: Path, repeats: int = 100) -> dict[str, Any]:
    """p50/p95 of ``predict`` and ``explain`` for both models, interleaved, and their ratios."""
    models = {"shipped": load_model(shipped, device="cpu"), "candidate": load_model(candidate, device="cpu")}
    images = [read_scan(path) for path in scan_files(root, BATCH_SIZE * BATCHES)]
    out: dict[str, Any] = {
        name: {"weights": str(path), "arch": models[name].card["arch"], "runtime": models[name].runtime.name}
        for name, path in (("shipped", shipped), ("candidate", candidate))
    }
    for call in ("predict", "explain"):
        fns = {name: (lambda i, m=model, c=call: getattr(m, c)(images[i % len(images)])) for name, model in models.items()}
        times = _time_interleaved(fns, repeats)
        for name in models:
            out[name][call] = _summary_ms(times[name])
        ratio = out["candidate"][call]["p50_ms"] / out["shipped"][call]["p50_ms"]
        out[f"{call}_ratio"] = {"value": round(ratio, 2), "limit": LIMITS[call], "met": ratio <= LIMITS[call]}
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.candidate_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", type=Path, required=True, help="safetensors weights of the candidate model")
    parser.add_argument("--shipped", type=Path, default=None, help="weights to compare with (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder with Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per model and figure")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    for path in (args.candidate, args.shipped):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"No weights at {str(path)!r}.")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}.")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    result = measure(args.shipped or default_weights(), args.candidate, args.data_dir or data_dir(), args.repeats)
    result["environment"] = environment()
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:] if len(sys.argv) > 1 else None))
