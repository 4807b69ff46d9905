"""A small but complete assets folder for the app tests: random weights plus stored metrics.

The metrics are computed by :func:`train.metrics.report` and :func:`train.metrics.summary`
on synthetic probabilities, exactly as training writes them; no number is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import make_model_dir
from core.constants import AUDIT_NAME, CLASS_NAMES, COMPARISON_NAME, EVALUATION_NAME, EXTERNAL_NAME, HISTORY_NAME, MODEL_CARD_NAME
from train import metrics

N_EPOCHS = 4
#: The fixture card's class x sequence table (``card["sequence_table"]``, as ``python -m train.sequence
#: table`` writes it): meningiomas and pituitary tumours on contrast T1 only, and no T2 scan without a
#: tumour either, so that every answer on T2 is flagged ``sequence_not_learned``.
SEQUENCE_TABLE = {
    "counts": {
        "glioma": {"T1": 40, "T1C": 40, "T1w": 0, "T2": 40, "FLAIR": 40},
        "meningioma": {"T1": 0, "T1C": 100, "T1w": 0, "T2": 0, "FLAIR": 0},
        "notumor": {"T1": 30, "T1C": 30, "T1w": 0, "T2": 0, "FLAIR": 10},
        "pituitary": {"T1": 0, "T1C": 100, "T1w": 0, "T2": 0, "FLAIR": 0},
    },
    "min_share": 0.05,
}


def _synthetic(n: int, skill: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a classifier that puts ``skill`` extra logit mass on the true class."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(CLASS_NAMES), size=n)
    logits = rng.normal(size=(n, len(CLASS_NAMES)))
    logits[np.arange(n), targets] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, targets


def make_assets(
    folder: Path, image_size: int = 64, leak_free: bool = True, audit: bool = True, external: bool = True,
    comparison: bool = True, sequence_table: bool = True,
) -> Path:
    """Write model.safetensors, model_card.json, history.json, evaluation.json (and audit.json);
    ``sequence_table``: the card gets :data:`SEQUENCE_TABLE`."""
    folder.mkdir(parents=True, exist_ok=True)
    make_model_dir(folder, image_size=image_size)
    epochs = []
    for epoch in range(1, N_EPOCHS + 1):
        train_probs, train_t = _synthetic(200, 1.0 + epoch, seed=epoch)
        val_probs, val_t = _synthetic(80, 0.8 + epoch, seed=100 + epoch)
        epochs.append(
            {
                "epoch": epoch,
                "phase": "head" if epoch == 1 else "full",
                "lr": 1e-3,
                "seconds": 1.0,
                "train": metrics.summary(train_probs, train_t),
                "val": metrics.summary(val_probs, val_t),
            }
        )
    (folder / HISTORY_NAME).write_text(json.dumps({"class_names": list(CLASS_NAMES), "epochs": epochs}))

    probs, targets = _synthetic(120, 3.0, seed=7)
    testing = metrics.report(probs, targets)
    evaluation = {
        "class_names": list(CLASS_NAMES),
        "n_images": testing["n_images"],
        "counts": testing["support"],
        "evaluations": {"testing": testing},
        "testing_perturbed": {"clean": testing["accuracy"], "blur": 0.5, "noise": 0.4, "mean_perturbed": 0.45},
    }
    if leak_free:
        leak_probs, leak_targets = _synthetic(60, 2.0, seed=8)
        evaluation["evaluations"]["testing_leak_free"] = metrics.report(leak_probs, leak_targets)
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))

    card_path = folder / MODEL_CARD_NAME
    card = json.loads(card_path.read_text())
    card.update(
        {
            "trained_at": "2025-01-02T03:04:05+00:00",
            "training": {
                "config": {"epochs": N_EPOCHS, "lr": 1e-3, "batch_size": 32, "label_smoothing": 0.1, "augment": 1.0,
                           "freeze_epochs": 1, "weight_decay": 0.02, "split": "stratified"},
                "hardware": "CPU (test)",
                "wall_time_s": 4321.0,
                "best_epoch": N_EPOCHS,
            },
            "data": {
                "source": "synthetic test fixture",
                "train_images": 200, "val_images": 80, "test_images": testing["n_images"],
            },
            "metrics": {"testing_accuracy": testing["accuracy"], "testing_macro_f1": testing["macro_f1"]},
        }
    )
    if sequence_table:
        card["sequence_table"] = SEQUENCE_TABLE
    card_path.write_text(json.dumps(card, indent=2))
    if audit:
        (folder / AUDIT_NAME).write_text(json.dumps({"summary": {"exact_duplicates_across": 3, "near_duplicates_across": 9}}))
    if external:
        (folder / EXTERNAL_NAME).write_text(json.dumps(synthetic_external(seed=11)))
    if comparison:
        (folder / COMPARISON_NAME).write_text(json.dumps(synthetic_comparison(seed=12)))
    return folder


def synthetic_comparison(seed: int) -> dict:
    """A comparison.json in the layout ``train.compare`` writes, with random figures; VGG16's
    schedule reduced, as on a CPU."""
    rng = np.random.default_rng(seed)
    entries = []
    for arch, pretrained, reduced in (("small_cnn", None, None), ("efficientnet_lite0", "ImageNet", None),
                                       ("vgg16_bn", None, "epochs 3 instead of 4, image size 64 instead of 160")):
        acc = lambda: float(rng.uniform(0.5, 1.0))  # noqa: E731
        entries.append({
            "arch": arch, "pretrained": pretrained,
            "schedule": {"epochs": 3 if reduced else 4, "image_size": 64 if reduced else 160, "freeze_epochs": 0,
                         "freeze_stages": 0, "reduced": reduced},
            "params": int(rng.integers(10**5, 10**8)), "flops_per_scan": int(rng.integers(10**8, 10**10)),
            "training_s": float(rng.uniform(100, 3000)), "hardware": "CPU", "best_epoch": 2,
            "validation": {"accuracy": acc(), "macro_f1": acc(), "n_images": 100},
            "testing": {"n_images": 1311, "accuracy": acc(), "macro_f1": acc()},
            "leak_free": {"n_images": 207, "accuracy": acc(), "macro_f1": acc()},
            "predict_ms": {"p50": float(rng.uniform(5, 100)), "p90": 120.0, "calls": 30},
            "external": {"hospital": {"n_images": 50, "accuracy": acc()}, "clinic": {"n_images": 30, "accuracy": acc()}},
            "history": [],
        })
    return {"schema": 1, "created": "2026-12-03T10:00:00+00:00", "class_names": list(CLASS_NAMES),
            "machine": {"cpu": "test CPU", "threads": 2, "gpu": None},
            "common": {"epochs": 4, "image_size": 160, "batch_size": 32, "seed": 0, "extra_data": ["tcga-lgg"]},
            "architectures": entries}


def synthetic_external(seed: int) -> dict:
    """An external report computed by :func:`train.external.build_report` from random records."""
    from train.external import build_report

    rng = np.random.default_rng(seed)

    def records(source: str, label: str, n: int, skill: float, sequences=(None,)) -> list[dict]:
        out = []
        for i in range(n):
            right = rng.random() < skill
            predicted = label if right and label != "other" else str(rng.choice(CLASS_NAMES))
            rejected, outside = bool(rng.random() < 0.05), bool(rng.random() < 0.1)
            out.append({"source": source, "label": label, "sequence": sequences[i % len(sequences)],
                        "predicted": predicted, "rejected": rejected, "outside_training": outside,
                        "flagged": rejected or outside or bool(rng.random() < 0.2), "path": f"{source}/{label}/{i}.jpg"})
        return out

    reference = records("testing", "glioma", 40, 0.95)
    found = (records("hospital", "glioma", 30, 0.4, ("T1", "T2")) + records("hospital", "other", 20, 0.0, ("T2",))
             + records("clinic", "notumor", 25, 0.9))
    return build_report(found, reference, leak_free=[r["path"] for r in reference[:20]])
