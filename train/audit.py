"""Dataset audit: byte-identical and near-duplicate scans within and across Training/Testing.

``python -m train.audit --data-dir DIR [--output assets/audit.json]``

Method (measured; see ``docs/audit.md``)
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

Why NC and why 0.95: ``python -m benchmarks.experiments.dedup_methods --data-dir DIR`` measures
NC against a DCT perceptual hash on constructed same-scan and different-scan pairs; the figures
and the reasoning are in ``docs/audit.md``.

Known limits: NC of 48x48 thumbnails is sensitive to cropping/shifting (2 % per side drops it
to about 0.94) and, at 0.95, also joins neighbouring slices of one series (measured: adjacent
axial slices of one glioma patient score 0.95-0.99) and, rarely, similar-looking slices of two
patients (one glioma/meningioma pair at 0.955). For the two uses here, the leak-free Testing
subset and group-aware splits, erring this way is the safe side: a neighbouring slice of the
same patient in Training is a leak too, and a few merged groups only make groups larger.

JSON report layout (``assets/audit.json``)
-------------------------------------------
All file names are posix paths relative to ``DIR`` (e.g. ``"Testing/glioma/Te-gl_0001.jpg"``)::

    {
      "data_fingerprint": sha256 over labels, names and bytes (train.data.fingerprint),
      "method": {"features": "...", "thumbnail_size": 48, "mirror": true,
                 "threshold": 0.95},
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


# --------------------------------------------------------------------- audit
def audit(data_dir: str | Path, threshold: float = THRESHOLD) -> dict:
    """Audit ``DIR/Training`` and ``DIR/Testing``; returns the report described in the module doc."""
    root = Path(data_dir)
    train_dir, test_dir = split_dirs(root)
    train_samples, test_samples = find_samples(train_dir), find_samples(test_dir)
    samples = train_samples + test_samples
    n_train = len(train_samples)
    names = [s.path.relative_to(root).as_posix() for s in samples]
    labels = np.array([s.label for s in samples])
    in_test = np.arange(len(samples)) >= n_train

    started = time.perf_counter()
    features = thumbnails([s.path for s in samples])
    hashes = file_hashes([s.path for s in samples])
    logger.info("thumbnails and hashes of %d scans: %.1f s", len(samples), time.perf_counter() - started)
    near_i, near_j, near_s, near_m = similar_pairs(features, threshold)
    exact = np.array(_exact_pairs(hashes), dtype=np.int64).reshape(-1, 2)
    logger.info("%d near-duplicate pairs, %d identical pairs", len(near_i), len(exact))

    def split_counts(i: np.ndarray, j: np.ndarray) -> tuple[int, int, int]:
        ti, tj = in_test[i], in_test[j]
        return int(np.sum(~ti & ~tj)), int(np.sum(ti & tj)), int(np.sum(ti != tj))

    near_tr, near_te, near_x = split_counts(near_i, near_j)
    exact_tr, exact_te, exact_x = split_counts(exact[:, 0], exact[:, 1])

    # The closest Training scan of every Testing scan with a near (or identical) duplicate there.
    matches: dict[int, tuple[int, float, bool]] = {}
    cross = in_test[near_i] != in_test[near_j]
    for a, b, score, mirrored in zip(near_i[cross], near_j[cross], near_s[cross], near_m[cross]):
        test, train = (b, a) if in_test[b] else (a, b)
        if test not in matches or score > matches[test][1]:
            matches[int(test)] = (int(train), float(score), bool(mirrored))
    exact_in_training: set[int] = set()
    for a, b in exact:
        if in_test[a] != in_test[b]:
            test, train = (b, a) if in_test[b] else (a, b)
            exact_in_training.add(int(test))
            matches[int(test)] = (int(train), 1.0, False)

    groups = _components(
        len(samples), np.concatenate([near_i, exact[:, 0]]), np.concatenate([near_j, exact[:, 1]])
    )
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    multi = [m for m in members.values() if len(m) > 1]

    leak_free = [s for k, s in enumerate(test_samples, start=n_train) if k not in matches]
    report = {
        "data_fingerprint": fingerprint(samples, root),
        "method": {
            "features": "48x48 grey thumbnail (Pillow bilinear), zero-mean unit-norm; score = "
            "max(NC(a, b), NC(a, mirror(b))); exact = sha256 of the file bytes",
            "thumbnail_size": THUMBNAIL_SIZE,
            "mirror": True,
            "threshold": threshold,
        },
        "counts": {
            "training": n_train,
            "testing": len(test_samples),
            "exact_pairs_training_testing": exact_x,
            "exact_pairs_within_training": exact_tr,
            "exact_pairs_within_testing": exact_te,
            "near_pairs_training_testing": near_x,
            "near_pairs_within_training": near_tr,
            "near_pairs_within_testing": near_te,
            "testing_with_near_duplicate_in_training": len(matches),
            "testing_with_exact_duplicate_in_training": len(exact_in_training),
            "groups": len(multi),
            "cross_split_groups": sum(1 for m in multi if len(set(in_test[m].tolist())) > 1),
            "cross_class_groups": sum(1 for m in multi if len(set(labels[m].tolist())) > 1),
        },
        "leak_free_testing": {
            "count": len(leak_free),
            "per_class": class_counts(leak_free),
            "files": [s.path.relative_to(root).as_posix() for s in leak_free],
        },
        "testing_matches": {
            names[test]: {"training": names[train], "score": round(score, 4), "mirrored": mirrored}
            for test, (train, score, mirrored) in sorted(matches.items())
        },
        "exact_pairs": [[names[a], names[b]] for a, b in exact.tolist()],
        "groups": [
            {"files": [names[k] for k in m], "classes": [CLASS_NAMES[labels[k]] for k in m]} for m in multi
        ],
    }
    logger.info("audit of %d scans: %.1f s", len(samples), time.perf_counter() - started)
    return report


def leak_free_testing(report: dict | str | Path) -> set[str]:
    """The Testing files (posix, relative to the data folder) with no near duplicate in Training.

    ``report`` is an audit report (:func:`audit`) or the path of its JSON file.
    """
    if not isinstance(report, dict):
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"Audit report {str(path)!r} does not exist; run python -m train.audit.")
        report = json.loads(path.read_text())
    if "leak_free_testing" not in report:
        raise ValueError(f"Not an audit report: no 'leak_free_testing' entry among keys {sorted(report)}.")
    return set(report["leak_free_testing"]["files"])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--data-dir", required=True, help="folder holding Training/ and Testing/")
    parser.add_argument(
        "--output", default=None, help=f"JSON report (default: assets/{AUDIT_NAME}); '-' writes none"
    )
    parser.add_argument(
        "--threshold", type=float, default=THRESHOLD, help=f"NC at or above which scans match (default {THRESHOLD})"
    )
    parser.add_argument(
        "--shortcut", action="store_true",
        help="also audit the sequence shortcut (train.shortcut): how well appearance alone predicts the class",
    )
    parser.add_argument(
        "--shortcut-only", action="store_true",
        help="recompute only the shortcut audit and store it in the existing report at --output",
    )
    parser.add_argument(
        "--extra-data", default=None,
        help="an extra training source (CSV manifests with path and patient) audited for the shortcut as a "
        "contrast (default: $BTMRI_EXTRA when it exists)",
    )
    return parser


def _shortcut(data_dir: str | Path, extra: str | Path | None) -> dict:
    from core.constants import extra_dir

    from .data import find_extra_samples
    from .shortcut import shortcut_audit

    samples = find_samples(split_dirs(data_dir, need_testing=False)[0])
    paths = [s.path for s in samples]
    extra_dir_path = Path(extra) if extra else extra_dir()
    extra_arg = None
    if extra_dir_path.is_dir():
        extra_samples = find_extra_samples(extra_dir_path)
        extra_arg = ([s.path for s in extra_samples], [s.label for s in extra_samples], [s.patient for s in extra_samples])
    elif extra:
        raise SystemExit(f"--extra-data {str(extra)!r} does not exist.")
    report = shortcut_audit(paths, [s.label for s in samples], duplicate_groups(paths), extra_arg)
    if extra_arg is not None:
        report["extra_source"]["name"] = extra_dir_path.name
    return report


def _summary(report: dict, seconds: float) -> str:
    c = report["counts"]
    lf = report["leak_free_testing"]
    t = report["method"]["threshold"]
    lines = [
        f"Audited {c['training']} Training and {c['testing']} Testing scans in {seconds:.1f} s "
        f"(near duplicate: NC >= {t} on 48x48 thumbnails, mirror included).",
        f"  byte-identical pairs Training-Testing:        {c['exact_pairs_training_testing']}",
        f"  byte-identical pairs within Training/Testing: {c['exact_pairs_within_training']} / {c['exact_pairs_within_testing']}",
        f"  Testing scans with a near duplicate in Training: {c['testing_with_near_duplicate_in_training']} of {c['testing']}",
        f"  near-duplicate pairs Training-Testing:        {c['near_pairs_training_testing']}",
        f"  near-duplicate pairs within Testing:          {c['near_pairs_within_testing']}",
        f"  near-duplicate pairs within Training:         {c['near_pairs_within_training']}",
        f"  duplicate groups: {c['groups']} ({c['cross_split_groups']} cross the split, "
        f"{c['cross_class_groups']} hold different labels)",
        f"  leak-free Testing subset: {lf['count']} scans {lf['per_class']}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    if not -1.0 <= args.threshold <= 1.0:
        raise SystemExit(f"--threshold must be between -1 and 1, got {args.threshold}.")
    output = Path(args.output) if args.output and args.output != "-" else assets_dir() / AUDIT_NAME
    if args.shortcut_only:
        if not output.is_file():
            raise SystemExit(f"--shortcut-only needs an existing report at {str(output)!r}; run the whole audit first.")
        report = json.loads(output.read_text())
        report["shortcut"] = _shortcut(args.data_dir, args.extra_data)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["shortcut"]["appearance_only"], indent=1))
        print(f"Shortcut audit written to {output}")
        return report
    started = time.perf_counter()
    report = audit(args.data_dir, threshold=args.threshold)
    if args.shortcut:
        report["shortcut"] = _shortcut(args.data_dir, args.extra_data)
    seconds = time.perf_counter() - started
    print(_summary(report, seconds))
    if args.output != "-":
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"Report written to {output}")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
