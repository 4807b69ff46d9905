"""``python -m benchmarks.experiments.served_snapshot``: what the served model answers, to compare
two versions of the code.

``--write FILE`` stores, for a fixed list of scans (every 13th Testing scan and every 23rd scan of
the external development set; ``--every 1`` takes them all), the probabilities of ``predict_batch`` and ``predict``, the
out-of-distribution scores, labels, flags and review states, and a corner of five Grad-CAM
heatmaps. Run it in two checkouts, then ``--compare A B`` prints the largest differences: a
refactor must leave them at 0 (or within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core import flag_text, load_model, read_scan
from core.constants import data_dir, external_dir
from train.data import find_samples
from train.external import find_external


def snapshot(path: Path, every: int | None = None) -> None:
    files = [s.path for s in find_samples(data_dir() / "Testing")][:: every or 13]
    if external_dir().is_dir():
        files += [s.path for s in find_external(external_dir())][:: every or 23]
    model = load_model(device="cpu")
    images = [read_scan(f) for f in files]
    batch = model.predict_batch(images)
    single = [model.predict(images[i]) for i in range(0, len(images), 10)]
    cams = [model.explain(images[i])[:64, :64] for i in range(0, min(40, len(images)), 8)]
    np.savez(
        path,
        probs=np.array([[p.probabilities[c] for c in model.class_names] for p in batch]),
        single=np.array([[p.probabilities[c] for c in model.class_names] for p in single]),
        scores=np.array([p.ood_score for p in batch]),
        cams=np.stack(cams),
        answers=np.array([json.dumps([str(f), p.label, [flag_text(x) for x in p.flags], p.is_brain_mri, p.outside_training]) for f, p in zip(files, batch)]),
    )


def _kinds(answer: str) -> list:
    """An answer with each flag cut to its words before the numbers (its kind)."""
    file, label, flags, mri, outside = json.loads(answer)
    return [file, label, [flag.split(" (", 1)[0] for flag in flags], mri, outside]


def compare(a: Path, b: Path) -> dict[str, float | bool | int]:
    x, y = np.load(a), np.load(b)
    out: dict[str, float | bool | int] = {k: float(np.abs(x[k] - y[k]).max()) for k in ("probs", "single", "scores", "cams")}
    out["same_labels_flags_and_states"] = bool(np.array_equal(x["answers"], y["answers"]))
    out["same_labels_flag_kinds_and_states"] = all(_kinds(p) == _kinds(q) for p, q in zip(x["answers"], y["answers"]))
    out["flag_wording_differs"] = int(sum(p != q for p, q in zip(x["answers"], y["answers"])))
    out["scans"] = int(len(x["answers"]))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.served_snapshot", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="FILE", help="write the snapshot (.npz)")
    group.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"), help="compare two snapshots")
    parser.add_argument("--every", type=int, default=None, help="take every Nth scan of each set (default: 13 and 23)")
    args = parser.parse_args(argv)
    if args.write:
        snapshot(args.write, args.every)
    else:
        print(json.dumps(compare(*args.compare), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
