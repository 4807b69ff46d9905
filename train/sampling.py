"""Balanced sampling of the training scans (``python -m train --balance``).

The sequence shortcut (``train.shortcut``): in Kaggle Training the tumour classes come mostly from
one appearance (contrast-enhanced T1) while "no tumour" spans many. Drawing the training batches
so that each class's rarer appearances come up more often weakens the link between appearance
and label without dropping any scan.

- ``none``: every scan once per epoch, shuffled (the default).
- ``class``: each class drawn equally often.
- ``appearance``: each class drawn equally often, and within a class each appearance cluster
  (k-means, k = 8, on the audit's 23 appearance numbers, ``train.shortcut.appearance``) in
  proportion to the square root of its size rather than its size. The square root keeps a
  cluster of a handful of scans from being repeated hundreds of times an epoch. Extra sources
  that name their sequence (``Sample.sequence``) use it instead of a cluster.

Sampling is with replacement, one epoch's worth of draws (as many as there are scans).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .config import BALANCE_MODES
from .data import Sample

__all__ = ["BALANCE_MODES", "appearance_groups", "describe", "sample_weights"]

logger = logging.getLogger(__name__)

#: Appearance clusters per training set (as the shortcut audit).
CLUSTERS = 8


def appearance_groups(samples: Sequence[Sample], clusters: int = CLUSTERS, seed: int = 0) -> list[str]:
    """One appearance group name per scan: the named sequence where a source gives one, else the
    k-means cluster of its appearance numbers (clustered over the scans without a sequence)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    from .shortcut import appearance_matrix

    groups: list[str | None] = [f"{s.source}:{s.sequence}" if s.sequence else None for s in samples]
    unnamed = [i for i, g in enumerate(groups) if g is None]
    if unnamed:
        k = min(clusters, len(unnamed))
        features = StandardScaler().fit_transform(appearance_matrix([samples[i].path for i in unnamed]))
        assignment = KMeans(k, n_init=10, random_state=seed).fit_predict(features)
        for i, cluster in zip(unnamed, assignment):
            groups[i] = f"cluster {int(cluster)}"
    return [str(g) for g in groups]


def sample_weights(samples: Sequence[Sample], mode: str, groups: Sequence[str] | None = None) -> np.ndarray:
    """Drawing weight per scan for ``mode`` (see the module docstring), summing to 1.

    ``groups``: the appearance group of each scan (:func:`appearance_groups`), needed for
    ``appearance``.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance mode {mode!r} is not one of {BALANCE_MODES}.")
    n = len(samples)
    if n == 0:
        raise ValueError("no training scans to weight.")
    labels = [s.label for s in samples]
    if mode == "none":
        return np.full(n, 1.0 / n)
    if mode == "appearance":
        if groups is None or len(groups) != n:
            raise ValueError(f"appearance balance needs one group per scan ({n}), got {None if groups is None else len(groups)}.")
        keys = list(zip(labels, groups))
    else:
        keys = [(label, "") for label in labels]
    counts = Counter(keys)
    # Within a class: a group of size c gets sqrt(c) of the class's draws (each scan 1/sqrt(c)).
    raw = np.array([counts[key] ** -0.5 for key in keys])
    class_totals = Counter()
    for label, w in zip(labels, raw):
        class_totals[label] += w
    weights = np.array([w / class_totals[label] for label, w in zip(labels, raw)])
    weights /= weights.sum()
    return weights


def describe(samples: Sequence[Sample], weights: np.ndarray, groups: Sequence[str] | None = None) -> list[dict]:
    """Per (class, group): scans and the expected share of an epoch's draws (for the log and card)."""
    rows: dict[tuple[str, str], dict] = {}
    for i, sample in enumerate(samples):
        key = (sample.class_name, groups[i] if groups is not None else "")
        row = rows.setdefault(key, {"class": key[0], "group": key[1], "scans": 0, "draw_share": 0.0})
        row["scans"] += 1
        row["draw_share"] += float(weights[i])
    return sorted(rows.values(), key=lambda r: (r["class"], r["group"]))
