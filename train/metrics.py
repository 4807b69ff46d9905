"""Metrics with scikit-learn, in the JSON layout that the model-performance page reads.

Layout of one evaluation report (``report(...)``)::

    {
      "n_images": int, "class_names": [...], "support": {class: int},
      "accuracy": float, "macro_precision": float, "macro_recall": float, "macro_f1": float,
      "loss": float (mean cross-entropy),
      "per_class": {class: {"precision", "recall", "f1", "support"}},
      "confusion_matrix": [[int]]  (rows: true class, columns: predicted class),
      "roc": {class: {"fpr": [...], "tpr": [...], "auc": float}},      (one-vs-rest)
      "pr": {class: {"recall": [...], "precision": [...], "average_precision": float}},
      "calibration": {"n_bins": int, "ece": float,
                      "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]}
    }
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from core.constants import CLASS_NAMES

__all__ = ["summary", "report", "calibration", "MAX_CURVE_POINTS"]

#: ROC and PR curves are thinned to at most this many points per class for storage.
MAX_CURVE_POINTS = 200


def summary(probs: np.ndarray, targets: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro precision, recall, F1 and mean cross-entropy: one epoch's line."""
    probs = _normalised(probs)
    targets = np.asarray(targets)
    preds = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    precision, recall, f1, _ = precision_recall_fscore_support(
        targets, preds, labels=labels, average="macro", zero_division=0
    )
    return {
        "loss": float(log_loss(targets, np.clip(probs, 1e-12, 1.0), labels=labels)),
        "accuracy": float(accuracy_score(targets, preds)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def _normalised(probs: np.ndarray) -> np.ndarray:
    """float64 rows summing to 1 (float32 softmax outputs are off by ~1e-7)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    if len(x) > MAX_CURVE_POINTS:
        idx = np.unique(np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).round().astype(int))
        x, y = x[idx], y[idx]
    return [round(float(v), 5) for v in x], [round(float(v), 5) for v in y]


def calibration(probs: np.ndarray, targets: Sequence[int], n_bins: int = 15) -> dict:
    """Reliability bins of the top-class confidence and the expected calibration error."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece = [], 0.0
    for i, (lower, upper) in enumerate(zip(edges[:-1], edges[1:])):
        mask = (confidence > lower) & (confidence <= upper) if i else (confidence <= upper)
        count = int(mask.sum())
        if count:
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += count / len(targets) * abs(acc - conf)
        else:
            conf, acc = None, None
        bins.append({"lower": float(lower), "upper": float(upper), "count": count, "confidence": conf, "accuracy": acc})
    return {"n_bins": n_bins, "ece": float(ece), "bins": bins}


def report(probs: np.ndarray, targets: Sequence[int], class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Every metric the README and the model-performance page show, for one evaluation."""
    probs = _normalised(probs)
    targets = np.asarray(targets)
    preds = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, average=None, zero_division=0
    )
    out = {
        "n_images": int(len(targets)),
        "class_names": list(class_names),
        "support": {name: int(s) for name, s in zip(class_names, support)},
        **summary(probs, targets),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
        "roc": {},
        "pr": {},
        "calibration": calibration(probs, targets),
    }
    for i, name in enumerate(class_names):
        positive = (targets == i).astype(int)
        if positive.min() == positive.max():  # a class absent (or alone): no curve
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, i])
        fpr_l, tpr_l = _thin(fpr, tpr)
        out["roc"][name] = {"fpr": fpr_l, "tpr": tpr_l, "auc": float(roc_auc_score(positive, probs[:, i]))}
        prec, rec, _ = precision_recall_curve(positive, probs[:, i])
        rec_l, prec_l = _thin(rec, prec)
        out["pr"][name] = {
            "recall": rec_l,
            "precision": prec_l,
            "average_precision": float(average_precision_score(positive, probs[:, i])),
        }
    return out
