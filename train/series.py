"""Whole series: the series rule fitted on validation series, and the report on real series.

``python -m train.series`` builds validation series from the split the model was selected on,
never from Testing or the external sets:

- each tcga-lgg validation patient gives one glioma series per sequence (its tumour and
  tumour-free slices ordered by slice number) and one "no tumour" series per sequence (its
  tumour-free slices alone);
- Kaggle validation scans, which have no series, are drawn into series of 20: a tumour series
  holds 3 to 8 scans of one tumour class among "no tumour" scans, a "no tumour" series only
  "no tumour" scans (seeded).

Every slice is scored once by the served model; the thresholds of :class:`core.series_rule.SeriesRule`
are the grid point with the best balanced series accuracy (ties: the fewest slices, then the
lowest share and probability), at least two slices so that one odd slice cannot decide. The
rule, its fit and the comparison with "majority of slices" and "maximum over slices" are written
to the model card (``card["series"]``)::

    python -m train.series --weights assets/model.safetensors

``python -m train.evaluate --series DIR`` reads a folder laid out like
``../shared/datasets/external-dev-series`` (``manifest.csv``: path, source, label, sequence) and
reports (:func:`evaluate_series`); it fits nothing.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.constants import CLASS_NAMES, NEGATIVE_CLASS, OTHER_LESION_CLASS, data_dir, default_weights
from core.model import Classifier, Prediction, load_model
from core.scan import read_scan
from core.series import read_series
from core.series_rule import SERIES_RULES, SeriesRule, assessed_slices, decide
from core.weights import read_model_card, write_model_card

from .config import TrainConfig
from .data import Sample
from .splits import load_data

__all__ = ["ValidationSeries", "evaluate_series", "fit_rule", "main", "score_rule", "validation_series"]

logger = logging.getLogger(__name__)

#: The thresholds tried.
PROBABILITY_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
SLICES_GRID = (2, 3, 4, 5)
SHARE_GRID = (0.0, 0.05, 0.1, 0.2)
#: Kaggle series: slices per series, tumour slices per tumour series, series per class.
KAGGLE_SERIES_SLICES = 20
KAGGLE_TUMOUR_SLICES = (3, 8)
KAGGLE_SERIES_PER_CLASS = 40
_SLICE_NUMBER = re.compile(r"_(\d+)_[a-z0-9]+$")


@dataclass(frozen=True)
class ValidationSeries:
    """A series built from validation slices: its true class and its slices' answers."""

    name: str
    label: str
    predictions: tuple[Prediction, ...]
    assessed: tuple[bool, ...]


def _slice_number(sample: Sample) -> int:
    match = _SLICE_NUMBER.search(sample.path.stem)
    return int(match.group(1)) if match else 0


