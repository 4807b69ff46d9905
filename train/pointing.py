"""``python -m train.pointing``: does the Grad-CAM heatmap fall on the tumour?

The pointing game (Zhang et al., 2018) on an extra source with tumour masks (TCGA-LGG: each
slice's mask serves its three sequences). A glioma slice is a hit when the heatmap's maximum
lies inside the tumour mask, grown by ``--tolerance`` pixels (15 in the original game, given at
the scan's own size). Only the patients held out of training count: the extra source is split
by patient exactly as ``python -m train`` split it (seed and fraction from the model card).
The heatmap explains the glioma class, whatever the prediction, and is reported per sequence
next to the share of the mask in the image (the hit rate of a random point).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from core.constants import EVALUATION_NAME, extra_dir
from core.model import Classifier, load_model
from core.scan import read_scan

from .config import TrainConfig
from .data import Sample, find_extra_samples, patient_split

__all__ = ["mask_path", "pointing_game", "get_args_parser", "main"]

logger = logging.getLogger(__name__)


def mask_path(sample: Sample) -> Path:
    """``masks/PATIENT_SLICE_mask.png`` for ``glioma/PATIENT_SLICE_SEQUENCE.jpg``."""
    stem = sample.path.stem.rsplit("_", 1)[0]
    return sample.path.parent.parent / "masks" / f"{stem}_mask.png"


def _grown(mask: Image.Image, tolerance: int) -> np.ndarray:
    if tolerance > 0:
        mask = mask.filter(ImageFilter.MaxFilter(2 * tolerance + 1))
    return np.asarray(mask) > 127


def pointing_game(model: Classifier, samples: list[Sample], tolerance: int = 15) -> dict[str, Any]:
    """Hits of the glioma heatmap's maximum inside the grown masks of ``samples``."""
    rows = []
    for sample in samples:
        image = read_scan(sample.path)
        mask = Image.open(mask_path(sample)).convert("L")
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        inside = _grown(mask, tolerance)
        heatmap = model.explain(image, target="glioma")
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        rows.append((sample.sequence or "unknown", bool(inside[y, x]), float(inside.mean())))

    def summary(selected: list[tuple[str, bool, float]]) -> dict[str, Any]:
        return {
            "n_images": len(selected),
            "hit_rate": float(np.mean([r[1] for r in selected])) if selected else None,
            "random_hit_rate": float(np.mean([r[2] for r in selected])) if selected else None,
        }

    return {
        "method": "pointing game: the glioma Grad-CAM heatmap's maximum inside the tumour mask grown by "
        f"{tolerance} px; glioma slices of the patients held out of training",
        "tolerance_px": tolerance,
        "overall": summary(rows),
        "sequences": {seq: summary([r for r in rows if r[0] == seq]) for seq in sorted({r[0] for r in rows})},
    }


def held_out_gliomas(folder: Path, card: dict[str, Any]) -> tuple[list[Sample], int]:
    """The glioma slices of ``folder``'s patients that training held out, and their patients."""
    config = TrainConfig.from_dict(card["training"]["config"])
    samples = find_extra_samples(folder)
    _, val = patient_split(samples, config.val_fraction, config.seed)
    gliomas = [s for s in val if s.class_name == "glioma" and mask_path(s).is_file()]
    return gliomas, len({s.patient for s in gliomas})


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.pointing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--extra-data", type=Path, default=None, help="extra source with masks/ (default: $BTMRI_EXTRA)")
    parser.add_argument("--tolerance", type=int, default=15, help="pixels by which each mask is grown")
    parser.add_argument(
        "--merge-into", type=Path, default=None,
        help=f"store the result under 'pointing_game' in this evaluation file (e.g. assets/{EVALUATION_NAME})",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.tolerance < 0:
        raise SystemExit(f"--tolerance must be at least 0, got {args.tolerance}.")
    folder = args.extra_data or extra_dir()
    model = load_model(args.weights)
    trained_on = [Path(p).name for p in model.card["training"]["config"].get("extra_data") or ()]
    samples, patients = held_out_gliomas(folder, model.card)
    result = pointing_game(model, samples, args.tolerance)
    result.update(source=folder.name, patients=patients, model_trained_on_source=folder.name in trained_on,
                  weights_sha256=model.card["weights_sha256"])
    if args.merge_into is not None:
        data = json.loads(args.merge_into.read_text(encoding="utf-8"))
        data["pointing_game"] = result
        args.merge_into.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(get_args_parser().parse_args(sys.argv[1:]))
