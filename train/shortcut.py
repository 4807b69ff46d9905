"""The sequence shortcut, audited: how much of the label can be told from appearance alone.

In the Kaggle set the tumour classes come mostly from contrast-enhanced T1 series (figshare),
while "no tumour" mixes many sequences (Br35H). If grey-level appearance alone predicts the
label, a network can learn "looks like T2" -> "no tumour", and scans of other sequences from
other hospitals get confident wrong answers.

The audit describes each scan by its appearance only, with no shape and no position of a lesion:

- the grey-level histogram inside the head (12 bins, after scaling the 99.5th percentile to 1);
- the radial brightness profile (mean brightness in 8 rings from the centre of the head out to
  the scalp): bright fluid in the middle (T2), a bright scalp ring (T1 fat), flat (FLAIR);
- the head's share of the frame, its mean and spread of brightness.

Then, on the Kaggle Training scans:

1. **Appearance-only classifier.** A logistic regression on these 23 numbers, scored by 5-fold
   cross-validation in which no near-duplicate group (``train.audit.duplicate_groups``) crosses
   folds. Its accuracy, recall per class and the AUC of "no tumour" against the tumour classes
   say how much of the label appearance carries. The same is measured on an extra source
   (tumour against tumour-free slices of the same patients, folds by patient) as a contrast:
   there the sequences are shared by both classes.
2. **Appearance clusters.** k-means (k = 8) on the standardised numbers; each cluster's scans per
   class. A cluster where one class holds most scans is a region of appearance where Training
   shows only that class: a prediction there may come from appearance, not from a lesion.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.constants import CLASS_NAMES
from core.scan import read_scan

__all__ = ["appearance", "appearance_matrix", "shortcut_audit", "FEATURE_NAMES"]

logger = logging.getLogger(__name__)

_SIZE = 64
_RINGS = 8
_BINS = 12
FEATURE_NAMES = (
    [f"ring_{i}" for i in range(_RINGS)] + [f"hist_{i}" for i in range(_BINS)] + ["head_share", "mean", "spread"]
)
#: Share of a cluster's scans held by one class from which the cluster counts as one-class.
ONE_CLASS_SHARE = 0.8


def appearance(image: Image.Image) -> np.ndarray:
    """The 23 appearance numbers of a scan (see the module docstring), float64."""
    grey = np.asarray(image.convert("L").resize((_SIZE, _SIZE), Image.Resampling.BOX), dtype=np.float64)
    grey = grey / max(float(np.percentile(grey, 99.5)), 1.0)
    head = grey > 0.1
    if head.sum() < 20:
        head = np.ones_like(head)
    ys, xs = np.nonzero(head)
    cy, cx = ys.mean(), xs.mean()
    ry, rx = max(ys.std() * 2, 1.0), max(xs.std() * 2, 1.0)
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE]
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    values = grey[head]
    profile = []
    for i in range(_RINGS):
        ring = head & (radius >= i / _RINGS * 1.2) & (radius < (i + 1) / _RINGS * 1.2)
        profile.append(grey[ring].mean() if ring.any() else 0.0)
    hist = np.histogram(np.clip(values, 0, 1), bins=_BINS, range=(0, 1))[0] / len(values)
    return np.concatenate([profile, hist, [head.mean(), values.mean(), values.std()]])


def appearance_matrix(paths: Sequence[str | Path]) -> np.ndarray:
    """(N, 23) appearance numbers of the scans at ``paths``, read as the app reads them."""
    return np.stack([appearance(read_scan(p)) for p in paths])


def _cross_validated(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold class probabilities of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), int(labels.max()) + 1))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for train_idx, test_idx in folds.split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(features[train_idx], labels[train_idx])
        probs[np.ix_(test_idx, model.classes_)] = model.predict_proba(features[test_idx])
    return probs


def _scores(probs: np.ndarray, labels: np.ndarray, names: Sequence[str], negative: int) -> dict[str, Any]:
    """Accuracy, recall per class and the AUC of class ``negative`` against the others."""
    from sklearn.metrics import roc_auc_score

    predicted = probs.argmax(1)
    present = sorted(set(labels.tolist()))
    return {
        "n_images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "chance": float(np.bincount(labels).max() / len(labels)),
        "recall": {names[c]: float((predicted[labels == c] == c).mean()) for c in present},
        "auc_no_tumour_vs_tumour": float(roc_auc_score(labels == negative, probs[:, negative])),
    }


def shortcut_audit(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    groups: Sequence[int],
    extra: tuple[Sequence[str | Path], Sequence[int], Sequence[str]] | None = None,
    clusters: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """The audit of the module docstring for the Kaggle Training scans ``paths`` (``labels``
    index ``CLASS_NAMES``; ``groups``: near-duplicate groups), and for an ``extra`` source given
    as (paths, labels, patients)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    features = appearance_matrix(paths)
    labels_arr = np.asarray(labels)
    notumor = CLASS_NAMES.index("notumor")
    probs = _cross_validated(features, labels_arr, np.asarray(groups), seed)
    report: dict[str, Any] = {
        "method": "logistic regression on 23 appearance numbers (grey-level histogram inside the head, "
        "radial brightness profile, head share, mean, spread; no lesion shape), 5-fold cross-validation, "
        "near-duplicate groups kept within a fold; k-means clusters on the same numbers",
        "features": list(FEATURE_NAMES),
        "appearance_only": _scores(probs, labels_arr, CLASS_NAMES, notumor),
    }
    scaled = StandardScaler().fit_transform(features)
    assignment = KMeans(clusters, n_init=10, random_state=seed).fit_predict(scaled)
    rows = []
    for cluster in range(clusters):
        members = labels_arr[assignment == cluster]
        counts = {name: int((members == c).sum()) for c, name in enumerate(CLASS_NAMES)}
        top = max(counts, key=counts.get)
        rows.append({"cluster": cluster, "n_images": int(len(members)), "counts": counts,
                     "majority": top, "majority_share": counts[top] / max(len(members), 1)})
    rows.sort(key=lambda r: -r["majority_share"])
    one_class = [r for r in rows if r["majority_share"] >= ONE_CLASS_SHARE]
    majorities: Counter[str] = Counter()
    for r in one_class:
        majorities[r["majority"]] += r["n_images"]
    report["clusters"] = {
        "k": clusters,
        "one_class_share": ONE_CLASS_SHARE,
        "rows": rows,
        "one_class_scans": int(sum(r["n_images"] for r in one_class)),
        "one_class_fraction": float(sum(r["n_images"] for r in one_class) / len(labels_arr)),
        "one_class_majorities": dict(sorted(majorities.items())),
    }
    if extra is not None:
        extra_paths, extra_labels, patients = extra
        extra_labels_arr = np.asarray(extra_labels)
        index = {p: i for i, p in enumerate(sorted(set(patients)))}
        extra_features = appearance_matrix(extra_paths)
        # The two classes of the extra source (glioma, notumor) keep their CLASS_NAMES indices.
        present = sorted(set(extra_labels_arr.tolist()))
        remap = np.array([present.index(v) for v in extra_labels_arr])
        extra_probs = _cross_validated(extra_features, remap, np.array([index[p] for p in patients]), seed)
        names = [CLASS_NAMES[c] for c in present]
        report["extra_source"] = _scores(extra_probs, remap, names, present.index(notumor))
    logger.info(
        "appearance alone: %.1f%% accuracy on Training (chance %.1f%%), no-tumour AUC %.3f",
        100 * report["appearance_only"]["accuracy"], 100 * report["appearance_only"]["chance"],
        report["appearance_only"]["auc_no_tumour_vs_tumour"],
    )
    return report
