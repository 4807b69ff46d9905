"""``python -m benchmarks.experiments.crop_variants``: does the framing of the head crop matter at
inference, and would averaging several framings help?

The head crop (``core.preprocess.head_box``, 5 % margin, the box stretched to a square input)
moved the pituitary series by 23 points when it was introduced, so the network is sensitive to
framing. This study serves one network in float32 on several views of every scan: the served
crop, its mirror image, the crop with other margins, and a square box (the head's box widened to
a square around its centre, so that the head keeps its aspect ratio). It scores each view alone
and a fixed list of averages of their calibrated probabilities (test-time augmentation), with
the figures of ``benchmarks.experiments.ensemble`` (the same scans, the "no tumour" floor fitted
on each candidate's validation probabilities, the low-confidence flag of the card, no gate).
External-dev fits nothing: a view is chosen on validation first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks.experiments import emit
from benchmarks.experiments.ensemble import Scans, collect, score
from core import Classifier, load_model
from core.constants import data_dir, default_weights, external_dir
from core.model import softmax
from core.preprocess import HEAD_MARGIN, head_box, input_array, to_grayscale
from core.scan import read_scan
from train.config import TrainConfig

__all__ = ["CANDIDATES", "VIEWS", "square_box", "view_probabilities", "main"]


def square_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``box`` widened to a square about its centre (the shorter side grows; Pillow fills any
    part outside the image with black)."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    x0 = int(round((left + right - side) / 2))
    y0 = int(round((top + bottom - side) / 2))
    return x0, y0, x0 + side, y0 + side


def _crop(margin: float = HEAD_MARGIN, square: bool = False, mirror: bool = False) -> Callable[[Image.Image], Image.Image]:
    def view(grey: Image.Image) -> Image.Image:
        box = head_box(grey, margin)
        if box != (0, 0, *grey.size):
            grey = grey.crop(square_box(box) if square else box)
        return ImageOps.mirror(grey) if mirror else grey

    return view


#: name -> grey PIL scan -> the image the network sees before resizing. "served" is the app's.
VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "served": _crop(),
    "mirror": _crop(mirror=True),
    "margin 0 %": _crop(0.0),
    "margin 10 %": _crop(0.10),
    "margin 15 %": _crop(0.15),
    "square box": _crop(square=True),
}

#: Each view alone, then averages of views (test-time augmentation).
CANDIDATES: tuple[tuple[str, ...], ...] = (
    *((name,) for name in VIEWS),
    ("served", "mirror"),
    ("served", "margin 10 %"),
    ("served", "square box"),
    ("served", "margin 0 %", "margin 10 %"),
    ("margin 0 %", "margin 10 %", "margin 15 %"),
    ("served", "mirror", "margin 0 %", "margin 10 %"),
    tuple(VIEWS),
)


def view_probabilities(
    model: Classifier, paths: Sequence[Path], views: Sequence[str], batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Calibrated float32 probabilities (N, classes) of ``model``'s PyTorch network on each named
    view of every scan; each scan is read once for all views."""
    found: dict[str, list[np.ndarray]] = {name: [] for name in views}
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            greys = [to_grayscale(read_scan(p)) for p in paths[start:start + batch_size]]
            for name in views:
                batch = input_array([VIEWS[name](g) for g in greys], model.image_size, model.card["mean"], model.card["std"])
                logits = model.network(torch.from_numpy(batch).to(model.device)).cpu().numpy()
                found[name].append(softmax(logits, model.temperature))
    return {name: np.concatenate(parts) for name, parts in found.items()}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.crop_variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help="safetensors weights with their model card, trained with --crop-head (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle dataset (default: $BTMRI_DATA)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--audit", type=Path, default=None, help="audit report for the leak-free subset (default: assets/audit.json)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights, device="cpu")
    if not model.crop_head:
        raise SystemExit(f"{str(args.weights or 'the shipped model')!r} was trained without --crop-head; its card has crop_head=False")
    config = TrainConfig.from_dict(model.card["training"]["config"]).replace(data_dir=args.data_dir or data_dir())
    scans: Scans = collect(config, args.external or external_dir(), args.audit)
    probs = view_probabilities(model, scans.paths, list(VIEWS))
    low_confidence = model.rules.low_confidence
    result: dict[str, Any] = {
        "weights": str(args.weights or default_weights()),
        "low_confidence_below": low_confidence,
        "n_images": {g: int((scans.groups == g).sum()) for g in ("validation", "testing", "external")},
        "candidates": [{"views": list(views)} | score(np.mean([probs[v] for v in views], axis=0), scans, low_confidence)
                       for views in CANDIDATES],
    }
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
