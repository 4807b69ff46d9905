"""The training data's class x sequence table, and the ``sequence_not_learned`` rule chosen on it.

    python -m train.sequence table --assets assets/

**Counts.** Every scan the shipped classifier was trained on (``train.splits.load_data`` with the
card's own configuration) is counted once per class and sequence: by its file name where the
source names the sequence (tcga-lgg: ``flair``, ``t1pre``, ``t1post``), by the sequence
recogniser elsewhere (the Kaggle set names none). The T2-like images that ``--synth-t2`` makes
from tcga-lgg FLAIR slices during training are reported beside the table, not counted in it.

**The rule.** ``core.rules.SequenceCoverage`` flags an answer where, on the scan's sequence, its
class (or, for a tumour answer, another tumour class) holds less than ``min_share`` of its
training scans; a sequence only the image gives counts when the recogniser's probability
reaches ``min_confidence``. ``min_share`` is :data:`MIN_SHARE`, fixed: the sweep over
:data:`CANDIDATE_SHARES` shows which cells each share would name (on the shipped table, every
share from 3 % to 14 % names the same ones). ``min_confidence`` is chosen on the classifier's
validation scans: the lowest of :data:`CANDIDATE_CONFIDENCES` that adds at most
:data:`KAGGLE_BUDGET` of the Kaggle validation scans to the flagged ones (the Kaggle scans are
mostly contrast T1, where the model did learn every class: the rule must stay narrow there).
The table, the sweep and the choice go to ``card["sequence_table"]``; tcga-lgg validation and
the official Testing split are reported in the sweep, never used to choose.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.constants import CLASS_NAMES, WEIGHTS_NAME
from core.rules import TABLE_SEQUENCES, SequenceCoverage
from core.scan import read_scan
from core.weights import read_model_card, write_model_card

from .config import TrainConfig
from .data import Sample
from .splits import load_data

__all__ = ["CANDIDATE_CONFIDENCES", "CANDIDATE_SHARES", "EXTRA_SEQUENCES", "KAGGLE_BUDGET", "MIN_SHARE", "choose", "count_table", "main", "sweep"]

logger = logging.getLogger(__name__)

#: The share of a class's training scans below which a cell counts as barely covered.
MIN_SHARE = 0.05
#: The shares the sweep reports beside it.
CANDIDATE_SHARES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
#: The recogniser probabilities tried as the floor for image-derived sequences.
CANDIDATE_CONFIDENCES = (0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
#: The most the rule may add to the flagged share of the Kaggle validation scans.
KAGGLE_BUDGET = 0.005
#: tcga-lgg's sequence words (``Sample.sequence``) and the sequence each names.
EXTRA_SEQUENCES = {"t1pre": "T1", "t1post": "T1C", "flair": "FLAIR"}
#: The column of scans whose sequence the recogniser could not name.
UNKNOWN = "unknown"


def sequence_of_samples(classifier, samples: Sequence[Sample], batch_size: int = 64) -> list[str]:
    """Each scan's sequence: the source's name for it where there is one, else the recogniser's."""
    names: list[str | None] = [EXTRA_SEQUENCES.get((s.sequence or "").lower()) for s in samples]
    ask = [i for i, n in enumerate(names) if n is None]
    for start in range(0, len(ask), batch_size):
        part = ask[start : start + batch_size]
        predictions = classifier.predict_batch([read_scan(samples[i].path) for i in part], batch_size)
        for i, prediction in zip(part, predictions):
            names[i] = prediction.sequence.name if prediction.sequence.known else UNKNOWN
    return [str(n) for n in names]


def count_table(samples: Sequence[Sample], sequences: Sequence[str]) -> dict[str, dict[str, int]]:
    """Scans per class and sequence (:data:`core.rules.TABLE_SEQUENCES`, then ``unknown``)."""
    counts = {name: dict.fromkeys((*TABLE_SEQUENCES, UNKNOWN), 0) for name in CLASS_NAMES}
    for sample, sequence in zip(samples, sequences):
        counts[sample.class_name][sequence if sequence in TABLE_SEQUENCES else UNKNOWN] += 1
    return counts


def _predict(classifier, samples: Sequence[Sample], batch_size: int = 64):
    out = []
    for start in range(0, len(samples), batch_size):
        out += classifier.predict_batch([read_scan(s.path) for s in samples[start : start + batch_size]], batch_size)
    return out


