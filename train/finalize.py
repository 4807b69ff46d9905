"""The steps after training: data description, Testing evaluation, model card, artifacts.

``python -m train`` ends with :func:`finalize`. The same steps can be run on weights that were
trained elsewhere (for example on a GPU machine without the Testing folder)::

    python -m train.finalize --weights runs/gpu/model.safetensors --data-dir DIR --output assets

The validation split is rebuilt from the training configuration stored in the model card
(split kind, seed, fraction), so the steps that need validation data see the very scans
the model was selected on, and Testing is evaluated once, at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from core.constants import EVALUATION_NAME, HISTORY_NAME, WEIGHTS_NAME, data_dir
from core.weights import load_weights, save_weights

from .data import class_counts, fingerprint, split_dirs

__all__ = ["finalize", "get_args_parser", "main"]

logger = logging.getLogger(__name__)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def finalize(
    model: torch.nn.Module,
    card: dict[str, Any],
    args: argparse.Namespace,
    output: Path,
    device: torch.device,
    history: list[dict[str, Any]] | None = None,
    progress: bool = False,
    splits: tuple[list, list, list] | None = None,
) -> dict[str, Any]:
    """Describe the data, evaluate on Testing, write weights, card, history and evaluation.

    ``args`` holds the training options (``data_dir``, ``split``, ``seed``, ``val_fraction``,
    ``audit``, ``batch_size``, ``workers``, ``tta``, ``no_test``, ``max_per_class``).
    ``splits``: the (train, validation, test) samples when already known; else rebuilt.
    Returns the card as written.
    """
    from .train import load_data

    output.mkdir(parents=True, exist_ok=True)
    train_samples, val_samples, test_samples = splits or load_data(args)
    card = dict(card)
    card["data"] = {
        "source": "Kaggle Brain Tumor MRI Dataset (Nickparvar): figshare + SARTAJ + Br35H",
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "test_images": len(test_samples),
        "train_counts": class_counts(train_samples),
        "val_counts": class_counts(val_samples),
        "test_counts": class_counts(test_samples),
        "split": args.split,
        "fingerprint_training": fingerprint(sorted(train_samples + val_samples, key=lambda s: str(s.path)), args.data_dir),
        "fingerprint_testing": fingerprint(test_samples, args.data_dir) if test_samples else None,
    }
    if history is not None:
        write_json(output / HISTORY_NAME, {"class_names": card["class_names"], "epochs": history})
        best = card["training"]["best_epoch"]
        card["validation"] = history[best - 1]["val"]
    model.eval()
    if test_samples:
        from .evaluate import evaluate_samples, load_leak_free

        evaluation = evaluate_samples(
            model, test_samples, card["image_size"], device, args.batch_size * 2, args.workers,
            tta=args.tta, progress=progress, root=split_dirs(args.data_dir)[1],
            leak_free=load_leak_free(args.audit),
        )
        write_json(output / EVALUATION_NAME, evaluation)
        card["metrics"] = {
            name: {"n_images": report["n_images"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
            for name, report in evaluation["evaluations"].items()
        }
        testing = evaluation["evaluations"]["testing"]
        logger.info(
            "Testing: accuracy %.4f, macro F1 %.4f (%d images)",
            testing["accuracy"], testing["macro_f1"], testing["n_images"],
        )
    return save_weights(model, output / WEIGHTS_NAME, card)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.finalize",
        description="Run the post-training steps (evaluation, model card, artifacts) on trained weights.",
    )
    parser.add_argument("--weights", type=Path, required=True, help="safetensors weights with their model_card.json")
    parser.add_argument("--history", type=Path, default=None, help="history.json of the training run (default: beside the weights)")
    parser.add_argument("--data-dir", type=Path, default=data_dir(), help="folder holding Training/ and Testing/")
    parser.add_argument("--output", type=Path, required=True, help="folder to write the artifacts to (e.g. assets)")
    parser.add_argument("--audit", type=Path, default=None, help="audit report (default: assets/audit.json)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from core.model import build_network

    from .train import get_args_parser as train_parser

    state, card = load_weights(args.weights)
    config = dict(card["training"]["config"])
    train_args = train_parser().parse_args([])
    for key, value in config.items():
        setattr(train_args, key, value)
    train_args.data_dir = args.data_dir
    train_args.audit = args.audit
    train_args.workers = args.workers
    train_args.no_test = False
    train_args.tta = True
    history_path = args.history or args.weights.with_name(HISTORY_NAME)
    history = json.loads(history_path.read_text())["epochs"] if history_path.is_file() else None
    device = torch.device(args.device)
    model = build_network(card["arch"], num_classes=len(card["class_names"]))
    model.load_state_dict(state)
    model = model.to(device)
    if history is None:
        logger.warning("no history.json found at %s", history_path)
    return finalize(model, card, train_args, args.output, device, history)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
