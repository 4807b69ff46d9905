"""``python -m benchmarks.experiments.inference_variants``: the inference options compared.

Forward-pass time of the network at batch 1 and per scan at batch 32 under each option (plain,
contiguous memory, ``no_grad``, folded batch norms, TorchScript trace and freeze, TorchScript
``optimize_for_inference``, optionally ``torch.compile``, and ONNX Runtime with two intra-op
threads or two concurrent single-threaded runs), with 1 and 2 torch threads. Each round times
every option once, so that a change in the machine's load slows all of them alike; each option's
largest probability difference to the plain network is reported. Results and the choices made
from them: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.inference import BATCH_SIZE, scan_files
from benchmarks.experiments import emit
from core.constants import data_dir, default_weights
from core.scan import read_scan

def _plain_network(weights: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from core.model import build_network
    from core.weights import load_weights

    state, card = load_weights(weights)
    net = build_network(card["arch"], num_classes=len(card["class_names"]))
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    return net.to(memory_format=torch.channels_last), card


def _variants(plain: torch.nn.Module, example: torch.Tensor, with_compile: bool, weights: Path) -> dict[str, tuple[Any, str]]:
    """name -> (network or error text, memory format of the input)."""
    from core.optimize import optimize_for_inference

    found: dict[str, tuple[Any, str]] = {
        "plain (channels_last, inference_mode)": (plain, "channels_last"),
        "contiguous memory format": (copy.deepcopy(plain).to(memory_format=torch.contiguous_format), "contiguous"),
        "no_grad instead of inference_mode": (plain, "no_grad"),
        "batch norm folded (core.optimize)": (optimize_for_inference(copy.deepcopy(plain)), "channels_last"),
    }
    try:
        # TorchScript is deprecated in PyTorch 2.x: measured here as an option, not served.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
            with torch.inference_mode():
                traced = torch.jit.trace(copy.deepcopy(plain), example, check_trace=False)
            found["torch.jit.trace + freeze"] = (torch.jit.freeze(traced.eval()), "channels_last")
            with torch.inference_mode():
                traced = torch.jit.trace(copy.deepcopy(plain), example, check_trace=False)
            found["torch.jit optimize_for_inference"] = (
                torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())), "channels_last")
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        found["torch.jit.trace + freeze"] = (f"failed: {exc}", "")
    if with_compile:
        try:
            compiled = torch.compile(copy.deepcopy(plain), dynamic=False)
            with torch.inference_mode():
                compiled(example)  # compiles now, not inside the timing
            found["torch.compile"] = (compiled, "channels_last")
        except Exception as exc:  # noqa: BLE001
            found["torch.compile"] = (f"failed: {type(exc).__name__}: {str(exc)[:200]}", "")
    found.update(_onnx_variants(weights))
    return found


def _onnx_variants(weights: Path) -> dict[str, tuple[Any, str]]:
    """The shipped ONNX file (``python -m train.export``) under ONNX Runtime: one run with two
    intra-op threads, and a batch split across two concurrent single-threaded runs (core's choice)."""
    from core.ort import OnnxNetwork, load_runtime
    from core.weights import read_model_card

    card = read_model_card(weights)
    if not card.get("onnx"):
        return {"ONNX Runtime": ("no model.onnx recorded in the model card", "")}
    try:
        import onnxruntime as ort
    except ImportError:
        return {"ONNX Runtime": ("onnxruntime not installed", "")}
    split = load_runtime(weights.parent, card, threads=2, precision="float32")
    assert split is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    single = ort.InferenceSession(str(weights.parent / card["onnx"]["file"]), options, providers=["CPUExecutionProvider"])
    return {
        "ONNX Runtime, 2 intra-op threads": (OnnxNetwork(single, split.stages, threads=1), "onnx"),
        "ONNX Runtime, 2 concurrent runs (core)": (split, "onnx"),
    }


def compare_variants(weights: Path, root: Path, repeats: int = 30, with_compile: bool = False,
                     threads: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Forward-pass time of each inference option at batch 1 and 32, timed in turn.

    Each round times every option once, so that a change in the machine's load slows all of
    them alike; ``max_prob_diff`` is the largest probability difference to the plain network
    over the 32 scans (must stay under 1e-4).
    """
    plain, card = _plain_network(weights)
    from core.preprocess import eval_transform

    transform = eval_transform(int(card["image_size"]), card["mean"], card["std"])
    scans = [read_scan(f) for f in scan_files(root, BATCH_SIZE)]
    x32 = torch.stack([transform(s) for s in scans]).contiguous(memory_format=torch.channels_last)
    x1 = x32[:1].contiguous(memory_format=torch.channels_last)
    variants = _variants(plain, x1, with_compile, weights)
    runnable = {name: v for name, v in variants.items() if not isinstance(v[0], str)}

    def forward(net, fmt: str, x: torch.Tensor) -> torch.Tensor:
        if fmt == "onnx":
            # A graph exported for grey input takes the one channel the three repeat.
            return torch.from_numpy(net.run(x[:, :net.channels].contiguous().numpy())[0])
        if fmt == "contiguous":
            x = x.contiguous()
        if fmt == "no_grad":
            with torch.no_grad():
                return net(x)
        with torch.inference_mode():
            return net(x)

    with torch.inference_mode():
        reference = torch.softmax(plain(x32).double(), dim=-1)
    out: dict[str, Any] = {}
    saved_threads = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            times: dict[str, dict[int, list[float]]] = {name: {1: [], BATCH_SIZE: []} for name in runnable}
            for name, (net, fmt) in runnable.items():  # warm-up
                for _ in range(2):
                    forward(net, fmt, x1)
                forward(net, fmt, x32)
            for round_ in range(repeats):
                for name, (net, fmt) in runnable.items():
                    start = time.perf_counter()
                    forward(net, fmt, x1)
                    times[name][1].append(time.perf_counter() - start)
                    if round_ % 5 == 0:
                        start = time.perf_counter()
                        forward(net, fmt, x32)
                        times[name][BATCH_SIZE].append(time.perf_counter() - start)
            for name, (net, fmt) in runnable.items():
                probs = torch.softmax(forward(net, fmt, x32).double(), dim=-1)
                entry = out.setdefault(name, {"max_prob_diff": float((probs - reference).abs().max())})
                entry[f"threads_{n_threads}"] = {
                    "batch1_p50_ms": round(statistics.median(times[name][1]) * 1000, 2),
                    "batch1_min_ms": round(min(times[name][1]) * 1000, 2),
                    "batch32_per_scan_ms": round(statistics.median(times[name][BATCH_SIZE]) * 1000 / BATCH_SIZE, 2),
                }
    finally:
        torch.set_num_threads(saved_threads)
    for name, (value, _) in variants.items():
        if isinstance(value, str):
            out[name] = {"skipped": value}
    return out



def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.inference_variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder with Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds")
    parser.add_argument("--compile", action="store_true", help="include torch.compile (compiles for minutes; needs a C++ toolchain)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)
    result = compare_variants(Path(args.weights or default_weights()), Path(args.data_dir or data_dir()), args.repeats, args.compile)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