def sweep(counts: dict[str, dict[str, int]], groups: dict[str, tuple[Sequence[Sample], list]]) -> list[dict[str, Any]]:
    """Per candidate (share, confidence): the cells the share names and, per group of scans
    (samples, their predictions without the rule), the share the rule adds to the flagged ones,
    the flagged share and the accuracy of the unflagged answers with it."""
    rows = []
    for share in CANDIDATE_SHARES:
        for confidence in CANDIDATE_CONFIDENCES:
            coverage = SequenceCoverage(counts, share, min_confidence=confidence)
            row: dict[str, Any] = {
                "min_share": share,
                "min_confidence": confidence,
                "uncovered": {q: list(coverage.uncovered(q)) for q in (*TABLE_SEQUENCES, "other")},
            }
            for name, (samples, predictions) in groups.items():
                new = np.array([p.is_brain_mri and coverage.flag_of(p.label, p.sequence) is not None
                                for p in predictions], dtype=bool)
                old = np.array([bool(p.flags) for p in predictions], dtype=bool)
                right = np.array([p.label == s.class_name for s, p in zip(samples, predictions)], dtype=bool)
                shown = ~(old | new)
                row[name] = {
                    "n": len(predictions),
                    "added": float((new & ~old).mean()) if len(predictions) else 0.0,
                    "flagged": float((old | new).mean()) if len(predictions) else 0.0,
                    "unflagged_accuracy": float(right[shown].mean()) if shown.any() else None,
                }
            rows.append(row)
    return rows


def choose(rows: Sequence[dict[str, Any]], share: float = MIN_SHARE, group: str = "kaggle_validation",
           budget: float = KAGGLE_BUDGET) -> float:
    """The lowest ``min_confidence`` that, at ``share``, adds at most ``budget`` of ``group`` to
    the flagged scans."""
    within = [row["min_confidence"] for row in rows if row["min_share"] == share and row[group]["added"] <= budget]
    if not within:
        raise ValueError(f"At min_share {share}, every candidate adds more than {budget:.1%} of {group} to the flagged scans.")
    return float(min(within))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--assets", type=Path, default=Path("assets"), help="folder of the model card and its files")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle set (default: the card's, via BTMRI_DATA)")
    parser.add_argument("--threads", type=int, default=None)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from core import load_model
    from core.constants import data_dir

    weights = Path(args.assets) / WEIGHTS_NAME
    card = read_model_card(weights)
    if not card.get("sequence"):
        raise SystemExit(f"The card in {str(args.assets)!r} has no sequence recogniser: run python -m train.sequence fit first.")
    card.pop("sequence_table", None)
    config = TrainConfig.from_dict(card["training"]["config"]).replace(data_dir=args.data_dir or data_dir(), no_test=False)
    train, val, test = load_data(config)
    write_model_card(weights, card)  # the rule must not act while its own table is made
    classifier = load_model(weights, device="cpu", threads=args.threads)
    logger.info("counting %d training scans", len(train))
    counts = count_table(train, sequence_of_samples(classifier, train))
    groups = {}
    for name, samples in (("kaggle_validation", [s for s in val if s.source == "kaggle"]),
                          ("extra_validation", [s for s in val if s.source != "kaggle"]), ("testing", test)):
        logger.info("predicting %d %s scans", len(samples), name)
        groups[name] = (samples, _predict(classifier, samples))
    rows = sweep(counts, groups)
    chosen, confidence = MIN_SHARE, choose(rows)
    flair_slices = sum(1 for s in train if (s.sequence or "").lower() == "flair")
    table = {
        "counts": counts,
        "min_share": chosen,
        "min_confidence": confidence,
        "synthetic": {"T2_from_flair_slices": flair_slices, "probability": float(config.synth_t2)}
        if config.synth_t2 > 0 else None,
        "method": f"tcga-lgg by file name; Kaggle by the sequence recogniser; min_share fixed at {MIN_SHARE:.0%}; "
                  f"min_confidence: the lowest candidate adding at most {KAGGLE_BUDGET:.1%} of Kaggle validation scans "
                  "to the flagged ones",
        "sweep": rows,
        "testing_sequences": dict(Counter(f"{s.class_name}/{p.sequence.name}" for s, p in zip(*groups["testing"]))),
    }
    card["sequence_table"] = table
    write_model_card(weights, card)
    logger.info("class x sequence table: %s; min_share %.3f, min_confidence %.2f", counts, chosen, confidence)
    return table
