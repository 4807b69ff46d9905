"""``python -m train.evaluate --data-dir DIR/Testing [--weights PATH]``: every metric, as JSON.

The model is loaded with :func:`core.load_model` and scored on the probabilities the app serves
(the model card's temperature applied): its network through the app's runtime for the Testing
reports, and whole predictions (gate and flags included) for ``--external``. The JSON holds one
report per evaluation (layout in :mod:`train.metrics`) under ``"evaluations"``:

- ``testing``: the folder given, as it is;
- ``testing_tta``: the same with horizontal-flip test-time augmentation (``--tta``);
- ``testing_leak_free`` (and ``testing_leak_free_tta``): the Testing scans that have no near
  duplicate in Training according to the audit report (``--audit``, default
  ``assets/audit.json``; see :mod:`train.audit`), with their per-class sizes in
  ``leak_free_counts``;
- ``testing_perturbed``: accuracy under each perturbation of :data:`train.presets.PERTURBATIONS`
  (``--perturb``), next to the clean figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from core.constants import AUDIT_NAME, CLASS_NAMES, assets_dir, data_dir
from core.model import load_model

from core.runtime import Runtime

from . import metrics
from .data import ScanFolder, class_counts, find_samples, fingerprint, limit_per_class
from .engine import predict_logits, served_probs
from .presets import PERTURBATIONS, ClassificationPresetEval, perturbation

__all__ = ["evaluate_samples", "get_args_parser", "main"]

logger = logging.getLogger(__name__)


def _loader(samples, transform, batch_size, workers) -> DataLoader:
    return DataLoader(ScanFolder(samples, transform), batch_size=batch_size, num_workers=workers)


class _Perturbed:
    def __init__(self, name: str, transform):
        self.perturb = perturbation(name)
        self.transform = transform

    def __call__(self, image):
        return self.transform(self.perturb(image))


def evaluate_samples(
    runtime: Runtime,
    samples,
    image_size: int,
    batch_size: int = 64,
    workers: int = 2,
    tta: bool = False,
    perturb: bool = True,
    progress: bool = False,
    root: str | Path | None = None,
    leak_free: set[str] | None = None,
    temperature: float = 1.0,
    crop_head: bool = False,
) -> dict[str, Any]:
    """Reports for ``samples`` (clean, optionally flip-TTA, and accuracy under perturbations).

    Every report scores the probabilities the app serves: softmax of the logits over the model
    card's ``temperature`` (TTA: the mean of the scan's and its mirror image's). With a
    temperature other than 1 the clean report also keeps its reliability before scaling
    (``calibration_before``; ``calibration`` and ``calibration_after`` are after).
    ``leak_free``: names (posix, relative to ``root``'s parent, as in the audit report) of the
    samples that form the leak-free subset; its reports reuse the same predictions.
    """
    transform = ClassificationPresetEval(image_size, crop_head=crop_head)
    loader = _loader(samples, transform, batch_size, workers)
    logits, mirrored, targets = predict_logits(runtime, loader, desc="test", progress=progress, mirror=tta)
    probs = served_probs(logits, temperature=temperature)
    testing = metrics.report(probs, targets)
    testing["temperature"] = float(temperature)
    if temperature != 1.0:
        testing["calibration_before"] = metrics.calibration(served_probs(logits), targets)
        testing["calibration_after"] = testing["calibration"]
    out: dict[str, Any] = {
        "class_names": list(CLASS_NAMES),
        "n_images": len(samples),
        "counts": class_counts(samples),
        "data_fingerprint": fingerprint(samples, root) if root is not None else None,
        "evaluations": {"testing": testing},
    }
    tta_probs = served_probs(logits, mirrored, temperature) if mirrored is not None else None
    if tta_probs is not None:
        out["evaluations"]["testing_tta"] = metrics.report(tta_probs, targets)
    if leak_free is not None:
        if root is None:
            raise ValueError("root is needed to match samples with the audit report's names")
        mask = leak_free_mask([s.path for s in samples], Path(root).resolve().parent, leak_free)
        if not mask.any():
            logger.warning(
                "none of the %d scans in %s is in the audit's leak-free list (an audit of other "
                "data?): leak-free figures skipped", len(samples), root,
            )
            leak_free = None
    if leak_free is not None:
        subset = [s for s, keep in zip(samples, mask) if keep]
        out["leak_free_counts"] = class_counts(subset)
        out["evaluations"]["testing_leak_free"] = metrics.report(probs[mask], targets[mask])
        if tta_probs is not None:
            out["evaluations"]["testing_leak_free_tta"] = metrics.report(tta_probs[mask], targets[mask])
    if perturb:
        perturbed: dict[str, float] = {"clean": out["evaluations"]["testing"]["accuracy"]}
        for name in PERTURBATIONS:
            loader = _loader(samples, _Perturbed(name, transform), batch_size, workers)
            p, _, t = predict_logits(runtime, loader, desc=name, progress=progress)
            perturbed[name] = float((p.argmax(1) == t).mean())
            logger.info("perturbation %s: accuracy %.4f", name, perturbed[name])
        names = [n for n in perturbed if n != "clean"]
        perturbed["mean_perturbed"] = float(np.mean([perturbed[n] for n in names]))
        out["testing_perturbed"] = perturbed
    return out


def _merge(path: Path, name: str | None, result: dict[str, Any], card: dict[str, Any]) -> None:
    """Store ``result``'s Testing report in the evaluation file ``path`` under ``name``."""
    if not name:
        raise SystemExit("--merge-into needs --name, e.g. --name group_split_testing.")
    target = json.loads(path.read_text(encoding="utf-8"))
    if target.get("data_fingerprint") != result.get("data_fingerprint"):
        raise SystemExit(f"{str(path)!r} was computed on other Testing data; refusing to merge.")
    report = dict(result["evaluations"]["testing"])
    report["model"] = {
        "weights_sha256": card["weights_sha256"],
        "split": card["training"]["config"]["split"],
        "train_images": card.get("data", {}).get("train_images"),
    }
    target["evaluations"][name] = report
    path.write_text(json.dumps(target, indent=1) + "\n", encoding="utf-8")


def leak_free_mask(paths: Sequence[str | Path], kaggle_dir: str | Path, names: Collection[str] | None) -> np.ndarray:
    """Which of ``paths`` are on the audit's leak-free list ``names`` (posix names relative to the
    Kaggle folder ``kaggle_dir``, as ``Testing/glioma/Te-gl_0010.jpg``). Paths outside that
    folder, and every path when ``names`` is None, are not."""
    base = Path(kaggle_dir).resolve()
    found = np.zeros(len(paths), dtype=bool)
    if names is None:
        return found
    for i, path in enumerate(paths):
        resolved = Path(path).resolve()
        found[i] = resolved.is_relative_to(base) and resolved.relative_to(base).as_posix() in names
    return found


def load_leak_free(path: Path | None) -> set[str] | None:
    """The leak-free Testing names from an audit report; None when no report is available."""
    from .audit import leak_free_testing

    if path is None:
        path = assets_dir() / AUDIT_NAME
        if not path.is_file():
            logger.warning("no audit report at %s: leak-free figures skipped", path)
            return None
    if not Path(path).is_file():
        raise SystemExit(f"Audit report {str(path)!r} not found; run python -m train.audit first.")
    return leak_free_testing(path)


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
    parser.add_argument("--audit", type=Path, default=None, help="audit report for the leak-free subset (default: assets/audit.json when present)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON to this file")
    parser.add_argument(
        "--merge-into", type=Path, default=None,
        help="add this model's Testing report to an existing evaluation.json under --name "
        "(e.g. the group-strict model next to the shipped one)",
    )
    parser.add_argument("--name", default=None, help="key for --merge-into, e.g. group_split_testing")
    parser.add_argument(
        "--external", type=Path, default=None, metavar="DIR",
        help="instead of a class folder, evaluate scans from other sources laid out SOURCE/CLASS/FILE "
        "(e.g. ../shared/datasets/external-dev) through the app's predict: accuracy, recall, rejected, "
        "flagged and unflagged accuracy per source, class and sequence; CLASS 'other' for lesion types "
        "the model never learned",
    )
    parser.add_argument(
        "--series", type=Path, default=None, metavar="DIR",
        help="instead, evaluate whole series laid out like ../shared/datasets/external-dev-series (manifest.csv): "
        "series accuracy, flagged share and unflagged accuracy per source, class and sequence, seconds per series",
    )
    parser.add_argument("--max-per-class", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _write(result: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(result, indent=1)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    print(text)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.external is not None:
        return _main_external(args)
    if args.series is not None:
        from .series import evaluate_series

        classifier = load_model(args.weights, device=args.device)
        result = evaluate_series(classifier, args.series) | {"weights_sha256": classifier.card["weights_sha256"]}
        _write(result, args.output)
        return result
    folder = args.data_dir
    if (folder / "Testing").is_dir():
        folder = folder / "Testing"
    samples = find_samples(folder)
    if args.max_per_class:
        samples = limit_per_class(samples, args.max_per_class)
    classifier = load_model(args.weights, device=args.device)
    result = evaluate_samples(
        classifier.runtime, samples, classifier.image_size, args.batch_size,
        args.workers, tta=args.tta, perturb=args.perturb, root=folder,
        leak_free=load_leak_free(args.audit), temperature=classifier.temperature, crop_head=classifier.crop_head,
    )
    result["weights_sha256"] = classifier.card["weights_sha256"]
    if args.merge_into is not None:
        _merge(args.merge_into, args.name, result, classifier.card)
    _write(result, args.output)
    return result


def _main_external(args: argparse.Namespace) -> dict[str, Any]:
    from .external import ExternalScan, evaluate_external, find_external

    scans = find_external(args.external)
    classifier = load_model(args.weights, device=args.device)
    folder = args.data_dir / "Testing" if (args.data_dir / "Testing").is_dir() else args.data_dir
    reference = [ExternalScan(s.path, "testing", s.class_name, None) for s in find_samples(folder)] if folder.is_dir() else []
    leak_names = load_leak_free(args.audit) if reference else None
    leak_free = None
    if leak_names is not None:
        mask = leak_free_mask([s.path for s in reference], folder.resolve().parent, leak_names)
        leak_free = [s.path for s, keep in zip(reference, mask) if keep]
    result = evaluate_external(
        classifier, scans, root=args.external, batch_size=args.batch_size, reference=reference, leak_free=leak_free
    )
    result["weights_sha256"] = classifier.card["weights_sha256"]
    result["extra_data"] = [s["name"] for s in classifier.card.get("data", {}).get("sources", []) if s["name"] != "kaggle"]
    _write(result, args.output)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(get_args_parser().parse_args(sys.argv[1:]))
