"""``python -m train.evaluate --data-dir DIR/Testing [--weights PATH]``: every metric, as JSON.

The model is loaded with :func:`core.load_model`, so it is evaluated through exactly the
preprocessing the app uses. The JSON holds one report per evaluation (layout in
:mod:`train.metrics`) under ``"evaluations"``:

- ``testing``: the folder given, as it is;
- ``testing_tta``: the same with horizontal-flip test-time augmentation (``--tta``);
- ``testing_perturbed``: accuracy under each perturbation of :data:`train.presets.PERTURBATIONS`
  (``--perturb``), next to the clean figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.constants import CLASS_NAMES, data_dir
from core.model import load_model

from . import metrics
from .data import ScanFolder, class_counts, find_samples, fingerprint
from .engine import predict_probs
from .presets import PERTURBATIONS, ClassificationPresetEval, perturbation

__all__ = ["evaluate_samples", "get_args_parser", "main"]

logger = logging.getLogger(__name__)


def _probs(model, samples, transform, device, batch_size, workers, tta=False, progress=False, desc="eval"):
    loader = DataLoader(ScanFolder(samples, transform), batch_size=batch_size, num_workers=workers)
    return predict_probs(model, loader, device, desc=desc, progress=progress, tta_flip=tta)


class _Perturbed:
    def __init__(self, name: str, transform):
        self.perturb = perturbation(name)
        self.transform = transform

    def __call__(self, image):
        return self.transform(self.perturb(image))


def evaluate_samples(
    model: torch.nn.Module,
    samples,
    image_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 2,
    tta: bool = False,
    perturb: bool = True,
    progress: bool = False,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Reports for ``samples`` (clean, optionally flip-TTA, and accuracy under perturbations)."""
    device = torch.device(device)
    transform = ClassificationPresetEval(image_size)
    probs, targets = _probs(model, samples, transform, device, batch_size, workers, progress=progress, desc="test")
    out: dict[str, Any] = {
        "class_names": list(CLASS_NAMES),
        "n_images": len(samples),
        "counts": class_counts(samples),
        "data_fingerprint": fingerprint(samples, root) if root is not None else None,
        "evaluations": {"testing": metrics.report(probs, targets)},
    }
    if tta:
        tta_probs, _ = _probs(model, samples, transform, device, batch_size, workers, tta=True, progress=progress, desc="test+flip")
        out["evaluations"]["testing_tta"] = metrics.report(tta_probs, targets)
    if perturb:
        perturbed: dict[str, float] = {"clean": out["evaluations"]["testing"]["accuracy"]}
        for name in PERTURBATIONS:
            p, t = _probs(model, samples, _Perturbed(name, transform), device, batch_size, workers, progress=progress, desc=name)
            perturbed[name] = float((p.argmax(1) == t).mean())
        names = [n for n in perturbed if n != "clean"]
        perturbed["mean_perturbed"] = float(np.mean([perturbed[n] for n in names]))
        out["testing_perturbed"] = perturbed
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate weights on a folder of class sub-folders (e.g. DIR/Testing); prints JSON.",
    )
    parser.add_argument("--data-dir", type=Path, default=data_dir() / "Testing", help="folder with one sub-folder per class (default: $BTMRI_DATA/Testing)")
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    parser.add_argument("--perturb", action="store_true", help="also report accuracy under each perturbation")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON to this file")
    parser.add_argument("--max-per-class", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    folder = args.data_dir
    if (folder / "Testing").is_dir():
        folder = folder / "Testing"
    samples = find_samples(folder)
    if args.max_per_class:
        from .train import _limit

        samples = _limit(samples, args.max_per_class)
    classifier = load_model(args.weights, device=args.device)
    result = evaluate_samples(
        classifier.network, samples, classifier.image_size, classifier.device, args.batch_size,
        args.workers, tta=args.tta, perturb=args.perturb, root=folder,
    )
    result["weights_sha256"] = classifier.card["weights_sha256"]
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(get_args_parser().parse_args(sys.argv[1:]))
