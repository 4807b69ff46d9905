"""``python -m benchmarks.experiments.predict_stages``: where the time of one served ``predict`` goes.

Serves ``Classifier.predict`` (as loaded by ``core.load_model``: int8 with the float32 re-check
by default) on real Testing scans, one at a time, and times each stage of the pipeline with
``time.perf_counter`` around the functions that do it: the head's box, the rest of the
preprocessing, the image checks, the network pass (with the gate's taps), the gate's score and
the float32 re-check. What is left of ``predict`` is the thread hand-off, the flags and Python.
It also counts the scans the re-check ran again. Timers sum the stage's time in whichever thread
runs it, so they are exact for one scan per call (the default here), where nothing overlaps.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.experiments import emit
from benchmarks.inference import environment, scan_files
from core import load_model, read_scan
from core import model as model_module
from core import preprocess as preprocess_module
from core.constants import data_dir

#: Stages in pipeline order, with what each one times.
STAGES = {
    "head_box": "core.preprocess.head_box (the crop's box)",
    "preprocess": "the backend's prepare: grey, crop, resize, normalise (the head's box excluded)",
    "image_checks": "core.ood.image_problem (blank, tiny, flat images)",
    "network": "the backend's pass, the gate's taps included",
    "gate": "the gate's Mahalanobis score",
    "recheck": "the float32 re-run of the answers int8 could get wrong (its gate scores excluded)",
}


class Timers:
    """Exclusive seconds per stage: a wrapped function adds its own time, less the time of the
    wrapped functions it called (the head's box inside the preprocessing, the gate's score inside
    the re-check), so the stages add up to no more than the wall time of one-scan calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # time spent in nested timed calls
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                nested = stack.pop()
                self.seconds[stage] += elapsed - nested
                if stack:
                    stack[-1] += elapsed

        return timed


def profile(weights: Path | None, files: Sequence[Path], threads: int, warmup: int = 10) -> dict[str, Any]:
    model = load_model(weights, threads=threads)
    images = [read_scan(p) for p in files]
    for image in images[:warmup]:
        model.predict(image)
    reference = getattr(model.backend, "reference", None)
    if reference is not None:  # its session opens on first use: not a cost of the calls timed
        reference.run(model.backend.prepare(images[:1]))
    model.rechecked_scans = 0
    timers = Timers()
    backend = model.backend
    patched: list[tuple[Any, str, Any]] = [
        (preprocess_module, "head_box", timers.wrap("head_box", preprocess_module.head_box)),
        (model_module, "image_problem", timers.wrap("image_checks", model_module.image_problem)),
        (backend, "prepare", timers.wrap("preprocess", backend.prepare)),
        (backend, "run", timers.wrap("network", backend.run)),
        (model, "_scores", timers.wrap("gate", model._scores)),
        (model, "_rechecked", timers.wrap("recheck", model._rechecked)),
    ]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patched]
    try:
        for owner, name, timed in patched:
            setattr(owner, name, timed)
        start = time.perf_counter()
        for image in images:
            model.predict(image)
        total = time.perf_counter() - start
    finally:
        for owner, name, value in saved:
            if value is None:  # a bound method: drop the instance attribute that shadowed it
                delattr(owner, name)
            else:
                setattr(owner, name, value)
    n = len(images)
    ms = {name: 1000 * timers.seconds.get(name, 0.0) / n for name in STAGES}
    ms["other"] = 1000 * total / n - sum(ms.values())
    return {
        "weights": str(weights) if weights else "shipped",
        "precision": model.backend.precision,
        "threads": threads,
        "scans": n,
        "predict_mean_ms": 1000 * total / n,
        "stage_mean_ms": ms,
        "stages": STAGES | {"other": "thread hand-off, calibration, flags, the result object"},
        "rechecked_scans": model.rechecked_scans,
        "rechecked_share": model.rechecked_scans / n,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.predict_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--scans", type=int, default=256, help="Testing scans, taken in turn from each class")
    parser.add_argument("--threads", type=int, default=2, help="threads the model may use")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.scans < 1 or args.threads < 1:
        raise SystemExit(f"--scans and --threads must be at least 1 (got {args.scans} and {args.threads})")
    files = scan_files(args.data_dir or data_dir(), args.scans)
    result = profile(args.weights, files, args.threads) | {"environment": environment()}
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
