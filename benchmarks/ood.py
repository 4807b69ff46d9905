"""``python -m benchmarks.ood``: how often the out-of-distribution gate rejects real and non-MRI images.

Runs the shipped model (or ``--weights``) through ``core``, exactly as the app does, on:

- the Testing scans (read with :func:`core.read_scan`): share rejected (target: at most 1%);
- the non-MRI set of :mod:`train.non_mri`: share rejected, overall and per kind
  (target: at least 95%).

Prints a table (and writes JSON with ``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import load_model, read_scan
from core.constants import data_dir
from core.model import Classifier
from core.results import flag_text

from train.data import find_samples, limit_per_class
from train.non_mri import non_mri_images

logger = logging.getLogger(__name__)


def _testing_files(root: Path, max_per_class: int | None) -> list[Path]:
    testing = root / "Testing"
    if not testing.is_dir():
        raise SystemExit(f"No Testing folder under {str(root)!r}; pass --data-dir.")
    samples = find_samples(testing)
    return [s.path for s in (limit_per_class(samples, max_per_class) if max_per_class else samples)]


def measure(model: Classifier, root: Path, max_per_class: int | None = None, seed: int = 1) -> dict[str, Any]:
    """Rejection rates on Testing scans and on the non-MRI set, with the reasons for Testing.

    ``seed`` draws the non-MRI set; the gate's reject threshold is fitted on seed 0
    (``train.ood.NON_MRI_FIT_SEED``), so the default measures it on other images."""
    files = _testing_files(root, max_per_class)
    predictions = model.predict_batch([read_scan(f) for f in files])
    rejected_scans = [(f, p) for f, p in zip(files, predictions) if not p.is_brain_mri]
    items = non_mri_images(seed=seed, data_root=root)
    non_mri = model.predict_batch([image for _, image in items])
    per_kind: dict[str, list[bool]] = defaultdict(list)
    for (kind, _), prediction in zip(items, non_mri):
        per_kind[kind].append(not prediction.is_brain_mri)
    return {
        "testing": {
            "n_images": len(files),
            "rejected": len(rejected_scans) / len(files),
            "rejected_files": [f"{f.parent.name}/{f.name}: {flag_text(p.flags[0])}" for f, p in rejected_scans],
            "flagged": sum(bool(p.flags) for p in predictions) / len(files),
        },
        "non_mri": {
            "n_images": len(items),
            "rejected": sum(not p.is_brain_mri for p in non_mri) / len(items),
            "per_kind": {kind: {"n_images": len(v), "rejected": sum(v) / len(v)} for kind, v in sorted(per_kind.items())},
        },
    }


def format_table(result: dict[str, Any]) -> str:
    testing, non_mri = result["testing"], result["non_mri"]
    lines = [
        f"Testing scans rejected: {100 * testing['rejected']:.2f}% of {testing['n_images']} (target <= 1%)",
        f"Testing scans with any review flag: {100 * testing['flagged']:.2f}%",
        f"Non-MRI images rejected: {100 * non_mri['rejected']:.1f}% of {non_mri['n_images']} (target >= 95%)",
        f"  {'kind':<16}{'images':>7}{'rejected':>10}",
    ]
    for kind, row in non_mri["per_kind"].items():
        lines.append(f"  {kind:<16}{row['n_images']:>7}{100 * row['rejected']:>9.1f}%")
    if testing["rejected_files"]:
        lines.append("Rejected Testing scans:")
        lines += [f"  {line}" for line in testing["rejected_files"]]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ood", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=data_dir(), help="folder holding Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--max-per-class", type=int, default=None, help="use at most N Testing scans per class")
    parser.add_argument("--seed", type=int, default=1, help="seed of the non-MRI set (the gate is fitted on seed 0)")
    parser.add_argument("--output", type=Path, default=None, help="also write the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    model = load_model(args.weights, device="cpu")
    result = measure(model, args.data_dir, args.max_per_class, args.seed)
    print(format_table(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
