"""Dataset audit: byte-identical and near-duplicate scans within and across Training/Testing.

``python -m train.audit --data-dir DIR [--output assets/audit.json]``

Method (measured; see ``--compare`` and the README section "Dataset audit")
---------------------------------------------------------------------------
* **Exact duplicates**: sha256 of the file bytes.
* **Near duplicates**: every scan is read with :func:`core.read_scan`, turned grey and shrunk to a
  48x48 thumbnail (Pillow bilinear, which low-pass filters while shrinking). Each thumbnail is a
  row of an ``(N, 2304)`` float32 matrix, made zero-mean and unit-norm, so the dot product of two
  rows is their normalised correlation (NC). The mirror image of a scan is the row of its
  horizontally flipped thumbnail; the score of a pair is ``max(NC(a, b), NC(a, mirror(b)))``.
  Scores are computed as matrix products in blocks of rows (about 10 s for 7,019 scans on
  2 cores). NC ignores brightness and contrast (any affine grey-level change), and the 48x48
  thumbnail ignores JPEG re-encoding, resizing and noise.
* Two scans are near duplicates when their score is ``>= THRESHOLD`` (0.95). Near-duplicate
  and identical scans are joined into groups (connected components of the pair graph).

Why NC and why 0.95: ``python -m train.audit --data-dir DIR --compare`` builds same-scan pairs
(each sampled scan re-encoded at JPEG quality 40 and 95, gamma 0.7 and 1.4, contrast x0.6,
resized to 160 and 288 px, mirrored, cropped by 4 %) and different-scan pairs (each sampled
scan's most similar scan with another diagnosis, i.e. a different patient) and reports how well a
DCT perceptual hash (64 bits, Hamming distance, mirror included) and NC separate them. The figures
measured on the development copy are in the README section "Dataset audit" and in this report's
``"method"`` entry when ``--compare`` was given.

JSON report layout (``assets/audit.json``)
-------------------------------------------
All file names are posix paths relative to ``DIR`` (e.g. ``"Testing/glioma/Te-gl_0001.jpg"``)::

    {
      "data_fingerprint": sha256 over labels, names and bytes (train.data.fingerprint),
      "method": {"features": "...", "thumbnail_size": 48, "mirror": true,
                 "threshold": 0.95, "comparison": {...} | null},
      "counts": {
        "training": int, "testing": int,
        "exact_pairs_training_testing": int,   # byte-identical Training-Testing pairs
        "exact_pairs_within_training": int, "exact_pairs_within_testing": int,
        "near_pairs_training_testing": int,    # near-duplicate pairs (score >= threshold)
        "near_pairs_within_training": int, "near_pairs_within_testing": int,
        "testing_with_near_duplicate_in_training": int,
        "testing_with_exact_duplicate_in_training": int,
        "groups": int,                         # groups of >= 2 scans
        "cross_split_groups": int,             # groups with Training and Testing members
        "cross_class_groups": int              # groups whose members carry different labels
      },
      "leak_free_testing": {"count": int, "per_class": {class: int},
                            "files": [Testing files with no near duplicate in Training]},
      "testing_matches": {testing file: {"training": closest Training file,
                                         "score": float, "mirrored": bool}},
      "exact_pairs": [[file, file], ...],
      "groups": [{"files": [...], "classes": [...]} , ...]   # every group of >= 2 scans
    }

Library use: :func:`thumbnails` (the feature matrix), :func:`duplicate_groups` (a group id per
path, for :func:`train.data.group_split`), :func:`audit` (the report as a dict) and
:func:`leak_free_testing` (the Testing files of a report with no near duplicate in Training).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.constants import AUDIT_NAME, CLASS_NAMES, assets_dir
from core.preprocess import to_grayscale
from core.scan import ScanError, read_scan

from .data import class_counts, find_samples, fingerprint, split_dirs

__all__ = [
    "THRESHOLD",
    "THUMBNAIL_SIZE",
    "thumbnails",
    "similar_pairs",
    "duplicate_groups",
    "audit",
    "leak_free_testing",
    "get_args_parser",
    "main",
]

logger = logging.getLogger(__name__)

#: Side of the grey thumbnail that near-duplicate search compares.
THUMBNAIL_SIZE = 48
#: Normalised correlation (mirror included) at or above which two scans count as the same scan.
THRESHOLD = 0.95
_BLOCK = 1024


# ------------------------------------------------------------------ features
def _thumbnail(path: Path, size: int) -> np.ndarray:
    try:
        image = to_grayscale(read_scan(path))
    except ScanError as exc:
        raise ValueError(f"Cannot read scan {str(path)!r}: {exc}") from exc
    small = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).reshape(-1)


def thumbnails(paths: Sequence[str | Path], size: int = THUMBNAIL_SIZE, workers: int = 2) -> np.ndarray:
    """``(N, size*size)`` float32 grey thumbnails, rows zero-mean and unit-norm.

    The dot product of two rows is the normalised correlation of the two scans. A constant
    image (no contrast) gives a row of zeros, which matches nothing.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros((0, size * size), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(lambda p: _thumbnail(p, size), paths))
    matrix = np.stack(rows)
    return _normalise(matrix)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix - matrix.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 1e-6).astype(np.float32)


