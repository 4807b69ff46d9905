"""Fit the sequence recogniser of :mod:`core.sequence`: T1, T1 with contrast, T2 or FLAIR, from the image.

    python -m train.sequence label --output train/sequence_labels.csv   # Kaggle labels, sheets to check
    python -m train.sequence fit --assets assets/                       # the recogniser of assets/' classifier
    python -m train.sequence table --assets assets/                     # class x sequence table, the rule

**Labels.**

- The extra source (tcga-lgg) names its sequence in the file name: ``flair``, ``t1pre``,
  ``t1post``. Every such slice is a labelled FLAIR, T1 or T1C example. T1 and FLAIR of one
  slice also give a T2-like image (``train.presets.SyntheticT2``): bright fluid from the T1,
  bright lesions from the FLAIR. It is used as a T2 example only with ``--synth-t2`` (its
  transfer to real T2 is measured: ``docs/sequence.md``).
- The Kaggle set names no sequence. ``label`` clusters its Training scans twice with k-means:
  the tumour classes on the classifier's gate features (all Training, k = 16), and the
  "no tumour" scans on those features with the shortcut audit's appearance numbers
  (``train.shortcut.appearance``, k = 12). It writes one contact sheet per cluster. Each
  cluster was looked at by eye and named in :data:`TUMOUR_CLUSTERS` and
  :data:`NOTUMOR_CLUSTERS`; mixed clusters, and the CT scans among the "no tumour" images,
  are left unlabelled. The result is the committed ``train/sequence_labels.csv``.
- external-dev is never read here: the recogniser is measured on its Radiopaedia file names
  (``train.evaluate --external``).

**The probe.** The classifier in ``--assets`` taps the per-channel means and standard
deviations of two of its stages on every prediction, for its out-of-distribution gate. The
recogniser is a multinomial logistic regression on those features (standardised, classes
weighted equally), so it belongs to that classifier and costs next to nothing at run time.
The validation split (20 % of tcga-lgg patients, 15 % of the labelled Kaggle scans) picks
the regularisation among :data:`CANDIDATE_C` (the most accurate; the smaller on a tie) and
the contrast threshold: where T1 and T1C cannot be told apart the recogniser says
"T1-weighted" (``core.sequence.SequenceRecogniser``). It is written as
``sequence.safetensors`` beside the weights, with its card entry ``card["sequence"]``; the
class x sequence table it counted is dropped, to be counted again (``table``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.constants import CLASS_NAMES, NEGATIVE_CLASS, RECOGNISED_SEQUENCES, WEIGHTS_NAME, data_dir, extra_dir
from core.preprocess import to_grayscale
from core.scan import read_scan
from core.sequence import SEQUENCE_PROBE_NAME, SequenceRecogniser, save_recogniser
from core.weights import read_model_card, write_model_card

from .data import find_extra_samples, find_samples
from .presets import SyntheticT2
from . import sequence_table
from .sequence_table import EXTRA_SEQUENCES

__all__ = [
    "CANDIDATE_C",
    "NOTUMOR_CLUSTERS",
    "TUMOUR_CLUSTERS",
    "LabelledScan",
    "build_parser",
    "contrast_threshold",
    "extra_labels",
    "features_of",
    "fit_probe",
    "kaggle_labels",
    "labelled_image",
    "main",
    "read_labels",
    "record_recogniser",
    "sequence_report",
    "split",
]

logger = logging.getLogger(__name__)

#: Clusters of the tumour classes (k-means, k = 16, seed 0, on the standardised gate features of
#: all Training scans) and the sequence their contact sheet shows. The figshare part of the
#: Kaggle set: contrast T1 in all three planes. Cluster 0 mixes T1 and T1C; the others hold
#: mostly "no tumour" scans (labelled below).
TUMOUR_CLUSTERS: dict[int, str] = {c: "T1C" for c in (1, 2, 3, 5, 6, 7, 8, 10, 13)}
#: Clusters of the "no tumour" scans (k-means, k = 12, seed 0, on the standardised gate features
#: and twice the standardised appearance numbers). 0: sagittal T1; 7: axial T1 (bright white
#: matter); 1, 2, 4: T2 (bright fluid); 3, 10: FLAIR (dark fluid, bright cortex). Left out:
#: 5, 6, 8, 11 (T1, T2 and FLAIR mixed) and 9 (CT scans).
NOTUMOR_CLUSTERS: dict[int, str] = {0: "T1", 7: "T1", 1: "T2", 2: "T2", 4: "T2", 3: "FLAIR", 10: "FLAIR"}
TUMOUR_K, NOTUMOR_K = 16, 12
KAGGLE_VAL_SHARE = 0.15
#: The L2 strengths (inverse) the validation split chooses among.
CANDIDATE_C = (0.003, 0.01, 0.03, 0.1)
EXTRA_VAL_SHARE = 0.2


@dataclass(frozen=True)
class LabelledScan:
    path: Path
    #: One of ``RECOGNISED_SEQUENCES``.
    sequence: str
    #: "kaggle", "tcga-lgg" or "synthetic" (a T2-like image of a tcga-lgg slice).
    source: str
    #: The FLAIR path's T1 partner, for synthetic images.
    partner: Path | None = None
    patient: str | None = None


# ---------------------------------------------------------------------------------- labels
def kaggle_labels(labels: np.ndarray, gate_features: np.ndarray, appearance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each Training scan's cluster and sequence ("" where none is given), from its class index,
    gate features (N, D) and appearance numbers (N, 23), by the two clusterings above."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    clusters = np.full(len(labels), -1)
    sequences = np.full(len(labels), "", dtype=object)
    every = KMeans(TUMOUR_K, n_init=10, random_state=0).fit(StandardScaler().fit_transform(gate_features)).labels_
    negative = CLASS_NAMES.index(NEGATIVE_CLASS)
    for i in np.flatnonzero(labels != negative):
        clusters[i] = every[i]
        sequences[i] = TUMOUR_CLUSTERS.get(int(every[i]), "")
    rows = np.flatnonzero(labels == negative)
    mixed = np.concatenate(
        [StandardScaler().fit_transform(gate_features[rows]), 2 * StandardScaler().fit_transform(appearance[rows])], axis=1
    )
    own = KMeans(NOTUMOR_K, n_init=10, random_state=0).fit(mixed).labels_
    for i, c in zip(rows, own):
        clusters[i] = TUMOUR_K + int(c)  # numbered after the tumour clusters
        sequences[i] = NOTUMOR_CLUSTERS.get(int(c), "")
    return clusters, sequences


def contact_sheets(paths: Sequence[Path], clusters: np.ndarray, folder: Path, per_sheet: int = 40) -> list[Path]:
    """One sheet of up to ``per_sheet`` random thumbnails per cluster, to check by eye."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = []
    for c in sorted(set(clusters.tolist()) - {-1}):
        members = np.flatnonzero(clusters == c)
        pick = rng.choice(members, min(per_sheet, len(members)), replace=False)
        sheet = Image.new("L", (10 * 90, ((len(pick) + 9) // 10) * 90))
        for i, j in enumerate(pick):
            sheet.paste(to_grayscale(read_scan(paths[j])).resize((88, 88)), ((i % 10) * 90, (i // 10) * 90))
        path = folder / f"cluster_{c:02d}.png"
        sheet.save(path)
        written.append(path)
    return written


def read_labels(csv_path: Path, data_dir: Path) -> list[LabelledScan]:
    """The labelled Kaggle Training scans of ``train/sequence_labels.csv``."""
    out = []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["sequence"]:
                out.append(LabelledScan(data_dir / row["file"], row["sequence"], "kaggle"))
    return out


def extra_labels(root: Path, synth_t2: bool) -> list[LabelledScan]:
    """tcga-lgg's slices with the sequence of their names, and (``synth_t2``) one T2-like image
    per FLAIR slice that has a T1 partner."""
    synth = SyntheticT2(p=1.0)
    out = []
    for sample in find_extra_samples(root):
        sequence = EXTRA_SEQUENCES.get((sample.sequence or "").lower())
        if sequence is None:
            continue
        out.append(LabelledScan(sample.path, sequence, "tcga-lgg", patient=sample.patient))
        if synth_t2 and sequence == "FLAIR":
            partner = synth.partner_of(Path(sample.path))
            if partner is not None:
                out.append(LabelledScan(sample.path, "T2", "synthetic", partner, sample.patient))
    return out


# ---------------------------------------------------------------------------------- features
def labelled_image(scan: LabelledScan) -> Image.Image:
    """The grey image of a labelled scan (a synthetic T2-like image made from its two slices)."""
    image = to_grayscale(read_scan(scan.path))
    if scan.partner is not None:
        t1 = np.asarray(to_grayscale(read_scan(scan.partner)))
        image = Image.fromarray(SyntheticT2.synthesise(np.asarray(image), t1))
    return image


def features_of(classifier, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
    """(N, D) the features the classifier taps for its gate (and the recogniser reads), of N
    PIL images prepared as a prediction prepares them."""
    out = []
    for start in range(0, len(images), batch_size):
        batch, _ = classifier._prepare(images[start : start + batch_size])
        _, taps = classifier.runtime.run(batch)
        if taps is None:
            raise ValueError("This classifier taps no stages (it has no out-of-distribution gate): no features to fit on.")
        out.append(taps)
    return np.concatenate(out) if out else np.zeros((0, 0))


def scan_features(classifier, scans: Sequence[LabelledScan], chunk: int = 256) -> np.ndarray:
    """:func:`features_of` the labelled scans, read ``chunk`` at a time."""
    parts = [features_of(classifier, [labelled_image(s) for s in scans[i : i + chunk]]) for i in range(0, len(scans), chunk)]
    return np.concatenate(parts)


def split(kaggle: Sequence[LabelledScan], extra: Sequence[LabelledScan], seed: int):
    """Train and validation scans: tcga-lgg by patient (a slice's sequences and its synthetic
    T2 stay together), Kaggle by scan."""
    rng = random.Random(seed)
    patients = sorted({s.patient for s in extra})
    rng.shuffle(patients)
    held = set(patients[: round(EXTRA_VAL_SHARE * len(patients))])
    order = list(range(len(kaggle)))
    rng.shuffle(order)
    kaggle_val = set(order[: round(KAGGLE_VAL_SHARE * len(kaggle))])
    train = [s for i, s in enumerate(kaggle) if i not in kaggle_val] + [s for s in extra if s.patient not in held]
    val = [s for i, s in enumerate(kaggle) if i in kaggle_val] + [s for s in extra if s.patient in held]
    return train, val


def fit_probe(x: np.ndarray, y: Sequence[str], c: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression of the sequences ``y`` on the features ``x``
    (standardised, classes weighted equally, L2 strength ``1 / c``); returns its weight (4, D)
    and bias (4,) on the raw features, the standardisation folded in."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    target = np.array([RECOGNISED_SEQUENCES.index(q) for q in y])
    missing = set(range(len(RECOGNISED_SEQUENCES))) - set(target.tolist())
    if missing:
        raise ValueError(f"No training scans of {[RECOGNISED_SEQUENCES[i] for i in sorted(missing)]}; every sequence needs some.")
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced", random_state=seed).fit(scaler.transform(x), target)
    weight = model.coef_ / scaler.scale_
    bias = model.intercept_ - weight @ scaler.mean_
    return weight, bias


def contrast_threshold(probs: np.ndarray, truth: Sequence[str], share: float = 0.05) -> float:
    """The least share of T1-weighted probability that T1C (or T1) must hold to be named, such
    that at most ``share`` of validation T1 and T1C scans are named the wrong one of the two."""
    i1, ic = RECOGNISED_SEQUENCES.index("T1"), RECOGNISED_SEQUENCES.index("T1C")
    truth = np.asarray(truth)
    keep = np.isin(truth, ["T1", "T1C"])
    ratio = probs[keep, ic] / np.clip(probs[keep, ic] + probs[keep, i1], 1e-12, None)
    contrast = truth[keep] == "T1C"
    for threshold in np.arange(0.5, 1.0, 0.01):
        named_c, named_1 = ratio >= threshold, ratio <= 1 - threshold
        wrong = (named_c & ~contrast) | (named_1 & contrast)
        if wrong.mean() <= share:
            return float(round(threshold, 2))
    return 0.99


def sequence_report(probs: np.ndarray, truth: Sequence[str], recogniser: SequenceRecogniser) -> dict[str, Any]:
    """Named sequences against the truth: confusion counts and T2-against-T1-weighted accuracy."""
    names = [recogniser.name_of(p) for p in probs]
    truth = list(truth)
    confusion: dict[str, dict[str, int]] = {}
    for t, n in zip(truth, names):
        confusion.setdefault(t, Counter())[n] += 1
    t2 = np.array([t == "T2" for t in truth])
    said_t2 = np.array([n == "T2" for n in names])
    t1w = np.array([t in ("T1", "T1C") for t in truth])
    named = np.array([n in ("T1", "T1C") for n in names])
    correct_contrast = np.array([n == t for n, t in zip(names, truth)])
    return {
        "n": len(truth),
        "accuracy": float(np.mean([n == t or (n == "T1w" and t in ("T1", "T1C")) for n, t in zip(names, truth)])),
        "t2_vs_t1_weighted": float((said_t2[t2 | t1w] == t2[t2 | t1w]).mean()) if (t2 | t1w).any() else None,
        "t1_named": float(named[t1w].mean()) if t1w.any() else None,
        "t1_vs_t1c_when_named": float(correct_contrast[t1w & named].mean()) if (t1w & named).any() else None,
        "confusion": {t: dict(c) for t, c in sorted(confusion.items())},
    }


def record_recogniser(folder: Path, recogniser: SequenceRecogniser, details: dict[str, Any]) -> dict[str, Any]:
    """Write ``recogniser`` as ``sequence.safetensors`` in ``folder`` and record it in the card
    there (``card["sequence"]``); the class x sequence table it counted is dropped."""
    path = Path(folder) / SEQUENCE_PROBE_NAME
    weights = Path(folder) / WEIGHTS_NAME
    card = read_model_card(weights)
    card["sequence"] = {"file": path.name, "sha256": save_recogniser(recogniser, path), "method": "linear probe",
                        "classes": list(RECOGNISED_SEQUENCES), "stages": list(recogniser.stages),
                        "contrast_threshold": recogniser.contrast_threshold, "min_confidence": recogniser.min_confidence,
                        **details}
    card.pop("sequence_table", None)  # counted by the previous recogniser: run ``table`` again
    write_model_card(weights, card)
    return card["sequence"]


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.sequence", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    label = sub.add_parser("label", help="cluster the Kaggle Training scans, write labels and contact sheets")
    label.add_argument("--data-dir", type=Path, default=data_dir())
    label.add_argument("--output", type=Path, default=Path("train/sequence_labels.csv"))
    label.add_argument("--sheets", type=Path, default=Path("runs/sequence_sheets"))
    fit = sub.add_parser("fit", help="fit the recogniser of a classifier: sequence.safetensors and its card entry")
    fit.add_argument("--assets", type=Path, default=Path("assets"), help="folder of the classifier (its card is extended)")
    fit.add_argument("--data-dir", type=Path, default=data_dir())
    fit.add_argument("--extra-data", type=Path, default=extra_dir())
    fit.add_argument("--labels", type=Path, default=Path("train/sequence_labels.csv"))
    fit.add_argument("--synth-t2", action=argparse.BooleanOptionalAction, default=True,
                     help="T2-like images of tcga-lgg slices as T2 examples")
    fit.add_argument("--threads", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    sequence_table.build_parser(sub.add_parser(
        "table", help="count the classifier's training scans per class and sequence; choose the sequence_not_learned rule"))
    return parser


def _label(args: argparse.Namespace) -> dict[str, Any]:
    from core import load_model

    from .ood import extract
    from .shortcut import appearance_matrix

    samples = find_samples(Path(args.data_dir) / "Training")
    classifier = load_model()
    features = extract(classifier.runtime, samples, classifier.image_size, crop_head=classifier.crop_head).features
    appearance = appearance_matrix([s.path for s in samples])
    clusters, sequences = kaggle_labels(np.array([s.label for s in samples]), features, appearance)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "cluster", "sequence"])
        for s, c, q in zip(samples, clusters, sequences):
            writer.writerow([Path(s.path).relative_to(args.data_dir).as_posix(), CLASS_NAMES[s.label], int(c), q])
    contact_sheets([s.path for s in samples], clusters, args.sheets)
    counts = Counter(q or "unlabelled" for q in sequences)
    logger.info("wrote %s: %s; contact sheets in %s", args.output, dict(counts), args.sheets)
    return dict(counts)


def _fit(args: argparse.Namespace) -> dict[str, Any]:
    from core import load_model

    kaggle = read_labels(args.labels, Path(args.data_dir))
    extra = extra_labels(args.extra_data, args.synth_t2)
    train, val = split(kaggle, extra, args.seed)
    logger.info("train %s, validation %s", dict(Counter(s.sequence for s in train)), dict(Counter(s.sequence for s in val)))
    weights = Path(args.assets) / WEIGHTS_NAME
    card = read_model_card(weights)
    stale = [card.pop(key, None) for key in ("sequence", "sequence_table")]
    if any(entry is not None for entry in stale):
        write_model_card(weights, card)  # the previous recogniser and its table go: both are made again
    classifier = load_model(weights, device="cpu", threads=args.threads)
    if classifier.gate is None:
        raise SystemExit(f"The classifier in {str(args.assets)!r} has no out-of-distribution gate: no tapped features to fit on.")
    start = time.perf_counter()
    x_train, x_val = scan_features(classifier, train), scan_features(classifier, val)
    y_train, y_val = [s.sequence for s in train], [s.sequence for s in val]
    logger.info("features of %d scans in %.0f s", len(train) + len(val), time.perf_counter() - start)
    candidates = []
    for c in CANDIDATE_C:
        weight, bias = fit_probe(x_train, y_train, c, args.seed)
        probs = SequenceRecogniser(weight, bias, 0.5, classifier.gate.stages).probabilities(x_val)
        probe = SequenceRecogniser(weight, bias, contrast_threshold(probs, y_val), classifier.gate.stages)
        report = sequence_report(probs, y_val, probe)
        candidates.append({"C": c, "contrast_threshold": probe.contrast_threshold, "validation": report, "probe": probe})
        logger.info("C %g: validation accuracy %.3f, T2 against T1-weighted %.3f", c, report["accuracy"],
                    report["t2_vs_t1_weighted"])
    best = max(candidates, key=lambda row: (row["validation"]["accuracy"], -row["C"]))
    recogniser = best["probe"]
    entry = record_recogniser(Path(args.assets), recogniser, {
        "C": best["C"],
        "synth_t2": args.synth_t2,
        "seed": args.seed,
        "train_counts": dict(Counter(f"{s.source}/{s.sequence}" for s in train)),
        "val_counts": dict(Counter(f"{s.source}/{s.sequence}" for s in val)),
        "validation": best["validation"],
        "candidates": [{"C": row["C"], "contrast_threshold": row["contrast_threshold"],
                        "accuracy": row["validation"]["accuracy"]} for row in candidates],
    })
    logger.info("sequence recogniser (C %g): %s; now run: python -m train.sequence table --assets %s", best["C"],
                json.dumps(best["validation"]), args.assets)
    return entry


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "table":
        return sequence_table.main(args)
    return _label(args) if args.command == "label" else _fit(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(build_parser().parse_args())
