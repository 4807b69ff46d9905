"""``python -m benchmarks.experiments.ensemble``: would averaging several trained networks help?

Single training runs of one recipe differ by several points on the external sources (the seed
rows of ``docs/experiments.md``). An ensemble, the mean of the calibrated probabilities of
several networks, is the usual way to remove that noise, and distilling one into a single
network is the usual way to ship it within one network's latency. This study asks first whether
the ensemble itself would meet the targets: it serves every set of weights in float32 on the
validation split they share (the first card's), the official Testing split, its leak-free
subset and the external development set, then scores each single network, every pair and
triple, and all of them together. Each candidate gets its own "no tumour" floor on the answer
cosine, fitted on its validation probabilities by the shipped rule
(``train.calibrate.choose_negative_floor``), and the low-confidence flag of the first card.
The out-of-distribution gate is left out (an ensemble has no gate of its own), so the flagged
shares count the confidence and floor flags only. External-dev fits nothing.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import emit
from core import Classifier, load_model, read_scan
from core.constants import CLASS_NAMES, NEGATIVE_CLASS, OTHER_LESION_CLASS, data_dir, external_dir
from core.rules import answer_cosine
from train.calibrate import COSINE_FLOOR_GRID, choose_negative_floor
from train.config import TrainConfig
from train.evaluate import leak_free_mask, load_leak_free
from train.external import find_external
from train.splits import load_data

NEG = CLASS_NAMES.index(NEGATIVE_CLASS)
#: Truth of a lesion of another type, which has no right class among the four.
OTHER = -1


@dataclass(frozen=True)
class Scans:
    """Every scan the study serves: its group, truth, source and sequence."""

    paths: list[Path]
    groups: np.ndarray  # "validation", "testing" or "external"
    truths: np.ndarray  # class index, or OTHER
    sources: np.ndarray  # "testing", "validation" or the external source
    sequences: np.ndarray  # the external scan's sequence, "" where unknown
    leak_free: np.ndarray  # Testing scans with no near duplicate in Training


def collect(config: TrainConfig, external: Path, audit: Path | None, splits: tuple | None = None) -> Scans:
    """The validation split of ``config``, Testing and the external scans, in one table.
    ``splits``: ``load_data(config)``, when the caller has it already."""
    _, val, test = splits if splits is not None else load_data(config)
    rows: list[tuple[Path, str, int, str, str]] = [(s.path, "validation", s.label, "validation", "") for s in val]
    rows += [(s.path, "testing", s.label, "testing", "") for s in test]
    if external.is_dir():
        for s in find_external(external):
            truth = OTHER if s.label == OTHER_LESION_CLASS else CLASS_NAMES.index(s.label)
            rows.append((s.path, "external", truth, s.source, s.sequence or ""))
    paths, groups, truths, sources, sequences = zip(*rows)
    leak_free = leak_free_mask(paths, Path(config.data_dir), load_leak_free(audit)) & (np.array(groups) == "testing")
    return Scans(list(paths), np.array(groups), np.array(truths), np.array(sources), np.array(sequences), leak_free)


def serve(models: Sequence[Classifier], scans: Scans, batch_size: int = 32) -> list[np.ndarray]:
    """Calibrated float32 probabilities (N, classes) of each network on every scan; each scan is
    read once, for all the networks."""
    probs: list[list[list[float]]] = [[] for _ in models]
    for start in range(0, len(scans.paths), batch_size):
        chunk = [read_scan(p) for p in scans.paths[start:start + batch_size]]
        for mine, model in zip(probs, models):
            mine += [[p.probabilities[c] for c in CLASS_NAMES] for p in model.predict_batch(chunk, batch_size=batch_size)]
    return [np.array(mine) for mine in probs]


def _share(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def score(probs: np.ndarray, scans: Scans, low_confidence: float) -> dict[str, Any]:
    """The study's figures for one candidate (mean probabilities over its networks)."""
    val = scans.groups == "validation"
    cosine = answer_cosine(probs)
    floor, _ = choose_negative_floor(probs[val], scans.truths[val], NEG, grid=COSINE_FLOOR_GRID, values=cosine[val])
    answers = probs.argmax(1)
    flagged = probs.max(1) < low_confidence
    if floor is not None:
        flagged |= (answers == NEG) & (cosine < floor)
    right = answers == scans.truths
    test = scans.groups == "testing"
    out: dict[str, Any] = {
        "negative_floor": floor,
        "validation_accuracy": _share(right[val]),
        "testing_accuracy": _share(right[test]),
        "testing_leak_free_accuracy": _share(right[test & scans.leak_free]),
        "testing_flagged": _share(flagged[test]),
        "external": {},
    }
    ext = scans.groups == "external"
    for source in sorted(set(scans.sources[ext])):
        mine = ext & (scans.sources == source)
        known = mine & (scans.truths != OTHER)
        entry: dict[str, Any] = {"n_images": int(mine.sum())}
        if known.any():
            entry["accuracy"] = _share(right[known])
            entry["unflagged_accuracy"] = _share(right[known & ~flagged])
            entry["recall"] = {c: _share(right[known & (scans.truths == k)]) for k, c in enumerate(CLASS_NAMES)
                               if (known & (scans.truths == k)).any()}
            sequences = sorted(set(scans.sequences[known]) - {""})
            if sequences:
                entry["accuracy_by_sequence"] = {q: _share(right[known & (scans.sequences == q)]) for q in sequences}
        other = mine & (scans.truths == OTHER)
        if other.any():
            entry["other_notumor_unflagged"] = _share((answers == NEG)[other] & ~flagged[other])
        out["external"][source] = entry
    return out


def candidates(n: int, max_size: int) -> list[tuple[int, ...]]:
    """Every single network, pair and so on up to ``max_size``, and all ``n`` together."""
    sets = [c for k in range(1, min(max_size, n) + 1) for c in itertools.combinations(range(n), k)]
    return sets + ([tuple(range(n))] if n > max_size else [])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, action="append", required=True,
                        help="safetensors weights with their model card (repeatable; the first card's validation split is used)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle dataset (default: $BTMRI_DATA)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--audit", type=Path, default=None, help="audit report for the leak-free subset (default: assets/audit.json)")
    parser.add_argument("--max-size", type=int, default=3, help="score every subset of up to this many networks, then all of them")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    models = [load_model(w, device="cpu") for w in args.weights]
    configs = [TrainConfig.from_dict(m.card["training"]["config"]) for m in models]
    for weights, other in zip(args.weights[1:], configs[1:]):
        if (other.split, other.seed) != (configs[0].split, configs[0].seed):
            raise SystemExit(f"{str(weights)!r} was validated on another split than {str(args.weights[0])!r}: an "
                             "ensemble's floor needs validation scans that none of its networks trained on")
    config = configs[0].replace(data_dir=args.data_dir or data_dir())
    first = models[0]
    scans = collect(config, args.external or external_dir(), args.audit)
    probs = serve(models, scans)
    result: dict[str, Any] = {"weights": [str(w) for w in args.weights], "low_confidence_below": first.rules.low_confidence,
                              "n_images": {g: int((scans.groups == g).sum()) for g in ("validation", "testing", "external")},
                              "candidates": []}
    for members in candidates(len(probs), args.max_size):
        mean = np.mean([probs[i] for i in members], axis=0)
        result["candidates"].append({"members": [str(args.weights[i]) for i in members]} | score(mean, scans, first.rules.low_confidence))
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