def validation_series(model: Classifier, samples: Sequence[Sample], seed: int = 0, batch_size: int = 32) -> list[ValidationSeries]:
    """The validation series of the module docstring, every slice scored once by ``model``."""
    images = {}
    predictions: dict[Path, Prediction] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        loaded = [read_scan(s.path) for s in chunk]
        for sample, image, prediction in zip(chunk, loaded, model.predict_batch(loaded, batch_size)):
            predictions[sample.path] = prediction
            if sample.source != "kaggle":
                images[sample.path] = image
    out: list[ValidationSeries] = []
    extra = sorted({(s.source, s.patient, s.sequence) for s in samples if s.source != "kaggle"}, key=str)
    for source, patient, sequence in extra:
        mine = sorted((s for s in samples if (s.source, s.patient, s.sequence) == (source, patient, sequence)), key=_slice_number)
        for label, kept in (("glioma", mine), (NEGATIVE_CLASS, [s for s in mine if s.class_name == NEGATIVE_CLASS])):
            if len(kept) < 2 or (label == "glioma" and not any(s.class_name == "glioma" for s in kept)):
                continue
            preds = [predictions[s.path] for s in kept]
            assessed = assessed_slices([images[s.path] for s in kept], preds)
            out.append(ValidationSeries(f"{source}/{patient}/{sequence}/{label}", label, tuple(preds), tuple(bool(a) for a in assessed)))
    rng = np.random.default_rng(seed)
    kaggle = {c: [s for s in samples if s.source == "kaggle" and s.class_name == c] for c in CLASS_NAMES}
    for label in CLASS_NAMES:
        for k in range(KAGGLE_SERIES_PER_CLASS if kaggle[label] and kaggle[NEGATIVE_CLASS] else 0):
            tumour = 0 if label == NEGATIVE_CLASS else int(rng.integers(KAGGLE_TUMOUR_SLICES[0], KAGGLE_TUMOUR_SLICES[1] + 1))
            chosen = list(rng.choice(len(kaggle[label]), tumour, replace=False)) if tumour else []
            negatives = list(rng.choice(len(kaggle[NEGATIVE_CLASS]), KAGGLE_SERIES_SLICES - tumour, replace=False))
            kept = [kaggle[label][i] for i in chosen] + [kaggle[NEGATIVE_CLASS][i] for i in negatives]
            rng.shuffle(kept)
            preds = tuple(predictions[s.path] for s in kept)
            out.append(ValidationSeries(f"kaggle/{label}/{k}", label, preds, tuple(p.is_brain_mri for p in preds)))
    return out


def score_rule(rule: SeriesRule, series: Sequence[ValidationSeries]) -> dict[str, Any]:
    """Series accuracy per true class and balanced (their mean), the share flagged, and the
    share of "no tumour" series called a tumour class."""
    by_class: dict[str, list[bool]] = {}
    flagged = []
    false_tumour = []
    for s in series:
        decision = decide(rule, s.predictions, s.assessed)
        by_class.setdefault(s.label, []).append(decision.label == s.label)
        flagged.append(bool(decision.flags))
        if s.label == NEGATIVE_CLASS:
            false_tumour.append(decision.label != NEGATIVE_CLASS)
    accuracy = {c: float(np.mean(v)) for c, v in sorted(by_class.items())}
    return {
        "series": len(series),
        "balanced_accuracy": float(np.mean(list(accuracy.values()))) if accuracy else None,
        "accuracy": accuracy,
        "flagged": float(np.mean(flagged)) if flagged else None,
        "notumor_called_tumour": float(np.mean(false_tumour)) if false_tumour else None,
    }


def fit_rule(series: Sequence[ValidationSeries], base: SeriesRule = SeriesRule()) -> tuple[SeriesRule, dict[str, Any]]:
    """The grid's best support rule on ``series`` (see the module docstring), and its score."""
    best: tuple[tuple, SeriesRule, dict[str, Any]] | None = None
    for slices, share, probability in itertools.product(SLICES_GRID, SHARE_GRID, PROBABILITY_GRID):
        rule = replace(base, min_probability=probability, min_slices=slices, min_share=share, kind="support")
        score = score_rule(rule, series)
        key = (round(score["balanced_accuracy"], 6), -slices, -share, -probability)
        if best is None or key > best[0]:
            best = (key, rule, score)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------- real series
def _manifest(folder: Path) -> list[dict[str, str]]:
    path = folder / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"No manifest.csv in {str(folder)!r}; expected the layout of external-dev-series.")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    labelled = [r for r in records if r["label"] != OTHER_LESION_CLASS and r["error"] is None]
    others = [r for r in records if r["label"] == OTHER_LESION_CLASS and r["error"] is None]
    clean = [r for r in labelled if not r["flagged"]]
    read = [r for r in records if r["error"] is None]
    out: dict[str, Any] = {
        "series": len(records),
        "unreadable": sum(r["error"] is not None for r in records),
        "flagged": float(np.mean([r["flagged"] for r in read])) if read else None,
        "seconds_per_series": float(np.mean([r["seconds"] for r in read])) if read else None,
    }
    if labelled:
        out["accuracy"] = float(np.mean([r["predicted"] == r["label"] for r in labelled]))
        out["unflagged"] = len(clean)
        out["unflagged_accuracy"] = float(np.mean([r["predicted"] == r["label"] for r in clean])) if clean else None
    if others:
        out["other_notumor_unflagged"] = float(np.mean([r["predicted"] == NEGATIVE_CLASS and not r["flagged"] for r in others]))
    return out


