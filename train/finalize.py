"""The steps after training: data description, calibration, out-of-distribution gate, Testing
evaluation, model card, artifacts.

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.constants import EVALUATION_NAME, HISTORY_NAME, NEGATIVE_CLASS, WEIGHTS_NAME, data_dir
from core.model import build_network
from core.ood import OOD_NAME, save_gate
from core.rules import LOW_CONFIDENCE, MIRROR_DISAGREES, WEAK_NEGATIVE, ReviewRules, answer_cosine
from core.runtime import ONNX_NAME, Runtime
from core.weights import load_weights, save_weights, write_model_card

from .calibrate import (
    COSINE_FLOOR_GRID,
    MIN_NEGATIVE_PRECISION,
    apply_temperature,
    calibration_summary,
    choose_confidence_threshold,
    choose_negative_floor,
    fit_temperature,
)
from .config import TrainConfig
from .data import class_counts, fingerprint, split_dirs
from .evaluate import evaluate_samples, load_leak_free
from .export import export_onnx, scoring_runtime
from .ood import (
    GATE_STAGES,
    NON_MRI_REJECT_RATE,
    VAL_REJECT_RATE,
    extract,
    fit_gate,
    fit_reject_threshold,
    non_mri_features,
    rejection_rate,
)
from .splits import load_data

__all__ = ["TrustResult", "finalize", "get_args_parser", "main", "trust_steps"]

logger = logging.getLogger(__name__)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class TrustResult:
    """What the calibration, gate and flag steps add to the model card and the evaluation."""

    card: dict[str, Any]
    #: Testing reliability reports before and after temperature scaling (None without Testing).
    testing_calibration: dict[str, Any] | None
    #: Testing rejection rates and flag rates (None without Testing).
    testing_trust: dict[str, Any] | None


def _flag_rates(outputs, temperature: float, rules: ReviewRules) -> dict[str, float]:
    """Shares of a split flagged for low confidence, a weak "no tumour" answer or mirror
    disagreement (``core.rules``, on the scans as they are), and their accuracy."""
    probs = apply_temperature(outputs.logits, temperature)
    correct = probs.argmax(1) == outputs.targets
    mirror = apply_temperature(outputs.mirror_logits, temperature) if outputs.mirror_logits is not None else None
    masks = rules.masks(probs, plain=probs, mirror=mirror)
    low, weak = masks[LOW_CONFIDENCE], masks[WEAK_NEGATIVE]
    rates = {"low_confidence": float(low.mean()), "accuracy_flagged_low": float(correct[low].mean()) if low.any() else None}
    if rules.negative_floor is not None:
        rates.update(weak_negative=float(weak.mean()), accuracy_flagged_weak_negative=float(correct[weak].mean()) if weak.any() else None)
    rates["accuracy_not_flagged"] = float(correct[~(low | weak)].mean()) if (~(low | weak)).any() else None
    if mirror is not None:
        disagree = masks[MIRROR_DISAGREES]
        flagged = low | weak | disagree
        rates.update(
            mirror_disagreement=float(disagree.mean()),
            any_flag=float(flagged.mean()),
            errors_flagged=float(flagged[~correct].mean()) if (~correct).any() else None,
        )
    return rates


def trust_steps(
    runtime: Runtime,
    card: dict[str, Any],
    config: TrainConfig,
    output: Path,
    splits: tuple[list, list, list],
    progress: bool = False,
) -> TrustResult:
    """Temperature (validation), out-of-distribution gate (Training; threshold on validation),
    low-confidence threshold (validation); measured on Testing, which fits nothing."""

    train_samples, val_samples, test_samples = splits
    if not val_samples:
        raise ValueError("Calibration and the out-of-distribution gate need validation scans; the split gave none.")
    size, batch, crop = card["image_size"], config.batch_size * 2, bool(card.get("crop_head", False))
    train_out = extract(runtime, train_samples, size, batch, config.workers, progress, "features: train", crop_head=crop)
    val_out = extract(runtime, val_samples, size, batch, config.workers, progress, "features: validation", mirror=True, crop_head=crop)
    temperature = fit_temperature(val_out.logits, val_out.targets)
    val_cal = calibration_summary(val_out.logits, val_out.targets, temperature)
    gate = fit_gate(train_out.features, train_out.targets, val_out.features, len(card["class_names"]))
    gate = fit_reject_threshold(gate, non_mri_features(runtime, size, crop))
    sha = save_gate(gate, output / OOD_NAME, {"arch": str(card["arch"]), "image_size": str(size)})
    val_probs = apply_temperature(val_out.logits, temperature)
    low_confidence = choose_confidence_threshold(val_probs.max(1))
    negative_index = list(card["class_names"]).index(NEGATIVE_CLASS)
    negative_floor, floor_fit = choose_negative_floor(
        val_probs, val_out.targets, negative_index, grid=COSINE_FLOOR_GRID, values=answer_cosine(val_probs)
    )
    rules = ReviewRules(low_confidence=low_confidence, negative_floor=negative_floor, class_names=tuple(card["class_names"]))
    calibration = {
        "method": "temperature scaling: one T minimising the validation cross-entropy (L-BFGS on log T)",
        "validation": {"n_images": len(val_samples), "ece_before": val_cal["ece_before"], "ece_after": val_cal["ece_after"]},
    }
    ood = {
        "file": OOD_NAME,
        "sha256": sha,
        "method": "Mahalanobis distance of the per-channel mean and std of network blocks "
        f"{list(gate.stages)} to the nearest Training class mean (shared Ledoit-Wolf covariance), "
        "plus image checks (blank or near-constant, coloured, extreme aspect ratio)",
        "stages": list(gate.stages),
        "threshold": gate.threshold,
        "threshold_rule": f"{1 - VAL_REJECT_RATE:.1%} quantile of the validation distances: above it a scan "
        "is outside the training data (flagged, still classified)",
        "reject_threshold": gate.reject_threshold,
        "reject_threshold_rule": f"{1 - NON_MRI_REJECT_RATE:.0%} quantile of the distances of the generated non-MRI "
        "images (train.non_mri, seed 0) that pass the image checks: above it an input is not a brain MRI",
        "train_images": len(train_samples),
        "training_rejected_by_image_checks": float(train_out.image_rejected.mean()),
        "validation_rejected": rejection_rate(gate, val_out),
    }
    uncertainty = {
        "low_confidence_below": low_confidence,
        "rule": "highest of 0.50-0.90 (step 0.05) flagging at most 5% of the validation scans",
        "notumor_cosine_below": negative_floor,
        "notumor_rule": "lowest of 0.500-0.999 (step 0.001) at which the validation 'no tumour' answers with at least "
        "that answer cosine (core.rules.answer_cosine: the cosine between the centred logits and the answer's "
        f"centred one-hot vector) are right at least {MIN_NEGATIVE_PRECISION:.0%} of the time: a 'no tumour' answer "
        "below it is flagged (a missed tumour costs most)",
        "notumor_fit": floor_fit,
        "mirror_disagreement": "with test-time augmentation only (load_model(tta=True)): "
        "flagged when the scan and its mirror image get different classes",
        "validation": _flag_rates(val_out, temperature, rules),
    }
    testing_calibration = testing_trust = None
    if test_samples:
        test_out = extract(runtime, test_samples, size, batch, config.workers, progress, "features: testing", mirror=True, crop_head=crop)
        test_cal = calibration_summary(test_out.logits, test_out.targets, temperature)
        calibration["testing"] = {"n_images": len(test_samples), "ece_before": test_cal["ece_before"], "ece_after": test_cal["ece_after"]}
        ood["testing_rejected"] = rejection_rate(gate, test_out)
        uncertainty["testing"] = _flag_rates(test_out, temperature, rules)
        testing_calibration = test_cal
        testing_trust = {"temperature": temperature, "ood": ood, "uncertainty": uncertainty}
        logger.info(
            "Testing: ECE %.4f -> %.4f (T = %.3f); %.2f%% rejected as not brain MRI",
            test_cal["ece_before"], test_cal["ece_after"], temperature, 100 * ood["testing_rejected"]["either"],
        )
    logger.info("validation: ECE %.4f -> %.4f (T = %.3f)", val_cal["ece_before"], val_cal["ece_after"], temperature)
    new_card = {"temperature": temperature, "calibration": calibration, "ood": ood, "uncertainty": uncertainty}
    return TrustResult(new_card, testing_calibration, testing_trust)


def _sources(train_samples: list, val_samples: list, extra_folders: list) -> list[dict[str, Any]]:
    """Each training source: its scans and patients on each side of the split, per class and
    sequence, and the fingerprint of its files (``extra_folders``: the ``--extra-data`` folders)."""
    folders = {Path(f).name: Path(f) for f in extra_folders}
    out = []
    for source in sorted({s.source for s in train_samples + val_samples}, key=lambda n: (n != "kaggle", n)):
        train = [s for s in train_samples if s.source == source]
        val = [s for s in val_samples if s.source == source]
        entry: dict[str, Any] = {
            "name": source,
            "train_images": len(train),
            "val_images": len(val),
            "train_counts": class_counts(train),
            "val_counts": class_counts(val),
        }
        if source != "kaggle":
            root = folders[source]
            entry["folder"] = str(root)
            entry["split"] = "by patient"
            entry["train_patients"] = len({s.patient for s in train})
            entry["val_patients"] = len({s.patient for s in val})
            entry["sequences"] = dict(sorted(Counter(s.sequence or "unknown" for s in train + val).items()))
            entry["fingerprint"] = fingerprint(sorted(train + val, key=lambda s: str(s.path)), root)
        out.append(entry)
    return out


def _add_trust(evaluation: dict[str, Any], trust: TrustResult) -> None:
    """The gate's and the flags' figures on Testing (the reports themselves already score the
    calibrated probabilities: ``evaluate_samples`` is given the temperature)."""
    if trust.testing_calibration is None:
        return
    evaluation["trust"] = {"ood": trust.testing_trust["ood"], "uncertainty": trust.testing_trust["uncertainty"]}


def finalize(
    model: torch.nn.Module,
    card: dict[str, Any],
    config: TrainConfig,
    output: Path,
    device: torch.device,
    history: list[dict[str, Any]] | None = None,
    progress: bool = False,
    splits: tuple[list, list, list] | None = None,
) -> dict[str, Any]:
    """Describe the data, calibrate, fit the out-of-distribution gate, evaluate on Testing,
    write weights, card, history, evaluation and the gate (``ood.safetensors``).

    ``config``: the training configuration (``data_dir``, ``split``, ``seed``, ``val_fraction``,
    ``audit``, ``batch_size``, ``workers``, ``tta``, ``no_test``, ``max_per_class``).
    ``splits``: the (train, validation, test) samples when already known; else rebuilt.
    Returns the card as written.
    """
    output.mkdir(parents=True, exist_ok=True)
    train_samples, val_samples, test_samples = splits or load_data(config)
    card = dict(card)
    card["data"] = {
        "source": "Kaggle Brain Tumor MRI Dataset (Nickparvar): figshare + SARTAJ + Br35H",
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "test_images": len(test_samples),
        "train_counts": class_counts(train_samples),
        "val_counts": class_counts(val_samples),
        "test_counts": class_counts(test_samples),
        "split": config.split,
        "fingerprint_training": fingerprint(
            sorted((s for s in train_samples + val_samples if s.source == "kaggle"), key=lambda s: str(s.path)), config.data_dir
        ),
        "fingerprint_testing": fingerprint(test_samples, config.data_dir) if test_samples else None,
        "sources": _sources(train_samples, val_samples, config.extra_data),
    }
    if history is not None:
        write_json(output / HISTORY_NAME, {"class_names": card["class_names"], "epochs": history})
        best = card["training"]["best_epoch"]
        card["validation"] = history[best - 1]["val"]
    model.eval()
    # Scans are scored as the app scores them: ONNX Runtime on the CPU (about 3x faster here).
    scorer, exported = scoring_runtime(model, card, device, GATE_STAGES)
    trust = trust_steps(scorer, card, config, output, (train_samples, val_samples, test_samples), progress)
    card.update(trust.card)
    if test_samples:
        evaluation = evaluate_samples(
            scorer, test_samples, card["image_size"], config.batch_size * 2, config.workers,
            tta=config.tta, progress=progress, root=split_dirs(config.data_dir)[1],
            leak_free=load_leak_free(config.audit), temperature=card["temperature"], crop_head=bool(card.get("crop_head", False)),
        )
        _add_trust(evaluation, trust)
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
    card = save_weights(model, output / WEIGHTS_NAME, card)
    return _export(model, card, output, exported)


def _export(
    model: torch.nn.Module, card: dict[str, Any], output: Path, exported: tuple[bytes, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Write ``model.onnx`` for ONNX Runtime (see ``train.export``) and record it in the card:
    the graph already exported for scoring when it taps the gate's stages, else a new export."""
    if exported is not None and exported[1]["stages"] == list((card.get("ood") or {}).get("stages", ())):
        data, info = exported
        (output / ONNX_NAME).write_bytes(data)
        onnx = {**info, "weights_sha256": card["weights_sha256"]}
    else:
        onnx = export_onnx(getattr(model, "module", model), card, output)  # DistributedDataParallel
    card = {**card, "onnx": onnx}
    write_model_card(output / WEIGHTS_NAME, card)
    return card


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
    state, card = load_weights(args.weights)
    config = TrainConfig.from_dict(card["training"]["config"]).replace(
        data_dir=args.data_dir, audit=args.audit, workers=args.workers, no_test=False, tta=True,
    )
    history_path = args.history or args.weights.with_name(HISTORY_NAME)
    history = json.loads(history_path.read_text())["epochs"] if history_path.is_file() else None
    device = torch.device(args.device)
    model = build_network(card["arch"], num_classes=len(card["class_names"]))
    model.load_state_dict(state)
    model = model.to(device).to(memory_format=torch.channels_last)
    if history is None:
        logger.warning("no history.json found at %s", history_path)
    return finalize(model, card, config, args.output, device, history)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
