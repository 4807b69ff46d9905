"""``python -m benchmarks``: speed and memory of the inference API on real scans.

Prints, for the shipped model (or ``--weights``) on this machine's CPU:

- model load time (weights, network, optimisation) and the first call's extra cost;
- p50 and p95 latency of ``read_scan``, ``predict`` and ``explain`` for one scan;
- ``predict_batch`` throughput at batch 32;
- the scan review page's work for one upload, from the uploaded bytes to the images it shows
  (``app.review.analyse_scan``, the Grad-CAM heatmap, display adjustment, overlay, PNG
  encoding; Streamlit's own drawing is not included): issue 4's "under 1 second";
- peak resident memory, and its growth over 500 predict-and-explain calls (issue 8: < 50 MB);

and writes them as JSON (``--output``, default ``benchmarks/results.json``) with the torch
version, thread count, CPU model, git commit and the load average, so that runs can be compared
between commits. ``--variants`` also times the inference options one against the other
(interleaved, so that a busy machine slows all of them alike) and checks that each gives the
same probabilities as the plain network. A busy machine inflates every figure: compare runs
taken on a quiet one (the load average is recorded).

Usage::

    python -m benchmarks                       # shipped model, torch's default thread count
    python -m benchmarks --threads 1 --repeats 100 --output /tmp/one-thread.json
    python -m benchmarks --variants            # also compare the optimisation options

Measured effect of the inference options (``--variants``): forward pass of EfficientNet-Lite0
at 192 px, median ms at batch 1 and ms per scan at batch 32, options timed in turn, with 1 and
2 torch threads; 2-core AMD EPYC, quiet, 2026-11-27 (ONNX rows: the graph for grey input, see
``train.export``), stored in ``benchmarks/results.json``::

    option                                   1 thread         2 threads        max prob  kept
                                             b1     b32/scan  b1     b32/scan  diff
    plain (channels_last, inference_mode)    30.3   34.7      22.8   22.9      0         -
    contiguous memory format                 31.4   56.2      24.7   39.2      1.2e-06   no
    torch.no_grad instead of inference_mode  29.4   36.0      22.8   23.6      0         no
    batch norm folded (core.optimize)        22.7   25.0      18.1   14.3      9.0e-07   yes (1)
    torch.jit.trace + freeze                 18.3   24.6      15.9   14.8      9.4e-07   no (2)
    torch.jit.optimize_for_inference         17.1   23.3      12.9   12.6      1.7e-06   no (2)
    ONNX Runtime, 2 intra-op threads         9.1    7.6       10.1   7.5       1.2e-06   no (3)
    ONNX Runtime, 2 concurrent runs (core)   12.7   7.7       12.5   7.1       1.2e-06   yes
    torch.compile                            -      -         -      -         -         no (4)

(1) for CUDA, for models without an ONNX file, and for the Grad-CAM copy (gradients need
PyTorch). (2) a TorchScript module has no submodules to tap for the out-of-distribution gate,
and TorchScript is deprecated in torch 2.14. (3) ONNX Runtime columns do not depend on torch's
thread count (the session's threads are fixed): the two ways of using both cores are equal at
batch 32; ``predict`` runs a scan and its mirror (batch 2), which the concurrent runs split one
per core. (4) compiles for minutes on this CPU and needs a C++ toolchain at run time; measure
with ``--variants --compile``. On this shared 2-core machine single figures vary by +-30 %
between runs; compare variants within one run.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import load_model, read_scan
from core.constants import CLASS_NAMES, PROJECT_ROOT, data_dir, default_weights

__all__ = ["TARGETS", "environment", "get_args_parser", "main", "run", "compare_variants"]

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
BATCH_SIZE = 32

#: Targets for the shipped model on the 2-core development CPU (issues 3, 4, 8 and 9).
#: name -> (limit, "max" when the figure must stay at or under it, "min" at or over it).
TARGETS: dict[str, tuple[float, str]] = {
    "predict_p50_ms": (15.0, "max"),
    "explain_p50_ms": (60.0, "max"),
    "batch_scans_per_s": (100.0, "min"),
    "page_p50_ms": (1000.0, "max"),
    "memory_growth_mb": (50.0, "max"),
}


# ---------------------------------------------------------------------- measuring
def _rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


def _time_calls(fn: Callable[[int], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call of ``fn(i)`` for i in range(repeats), after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return times


def _summary_ms(times: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "min_ms": round(float(ms.min()), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "n": len(ms),
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the figures depend on: versions, threads, CPU, commit and how busy the machine was."""
    import timm

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": _version("onnxruntime"),
        "threads": torch.get_num_threads(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def scan_files(root: Path, count: int) -> list[Path]:
    """``count`` real scans from ``root/Testing``, taken in turn from each class folder."""
    testing = root / "Testing"
    if not testing.is_dir():
        raise SystemExit(f"No Testing folder under {str(root)!r}; pass --data-dir (or set $BTMRI_DATA).")
    per_class = [sorted(p for p in (testing / name).glob("*") if p.is_file()) for name in CLASS_NAMES]
    files: list[Path] = []
    for i in range(max(map(len, per_class), default=0)):
        files += [paths[i] for paths in per_class if i < len(paths)]
        if len(files) >= count:
            return files[:count]
    if not files:
        raise SystemExit(f"No scans found under {str(testing)!r}.")
    return files


# ---------------------------------------------------------------------- the benchmark
def run(
    weights: Path,
    root: Path,
    repeats: int = 50,
    memory_calls: int = 500,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """All figures for one model, as a JSON-ready dict."""
    from app.overlay import adjust_display, colorize_heatmap, overlay_heatmap, to_png_bytes
    from app.review import analyse_scan

    files = scan_files(root, max(batch_size, 8))
    datas = [f.read_bytes() for f in files]
    rss_start = _rss_mb()

    progress("loading the model")
    start = time.perf_counter()
    model = load_model(weights, device="cpu")
    load_s = time.perf_counter() - start
    images = [read_scan(d) for d in datas]
    start = time.perf_counter()
    model.predict(images[0])
    model.explain(images[0])
    first_call_s = time.perf_counter() - start
    results: dict[str, Any] = {
        "model": {
            "arch": model.card.get("arch"),
            "image_size": model.image_size,
            "weights": str(weights),
            "predictions_by": model.backend.name,
        },
        "load_s": round(load_s, 3),
        "first_predict_explain_s": round(first_call_s, 3),
    }

    progress(f"read_scan x {repeats}")
    results["read_scan"] = _summary_ms(_time_calls(lambda i: read_scan(datas[i % len(datas)]), repeats))
    progress(f"predict x {repeats}")
    results["predict"] = _summary_ms(_time_calls(lambda i: model.predict(images[i % len(images)]), repeats))
    progress(f"explain x {repeats}")
    results["explain"] = _summary_ms(_time_calls(lambda i: model.explain(images[i % len(images)]), repeats))

    batch = images[:batch_size]
    batch_repeats = max(3, repeats // 10)
    progress(f"predict_batch({batch_size}) x {batch_repeats}")
    batch_times = _time_calls(lambda i: model.predict_batch(batch, batch_size=batch_size), batch_repeats, warmup=1)
    results["predict_batch"] = {
        "batch_size": len(batch),
        **_summary_ms(batch_times),
        "scans_per_s": round(len(batch) / float(np.median(batch_times)), 1),
    }

    def page(i: int) -> None:
        analysis = analyse_scan(model, datas[i % len(datas)])
        heatmap = analysis.heatmap(model, analysis.prediction.label)
        shown = adjust_display(analysis.image, 1.0, 1.0)
        for picture in (shown, colorize_heatmap(heatmap), overlay_heatmap(shown, heatmap, 0.5)):
            to_png_bytes(picture)  # what st.image sends to the browser

    page_repeats = max(5, repeats // 5)
    progress(f"scan review page x {page_repeats}")
    results["page"] = _summary_ms(_time_calls(page, page_repeats, warmup=1))

    progress(f"memory: {memory_calls} predict + explain calls")
    results["memory"] = _memory_growth(model, images, memory_calls)
    results["memory"]["start_mb"] = round(rss_start, 1)
    results["memory"]["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return results


def _memory_growth(model, images, calls: int) -> dict[str, Any]:
    """Resident memory before and after ``calls`` predict-and-explain calls (after a warm-up)."""
    def call(i: int) -> None:
        image = images[i % len(images)]
        model.predict(image)
        model.explain(image)

    for i in range(min(20, calls)):  # allocator pools and caches settle first
        call(i)
    gc.collect()
    before = _rss_mb()
    trace = []
    step = max(1, calls // 5)
    for i in range(calls):
        call(i)
        if (i + 1) % step == 0:
            trace.append(round(_rss_mb() - before, 1))
    gc.collect()
    after = _rss_mb()
    return {
        "calls": calls,
        "before_mb": round(before, 1),
        "after_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "growth_trace_mb": trace,
    }


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the measured figure and whether it is met."""
    measured = {
        "predict_p50_ms": results["predict"]["p50_ms"],
        "explain_p50_ms": results["explain"]["p50_ms"],
        "batch_scans_per_s": results["predict_batch"]["scans_per_s"],
        "page_p50_ms": results["page"]["p50_ms"],
        "memory_growth_mb": results["memory"]["growth_mb"],
    }
    out = {}
    for name, (limit, kind) in TARGETS.items():
        value = measured[name]
        out[name] = {"value": value, "target": limit, "kind": kind,
                     "met": value <= limit if kind == "max" else value >= limit}
    return out


# ---------------------------------------------------------------------- options compared
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
    split = load_runtime(weights.parent, card, threads=2)
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
            return net(x.contiguous())[0]
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


# ---------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time and measure the memory of load_model, read_scan, predict, explain, "
        "predict_batch and the scan review page on real scans; write JSON.",
    )
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder with Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per figure")
    parser.add_argument("--memory-calls", type=int, default=500, help="predict + explain calls for the memory-growth figure")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file for the figures")
    parser.add_argument("--variants", action="store_true", help="also compare the inference options (slower)")
    parser.add_argument("--compile", action="store_true", help="with --variants: include torch.compile (compiles for minutes)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}.")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}.")
    if args.memory_calls < 1:
        raise SystemExit(f"--memory-calls must be at least 1, got {args.memory_calls}.")
    weights = args.weights or default_weights()
    if not Path(weights).is_file():
        raise SystemExit(f"No weights at {str(weights)!r}; pass --weights.")


def _print_report(report: dict[str, Any]) -> None:
    env, res = report["environment"], report["results"]
    print(f"{env['cpu_model']}, {env['threads']} torch threads, torch {env['torch']}, "
          f"commit {str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}, "
          f"load average {env['load_average_1min']}")
    print(f"model {res['model']['arch']} at {res['model']['image_size']} px; predictions by {res['model'].get('predictions_by', 'PyTorch')}")
    print(f"  load_model                {res['load_s'] * 1000:9.1f} ms   first predict+explain {res['first_predict_explain_s'] * 1000:.0f} ms")
    for name in ("read_scan", "predict", "explain", "page"):
        label = "scan review page" if name == "page" else name
        print(f"  {label:24s}  p50 {res[name]['p50_ms']:8.2f} ms   p95 {res[name]['p95_ms']:8.2f} ms")
    b = res["predict_batch"]
    print(f"  predict_batch({b['batch_size']})        {b['scans_per_s']:8.1f} scans/s  (p50 {b['p50_ms']:.0f} ms per batch)")
    m = res["memory"]
    print(f"  memory                    peak {m['peak_rss_mb']:.0f} MB; +{m['growth_mb']:.1f} MB over {m['calls']} "
          f"predict+explain calls (trace {m['growth_trace_mb']})")
    print("targets:")
    for name, t in report["targets"].items():
        sign = "<=" if t["kind"] == "max" else ">="
        print(f"  {name:20s} {t['value']:9.2f} {sign} {t['target']:<8g} {'met' if t['met'] else 'NOT MET'}")
    if "variants" in report:
        print("inference options (forward pass only; ms; max probability difference to plain):")
        for name, v in report["variants"].items():
            if "skipped" in v:
                print(f"  {name:40s} skipped: {v['skipped']}")
                continue
            cells = "  ".join(
                f"{k}: b1 {t['batch1_p50_ms']:.1f} (min {t['batch1_min_ms']:.1f}), b32 {t['batch32_per_scan_ms']:.2f}/scan"
                for k, t in v.items() if k.startswith("threads_")
            )
            print(f"  {name:40s} {cells}  diff {v['max_prob_diff']:.1e}")


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    weights = Path(args.weights or default_weights())
    root = Path(args.data_dir or data_dir())

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[benchmark] {message}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {"environment": environment()}
    report["config"] = {"repeats": args.repeats, "memory_calls": args.memory_calls, "batch_size": BATCH_SIZE}
    report["results"] = run(weights, root, args.repeats, args.memory_calls, progress=progress)
    report["targets"] = check_targets(report["results"])
    if args.variants:
        progress("comparing inference options")
        report["variants"] = compare_variants(weights, root, repeats=max(10, args.repeats // 2),
                                              with_compile=args.compile)
    report["environment"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _print_report(report)
    print(f"wrote {args.output}")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
