"""``python -m benchmarks.experiments.mirror_flag``: what the mirror-disagreement flag adds.

With ``mirror_check`` (on with ``tta``; it was on in ``predict`` until issue 18) a scan runs
twice, as it is and mirrored, and is flagged when the two get different classes. This study
measures, for the served model, what that flag adds to the other
review states (low confidence, outside the training data, not a brain MRI): how many scans only
it flags, and how many of those are wrong (errors caught per scan flagged), on the validation
split the model was selected on, the official Testing split and each source of the external
development set. For the ``other`` lesions, whose every answer is wrong, the error that matters
is "no tumour", the most dangerous answer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.experiments import emit
from core import load_model, read_scan
from core.constants import CLASS_NAMES, OTHER_LESION_CLASS, external_dir
from train.config import TrainConfig
from train.external import find_external
from train.splits import load_data

MIRROR_FLAG_START = "the mirror image of the scan is classified differently"


def _summary(truths: Sequence[str], predictions: Sequence[Any]) -> dict[str, Any]:
    n = len(truths)
    mirror = [any(f.startswith(MIRROR_FLAG_START) for f in p.flags) for p in predictions]
    other = [any(not f.startswith(MIRROR_FLAG_START) for f in p.flags) for p in predictions]
    wrong = [
        (p.label == "notumor") if t == OTHER_LESION_CLASS else (p.label != t or not p.is_brain_mri)
        for t, p in zip(truths, predictions)
    ]
    only = [m and not o for m, o in zip(mirror, other)]
    caught_only = sum(w and o_ for w, o_ in zip(wrong, only))
    errors_unflagged_without_mirror = sum(w and not o for w, o in zip(wrong, other))
    return {
        "n_images": n,
        "errors": sum(wrong),
        "mirror_flagged": sum(mirror) / n,
        "only_mirror_flagged": sum(only) / n,
        "errors_caught_only_by_mirror": caught_only,
        "errors_caught_per_scan_flagged_only_by_mirror": caught_only / sum(only) if any(only) else None,
        "share_of_otherwise_unflagged_errors_caught": (
            caught_only / errors_unflagged_without_mirror if errors_unflagged_without_mirror else None
        ),
        "error_rate_unflagged_scans": sum(w and not (m or o) for w, m, o in zip(wrong, mirror, other))
        / max(1, sum(not (m or o) for m, o in zip(mirror, other))),
    }


def measure(weights: Path | None, data_dir: Path | None, external: Path | None, batch_size: int = 32) -> dict[str, Any]:
    model = load_model(weights, device="cpu", mirror_check=True)
    config = TrainConfig.from_dict(model.card["training"]["config"])
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    _, val, test = load_data(config)
    groups: dict[str, tuple[list[Path], list[str]]] = {
        "validation": ([s.path for s in val], [CLASS_NAMES[s.label] for s in val]),
        "testing": ([s.path for s in test], [CLASS_NAMES[s.label] for s in test]),
    }
    root = external or external_dir()
    if root.is_dir():
        scans = find_external(root)
        for source in sorted({s.source for s in scans}):
            mine = [s for s in scans if s.source == source]
            groups[f"external/{source}"] = ([s.path for s in mine], [s.label for s in mine])
    out: dict[str, Any] = {"weights_sha256": model.card["weights_sha256"]}
    for name, (paths, truths) in groups.items():
        predictions = model.predict_batch([read_scan(p) for p in paths], batch_size=batch_size)
        out[name] = _summary(truths, predictions)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.mirror_flag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle dataset (default: the model card's)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)
    result = measure(args.weights, args.data_dir, args.external)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
