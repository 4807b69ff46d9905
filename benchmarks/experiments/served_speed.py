"""``python -m benchmarks.experiments.served_speed``: the served default against an earlier
checkout's serving options, in one run on this machine.

Each variant runs in a worker process of its own (its checkout's code and assets) that loads
the model, reads the same Testing scans and warms up; then the workers are timed one after
another, round by round, so that no two measure at once and a drift of the machine touches
every variant alike. Per round: the median of ``predict`` over single scans, and
``predict_batch`` over all of them (scans per second). The JSON names the CPU and its flags.
Options after a checkout are that checkout's ``load_model`` arguments (commit 18a412a served
int8 by default and took ``precision``)::

    git worktree add /tmp/old 18a412a
    python -m benchmarks.experiments.served_speed --baseline /tmp/old precision=int8 \\
        --baseline /tmp/old precision=float32 --output benchmarks/experiments/served_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.constants import PROJECT_ROOT, data_dir, external_dir

from ..inference import environment
from .quantize import cpu_flags

__all__ = ["main", "parse_variant"]

#: What each worker runs: load, read, warm up, then one timing per line read from stdin.
_WORKER = r"""
import json, sys, time
import numpy as np
from core import load_model, read_scan
kwargs, files, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
model = load_model(device="cpu", **kwargs)
images = [read_scan(f) for f in files]
model.predict_batch(images[:8]); [model.predict(i) for i in images[:4]]
print("ready", flush=True)
for line in sys.stdin:
    before = getattr(model, "rechecked_scans", None)
    single = []
    for image in images[:calls]:
        start = time.perf_counter(); model.predict(image); single.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter(); model.predict_batch(images); seconds = time.perf_counter() - start
    rechecked = None if before is None else (model.rechecked_scans - before) / (calls + len(images))
    print(json.dumps({"predict_ms": float(np.median(single)), "batch_scans_per_s": len(images) / seconds,
                      "rechecked_share": rechecked}), flush=True)
"""


def parse_variant(checkout: str, options: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """A checkout folder and ``key=value`` keyword arguments of its ``load_model``."""
    kwargs: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise SystemExit(f"Options are key=value, got {option!r}.")
        try:
            kwargs[key] = json.loads(value)  # numbers, true, false
        except ValueError:
            kwargs[key] = value
    return Path(checkout).resolve(), kwargs


def _start(checkout: Path, kwargs: dict[str, Any], files: list[str], calls: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout), "BTMRI_DATA": str(data_dir()), "BTMRI_EXTERNAL": str(external_dir())}
    env.pop("BTMRI_ASSETS", None)
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(kwargs), json.dumps(files), str(calls)],
        cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"The worker for {checkout} {kwargs} did not start.")
    return worker


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.served_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", nargs="+", action="append", default=[], metavar=("CHECKOUT", "KEY=VALUE"),
                        help="an earlier checkout and its load_model options (repeatable)")
    parser.add_argument("--scans", type=int, default=64, help="Testing scans per predict_batch call (default: 64)")
    parser.add_argument("--calls", type=int, default=40, help="single predict calls per round (default: 40)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default: 5)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    testing = sorted((data_dir() / "Testing").glob("*/*.jpg"))
    files = [str(p) for p in testing[:: max(1, len(testing) // args.scans)][: args.scans]]
    variants = {"served default (this checkout)": (PROJECT_ROOT, {})}
    for checkout, *options in args.baseline:
        folder, kwargs = parse_variant(checkout, options)
        variants[f"{folder.name} {' '.join(options) or 'default'}"] = (folder, kwargs)
    workers = {name: _start(folder, kwargs, files, args.calls) for name, (folder, kwargs) in variants.items()}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    try:
        for _ in range(args.rounds):
            for name, worker in workers.items():
                worker.stdin.write("go\n")
                worker.stdin.flush()
                rounds[name].append(json.loads(worker.stdout.readline()))
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait(timeout=60)
    summary = {
        name: {
            "predict_p50_ms": float(np.median([r["predict_ms"] for r in rows])),
            "predict_batch_scans_per_s": float(np.median([r["batch_scans_per_s"] for r in rows])),
            "rechecked_share": rows[-1]["rechecked_share"],
            "rounds": rows,
        }
        for name, rows in rounds.items()
    }
    machine = environment()
    result = {
        "cpu": machine["cpu_model"],
        "cpu_flags": cpu_flags(),
        "cores": machine["cpu_count"],
        "scans": len(files),
        "calls": args.calls,
        "variants": summary,
    }
    text = json.dumps(result, indent=1)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