def mirror(features: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Rows of :func:`thumbnails` flipped left-right (the thumbnails of the mirrored scans)."""
    return np.ascontiguousarray(features.reshape(-1, size, size)[:, :, ::-1].reshape(features.shape[0], -1))


def file_hashes(paths: Sequence[str | Path]) -> list[str]:
    """sha256 of each file's bytes."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


# ---------------------------------------------------------------- similarity
def _scores(rows: np.ndarray, features: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    direct = rows @ features.T
    mirrored = rows @ flipped.T
    return np.maximum(direct, mirrored), mirrored > direct


def similar_pairs(
    features: np.ndarray, threshold: float = THRESHOLD, size: int = THUMBNAIL_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` whose score (NC, mirror included) is ``>= threshold``.

    Returns ``(i, j, score, mirrored)`` arrays. Computed in blocks of rows, so memory stays
    at ``block x N``.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between -1 and 1, got {threshold}.")
    flipped = mirror(features, size)
    n = features.shape[0]
    found_i, found_j, found_s, found_m = [], [], [], []
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        score, is_mirror = _scores(features[start:stop], features, flipped)
        rows, cols = np.nonzero(score >= threshold)
        rows_abs = rows + start
        keep = cols > rows_abs
        found_i.append(rows_abs[keep])
        found_j.append(cols[keep])
        found_s.append(score[rows[keep], cols[keep]])
        found_m.append(is_mirror[rows[keep], cols[keep]])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_s).astype(np.float32),
        np.concatenate(found_m),
    )


def _exact_pairs(hashes: Sequence[str]) -> list[tuple[int, int]]:
    by_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        by_hash.setdefault(digest, []).append(index)
    return [(a, b) for members in by_hash.values() for k, a in enumerate(members) for b in members[k + 1 :]]


def _components(n: int, pairs_i: np.ndarray, pairs_j: np.ndarray) -> list[int]:
    graph = coo_matrix((np.ones(len(pairs_i), dtype=np.int8), (pairs_i, pairs_j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first appearance so ids do not depend on scipy's internals.
    first: dict[int, int] = {}
    return [first.setdefault(int(label), len(first)) for label in labels]


def duplicate_groups(paths: Sequence[str | Path], threshold: float = THRESHOLD) -> list[int]:
    """A group id per path: identical, near-duplicate and mirrored scans share a group.

    Groups are the connected components of the graph whose edges are byte-identical files and
    pairs with normalised correlation ``>= threshold`` (mirror included), so near duplicates of
    near duplicates join too. Ids are numbered from 0 in order of first appearance.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    features = thumbnails(paths)
    near_i, near_j, _, _ = similar_pairs(features, threshold)
    exact = np.array(_exact_pairs(file_hashes(paths)), dtype=np.int64).reshape(-1, 2)
    groups = _components(
        len(paths), np.concatenate([near_i, exact[:, 0]]), np.concatenate([near_j, exact[:, 1]])
    )
    logger.info(
        "%d scans form %d groups (threshold %.3f); largest group: %d scans",
        len(paths), len(set(groups)), threshold, max(np.bincount(groups)),
    )
    return groups
