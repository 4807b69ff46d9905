"""``python -m benchmarks``: speed and memory of the inference API on real scans.

Prints, for the shipped model (or ``--weights``) on this machine's CPU:

- model load time (weights, network, optimisation, the ONNX Runtime session) and the first
  call's extra cost;
- p50 and p95 latency of ``read_scan``, ``predict`` and ``explain`` for one scan;
- ``predict_batch`` throughput at batch 32;
- the scan review page's work for one upload, from the uploaded bytes to the images it shows
  (``app.review.analyse_scan``, the Grad-CAM heatmap, display adjustment, overlay, PNG
  encoding; Streamlit's own drawing is not included), against its target of one second;
- peak resident memory, and its growth over 500 predict-and-explain calls;
- a baseline row: the same weights, gate and review rules served through the PyTorch runtime
  (``core.runtime.TorchRuntime``, batch norms folded), its ``predict`` and ``predict_batch``
  timed interleaved with the served model's (float32 ONNX Runtime), and the speed-ups of the
  served model over it (``explain`` runs the same PyTorch Grad-CAM in both, so it has no row);
- the sequence recogniser's cost: ``predict`` and ``predict_batch`` of the served model timed
  interleaved with the same model without its recogniser (the model as shipped before it), for
  scans whose sequence nothing else gives (JPEG or PNG, as here);
- with ``--cli``: ``python -m core`` over the whole Testing folder, decoding included, in scans
  per second (the median of ``--cli-rounds`` runs);

and writes them as JSON (``--output``, default ``benchmarks/results.json``) with the torch and
onnxruntime versions, thread count, CPU model, the CPU flags that decide which kernels run, git
commit and the load average. A busy machine inflates every figure: compare runs taken on a quiet
one (the load average is recorded).

Usage::

    python -m benchmarks                       # shipped model, torch's default thread count
    python -m benchmarks --threads 1 --repeats 100 --output /tmp/one-thread.json

The inference options that were measured and not kept are in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import Classifier, load_model, read_scan
from core.constants import CLASS_NAMES, PROJECT_ROOT, data_dir, default_weights
from core.runtime import TorchRuntime
from train.data import find_samples

__all__ = ["TARGETS", "environment", "get_args_parser", "main", "pytorch_baseline", "run"]

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
BATCH_SIZE = 32
#: Distinct batches of Testing scans the benchmark cycles through: scans differ in size, and so
#: in the cost of their head crop and resize, so a figure from one fixed batch would hang on
#: which scans it holds.
BATCHES = 8

#: Targets for the shipped model on the 2-core development CPU, and the speed-ups of the served
#: float32 ONNX Runtime path over the same weights in PyTorch, measured in the same run: ONNX
#: Runtime is the CPU default because it is faster there, so it must not be slower.
#: name -> (limit, "max" when the figure must stay at or under it, "min" at or over it).
TARGETS: dict[str, tuple[float, str]] = {
    "predict_p50_ms": (15.0, "max"),
    "explain_p50_ms": (60.0, "max"),
    "batch_scans_per_s": (100.0, "min"),
    "page_p50_ms": (1000.0, "max"),
    "memory_growth_mb": (50.0, "max"),
    "predict_speedup": (1.0, "min"),
    "batch_speedup": (1.0, "min"),
}
#: CPU features that decide which kernels ONNX Runtime and PyTorch use (AVX2, AVX-512, and the
#: integer and bf16 dot products of VNNI and AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


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


def _time_interleaved(fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name](i)``, the names called in turn within each round, so
    that load drift on the machine hits them alike."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - start)
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


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


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
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def scan_files(root: Path, count: int) -> list[Path]:
    """``count`` real scans from ``root/Testing``, taken in turn from each class folder."""
    testing = root / "Testing"
    if not testing.is_dir():
        raise SystemExit(f"No Testing folder under {str(root)!r}; pass --data-dir (or set $BTMRI_DATA).")
    samples = find_samples(testing)
    per_class = [[s.path for s in samples if s.label == label] for label in range(len(CLASS_NAMES))]
    files: list[Path] = []
    for i in range(max(map(len, per_class), default=0)):
        files += [paths[i] for paths in per_class if i < len(paths)]
        if len(files) >= count:
            return files[:count]
    if not files:
        raise SystemExit(f"No scans found under {str(testing)!r}.")
    return files


# ---------------------------------------------------------------------- the benchmark
def pytorch_baseline(model: Classifier) -> Classifier:
    """``model``'s weights, gate and review rules served through the PyTorch runtime (its
    network, batch norms folded) instead of ONNX Runtime."""
    stages = model.gate.stages if model.gate is not None else ()
    runtime = TorchRuntime(model.network, model.device, stages)
    return Classifier(model.network, model.card, gate=model.gate, device=model.device, tta=model.tta,
                      threads=torch.get_num_threads(), runtime=runtime)


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

    files = scan_files(root, max(batch_size * BATCHES, 8))
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
            "predictions_by": model.runtime.name,
            "tta": model.tta,
        },
        "load_s": round(load_s, 3),
        "first_predict_explain_s": round(first_call_s, 3),
    }
    progress(f"read_scan x {repeats}")
    results["read_scan"] = _summary_ms(_time_calls(lambda i: read_scan(datas[i % len(datas)]), repeats))
    served, base = _against_baseline(model, images, repeats, batch_size, progress)
    results.update(served)
    progress(f"explain x {repeats}")
    results["explain"] = _summary_ms(_time_calls(lambda i: model.explain(images[i % len(images)]), repeats))
    results["baseline"] = base
    if model.recogniser is not None:
        results["sequence_recogniser"] = _recogniser_cost(model, images, repeats, batch_size, progress)
    results["speedup"] = {
        "predict": round(base["predict"]["p50_ms"] / results["predict"]["p50_ms"], 2),
        "predict_batch": round(results["predict_batch"]["scans_per_s"] / base["predict_batch"]["scans_per_s"], 2),
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


def _recogniser_cost(
    model: Classifier, images: Sequence[Any], repeats: int, batch_size: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """``predict`` and ``predict_batch`` with and without the sequence recogniser, interleaved."""
    import copy

    plain = copy.copy(model)
    plain.recogniser = None
    progress(f"predict x {repeats}, with and without the sequence recogniser")
    times = _time_interleaved({"with": lambda i: model.predict(images[i % len(images)]),
                               "without": lambda i: plain.predict(images[i % len(images)])}, repeats)
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    batch_times = _time_interleaved({
        "with": lambda i: model.predict_batch(batches[i % len(batches)], batch_size=batch_size),
        "without": lambda i: plain.predict_batch(batches[i % len(batches)], batch_size=batch_size),
    }, max(2 * len(batches), repeats // 5), warmup=1)
    out: dict[str, Any] = {key: {"predict": _summary_ms(times[key]), "predict_batch": _summary_ms(batch_times[key])}
                           for key in ("with", "without")}
    out["predict_overhead"] = round(out["with"]["predict"]["p50_ms"] / out["without"]["predict"]["p50_ms"] - 1, 3)
    out["predict_batch_overhead"] = round(
        out["with"]["predict_batch"]["p50_ms"] / out["without"]["predict_batch"]["p50_ms"] - 1, 3)
    return out


def _against_baseline(
    model: Classifier, images: Sequence[Any], repeats: int, batch_size: int, progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``predict`` and ``predict_batch`` figures of ``model`` and of its PyTorch baseline, their
    calls interleaved."""
    baseline = pytorch_baseline(model)
    served: dict[str, Any] = {}
    base: dict[str, Any] = {"predictions_by": baseline.runtime.name}
    progress(f"predict x {repeats}, interleaved with the PyTorch baseline")
    times = _time_interleaved({"served": lambda i: model.predict(images[i % len(images)]),
                               "baseline": lambda i: baseline.predict(images[i % len(images)])}, repeats)
    served["predict"], base["predict"] = _summary_ms(times["served"]), _summary_ms(times["baseline"])

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    batch_repeats = max(2 * len(batches), repeats // 5)
    progress(f"predict_batch({batch_size}) x {batch_repeats} over {len(batches)} batches, interleaved with the PyTorch baseline")
    times = _time_interleaved({
        "served": lambda i: model.predict_batch(batches[i % len(batches)], batch_size=batch_size),
        "baseline": lambda i: baseline.predict_batch(batches[i % len(batches)], batch_size=batch_size),
    }, batch_repeats, warmup=1)
    scans = sum(len(batches[i % len(batches)]) for i in range(batch_repeats))
    for target, key in ((served, "served"), (base, "baseline")):
        target["predict_batch"] = {"batch_size": len(batches[0]), **_summary_ms(times[key]),
                                   "scans_per_s": round(scans / float(np.sum(times[key])), 1)}
    return served, base


def cli_throughput(weights: Path, root: Path, rounds: int = 2, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """``python -m core`` over every scan of ``root/Testing`` (a new process each time, decoding
    included, output discarded), ``rounds`` times; scans per second of the median run."""
    testing = root / "Testing"
    count = sum(1 for p in testing.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    seconds: list[float] = []
    for r in range(rounds):
        progress(f"python -m core over {count} Testing scans, round {r + 1} of {rounds}")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "core", str(testing), "--weights", str(weights), "--no-progress", "--output", os.devnull],
            cwd=PROJECT_ROOT, check=True,
        )
        seconds.append(time.perf_counter() - start)
    return {"scans": count, "rounds": rounds, "seconds": [round(t, 2) for t in seconds],
            "scans_per_s": round(count / float(np.median(seconds)), 1)}


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
        "predict_speedup": results["speedup"]["predict"],
        "batch_speedup": results["speedup"]["predict_batch"],
    }
    out = {}
    for name, (limit, kind) in TARGETS.items():
        value = measured[name]
        out[name] = {"value": value, "target": limit, "kind": kind,
                     "met": value <= limit if kind == "max" else value >= limit}
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
    parser.add_argument("--cli", action="store_true", help="also time python -m core over the whole Testing folder")
    parser.add_argument("--cli-rounds", type=int, default=2, help="runs of python -m core with --cli (the median is kept)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}.")
    if args.cli_rounds < 1:
        raise SystemExit(f"--cli-rounds must be at least 1, got {args.cli_rounds}.")
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
    print(f"CPU flags: {', '.join(env.get('cpu_flags', [])) or 'unknown'}")
    print(f"model {res['model']['arch']} at {res['model']['image_size']} px; predictions by {res['model']['predictions_by']}")
    print(f"  load_model                {res['load_s'] * 1000:9.1f} ms   first predict+explain {res['first_predict_explain_s'] * 1000:.0f} ms")
    for name in ("read_scan", "predict", "explain", "page"):
        label = "scan review page" if name == "page" else name
        print(f"  {label:24s}  p50 {res[name]['p50_ms']:8.2f} ms   p95 {res[name]['p95_ms']:8.2f} ms")
    b = res["predict_batch"]
    print(f"  predict_batch({b['batch_size']})        {b['scans_per_s']:8.1f} scans/s  (p50 {b['p50_ms']:.0f} ms per batch)")
    base = res["baseline"]
    print(f"  baseline ({base['predictions_by']}, same run, interleaved): predict p50 {base['predict']['p50_ms']:.2f} ms, "
          f"predict_batch {base['predict_batch']['scans_per_s']:.1f} scans/s")
    print(f"  speed-up over the baseline: predict {res['speedup']['predict']:.2f}x, predict_batch {res['speedup']['predict_batch']:.2f}x")
    if "sequence_recogniser" in res:
        q = res["sequence_recogniser"]
        print(f"  sequence recogniser (interleaved): predict p50 {q['with']['predict']['p50_ms']:.2f} ms with, "
              f"{q['without']['predict']['p50_ms']:.2f} ms without (+{100 * q['predict_overhead']:.0f} %); "
              f"predict_batch +{100 * q['predict_batch_overhead']:.0f} %")
    if "cli" in res:
        c = res["cli"]
        print(f"  python -m core, {c['scans']} scans: {c['scans_per_s']:.1f} scans/s (runs of {c['seconds']} s)")
    m = res["memory"]
    print(f"  memory                    peak {m['peak_rss_mb']:.0f} MB; +{m['growth_mb']:.1f} MB over {m['calls']} "
          f"predict+explain calls (trace {m['growth_trace_mb']})")
    print("targets:")
    for name, t in report["targets"].items():
        sign = "<=" if t["kind"] == "max" else ">="
        print(f"  {name:20s} {t['value']:9.2f} {sign} {t['target']:<8g} {'met' if t['met'] else 'NOT MET'}")


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
    if args.cli:
        report["results"]["cli"] = cli_throughput(weights, root, args.cli_rounds, progress)
    report["targets"] = check_targets(report["results"])
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
