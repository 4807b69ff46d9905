"""``python -m benchmarks.experiments.negative_floor``: what the floor of "no tumour" answers reads.

A "no tumour" answer under a floor fitted on validation is flagged ("not confident enough to
rule out a tumour"). The floor can read one of two values of the answer: the calibrated "no
tumour" probability (the rule of the model cards written before 2026-12-06) or the answer
cosine (``core.rules.answer_cosine``: how cleanly the centred logits point at "no tumour"
rather than at one tumour class). For each set of weights this study serves the validation
split the model was selected on, the official Testing split and the external development set
in float32, fits both floors on validation by one rule (``train.calibrate.choose_negative_floor``:
the lowest floor at which the validation "no tumour" answers above it are right at least 98 % of
the time), keeps every other review state as served (the gate, low confidence), and reports for
each floor the share of scans flagged, the accuracy of the unflagged answers per source, and the
share of the other lesion types called "no tumour" without a flag. External-dev fits nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import emit
from core import load_model, read_scan
from core.constants import CLASS_NAMES, NEGATIVE_CLASS, OTHER_LESION_CLASS, default_weights, external_dir
from core.rules import answer_cosine
from train.calibrate import COSINE_FLOOR_GRID, NEGATIVE_FLOOR_GRID, choose_negative_floor
from train.config import TrainConfig
from train.external import find_external
from train.splits import load_data

NEG = CLASS_NAMES.index(NEGATIVE_CLASS)
#: The value each floor reads, and the grid it is chosen from.
FLOORS = {
    "confidence": (lambda probs: probs[:, NEG], NEGATIVE_FLOOR_GRID),
    "cosine": (answer_cosine, COSINE_FLOOR_GRID),
}


def _served(model, paths: Sequence[Path], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (N, classes) and the review states other than the floor (N,)."""
    predictions = model.predict_batch([read_scan(p) for p in paths], batch_size=batch_size)
    probs = np.array([[p.probabilities[c] for c in CLASS_NAMES] for p in predictions])
    other_states = np.array([
        (not p.is_brain_mri) or p.outside_training or p.confidence < model.rules.low_confidence for p in predictions
    ])
    return probs, other_states


def _figures(probs: np.ndarray, states: np.ndarray, truths: np.ndarray, value: np.ndarray, floor: float) -> dict[str, Any]:
    answers = probs.argmax(1)
    flagged = states | ((answers == NEG) & (value < floor))
    labelled = truths >= 0
    shown = labelled & ~flagged
    out: dict[str, Any] = {"n_images": len(truths), "flagged": float(flagged.mean())}
    if labelled.any():
        out["accuracy"] = float((answers[labelled] == truths[labelled]).mean())
        out["unflagged_accuracy"] = float((answers[shown] == truths[shown]).mean()) if shown.any() else None
    other = truths == -1
    if other.any():
        out["other_notumor_unflagged"] = float((other & (answers == NEG) & ~flagged).sum() / other.sum())
    return out


def measure(weights: Path | None, data_dir: Path | None, external: Path | None, batch_size: int = 32) -> dict[str, Any]:
    model = load_model(weights, device="cpu")
    config = TrainConfig.from_dict(model.card["training"]["config"])
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    _, val, test = load_data(config)
    groups: dict[str, tuple[list[Path], list[int]]] = {
        "validation": ([s.path for s in val], [s.label for s in val]),
        "testing": ([s.path for s in test], [s.label for s in test]),
    }
    root = external or external_dir()
    if root.is_dir():
        scans = find_external(root)
        for source in sorted({s.source for s in scans}):
            mine = [s for s in scans if s.source == source]
            # -1: a lesion of another type, which has no right class among the four.
            groups[f"external/{source}"] = (
                [s.path for s in mine], [-1 if s.label == OTHER_LESION_CLASS else CLASS_NAMES.index(s.label) for s in mine]
            )
    served = {name: (*_served(model, paths, batch_size), np.array(truths)) for name, (paths, truths) in groups.items()}
    val_probs, _, val_truths = served["validation"]
    out: dict[str, Any] = {"weights": str(weights or default_weights()), "weights_sha256": model.card["weights_sha256"],
                           "low_confidence_below": model.rules.low_confidence}
    for rule, (value_of, grid) in FLOORS.items():
        floor, fit = choose_negative_floor(val_probs, val_truths, NEG, grid=grid, values=value_of(val_probs))
        if floor is None:
            out[rule] = {"floor": None, "fit": fit}
            continue
        out[rule] = {"floor": floor, "fit": fit} | {
            name: _figures(probs, states, truths, value_of(probs), floor) for name, (probs, states, truths) in served.items()
        }
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.negative_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, action="append", default=None,
                        help="safetensors weights (repeatable; default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle dataset (default: the model card's)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)
    result: list[dict[str, Any]] = []
    for weights in args.weights or [None]:
        result.append(measure(weights, args.data_dir, args.external))
        if args.output is not None:  # after each model: a long study keeps what it has measured
            emit(result, args.output)
    if args.output is None:
        emit(result, None)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