def evaluate_series(model: Classifier, folder: str | Path) -> dict[str, Any]:
    """Each series of ``folder`` (``manifest.csv``) read, answered and timed; summaries per
    source, class and sequence, and every series' record. For validation and reporting only."""
    folder = Path(folder)
    records = []
    for row in _manifest(folder):
        record: dict[str, Any] = {"case": row.get("case") or row["path"], "source": row["source"], "label": row["label"],
                                  "sequence": row.get("sequence") or None, "error": None}
        start = time.perf_counter()
        try:
            series = read_series([folder / row["path"]])
            if len(series) != 1:
                raise ValueError(f"{len(series)} series found where the manifest names one")
            prediction = model.predict_series(series[0])
        except Exception as exc:  # noqa: BLE001 - a series that fails is reported, not fatal
            logger.warning("%s: %s", row["path"], exc)
            records.append({**record, "error": str(exc), "seconds": time.perf_counter() - start})
            continue
        records.append({
            **record, "seconds": time.perf_counter() - start, "predicted": prediction.label,
            "confidence": prediction.confidence, "flagged": bool(prediction.flags), "flag_kinds": list(prediction.flag_kinds),
            "n_slices": prediction.n_slices, "assessed": prediction.assessed, "plane": prediction.plane,
            "sequence_read": prediction.sequence.name, "support": prediction.support,
            "key_slices": [k.index for k in prediction.key_slices],
        })
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {"sources": {}, "classes": {}, "sequences": {}}
    for r in records:
        groups["sources"].setdefault(r["source"], []).append(r)
        groups["classes"].setdefault(f"{r['source']}/{r['label']}", []).append(r)
        groups["sequences"].setdefault(f"{r['source']}/{r['sequence']}", []).append(r)
    return {
        "overall": _summary(records),
        **{name: {k: _summary(v) for k, v in sorted(g.items())} for name, g in groups.items()},
        "rule": model.series_rule.to_card(),
        "records": records,
    }


# ---------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.series", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights with their card (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding Training/ (default: $BTMRI_DATA)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Kaggle validation series (default: 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the fit; do not write the model card")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    weights = Path(args.weights or default_weights())
    card = read_model_card(weights)
    config = TrainConfig.from_dict(card["training"]["config"]).replace(data_dir=args.data_dir or data_dir(), no_test=True)
    _, val, _ = load_data(config)
    model = load_model(weights, device="cpu")
    series = validation_series(model, val, args.seed)
    rule, score = fit_rule(series, SeriesRule.from_card(card))
    compared = {kind: score_rule(replace(rule, kind=kind), series) for kind in SERIES_RULES}
    fit = {
        "fitted_on": "validation series of the model's own split (train.series: tcga-lgg patients by sequence; "
        f"Kaggle scans drawn into series of {KAGGLE_SERIES_SLICES}, seed {args.seed})",
        "series": {label: sum(s.label == label for s in series) for label in CLASS_NAMES},
        "grid": {"min_probability": list(PROBABILITY_GRID), "min_slices": list(SLICES_GRID), "min_share": list(SHARE_GRID)},
        "objective": "balanced series accuracy; ties: fewest slices, lowest share, lowest probability",
        "validation": compared,
    }
    logger.info("series rule %s: %s", rule, {k: v["balanced_accuracy"] for k, v in compared.items()})
    if not args.dry_run:
        card = read_model_card(weights)
        card["series"] = rule.to_card() | {"fit": fit}
        write_model_card(weights, card)
    return {"rule": rule.to_card(), "fit": fit}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
