"""``python -m benchmarks.experiments.soup``: would averaging the weights of several trained
networks (a model soup) help?

Averaging the predictions of several networks (``benchmarks.experiments.ensemble``) raised
Testing but cost the dangerous answer and k times the latency. A model soup (Wortsman et al.,
ICML 2022) averages the weights instead, so it costs one network's time; fine-tuned from one
pre-trained start, it is reported to be more accurate and more robust to distribution shift than
its best ingredient. Every run of this project starts from the same ImageNet weights, with the
stem and the first two stages frozen and a zero classifier, so its networks are candidates.

The study loads the given weights (all one architecture, trained on one validation split),
serves these candidates in float32 on validation, the official Testing split, its leak-free
subset and the external development set, with the figures of the ensemble study:

- the first weights alone, as trained (the reference row; with ``--score-singles`` every
  ingredient; the others are served on validation only, to order the greedy soup);
- the uniform soup: the mean of all the weights;
- the greedy soup: ingredients sorted by validation accuracy, each kept when the soup's
  validation accuracy does not fall (the paper's recipe; scored only when it keeps more than
  one); external-dev plays no part;
- with ``--pairs``, the first weights averaged with each other ingredient.

A soup's batch-norm statistics are recomputed on ``--bn-batches`` training batches, drawn as in
training (``torch.optim.swa_utils.update_bn``), since an average of statistics is not the
statistics of the averaged network. Every candidate gets its own temperature and "no tumour"
floor, both fitted on validation; the low-confidence flag is the first card's and the gate is
left out, as in the ensemble study. External-dev fits nothing.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.experiments import emit
from benchmarks.experiments.ensemble import Scans, collect, score
from core.constants import data_dir, external_dir
from core.model import build_network, softmax
from core.optimize import optimize_for_inference
from core.preprocess import input_array
from core.scan import read_scan
from core.weights import load_weights
from train.calibrate import fit_temperature
from train.config import TrainConfig
from train.splits import load_data
from train.train import training_set

__all__ = ["average_states", "greedy_order", "recompute_batch_norm", "main"]

logger = logging.getLogger(__name__)


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts of one architecture. Integer tensors (the batch
    norms' step counters) are taken from the first."""
    if not states:
        raise ValueError("A soup needs at least one state dict, got none.")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            missing = sorted(set(keys) ^ set(state))[:3]
            raise ValueError(f"State dict {i} holds other tensors than the first (for example {missing}): not one architecture.")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(f"Tensor {key!r} is {tuple(state[key].shape)} in state dict {i} and "
                                 f"{tuple(states[0][key].shape)} in the first: not one architecture.")
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        first = states[0][key]
        if first.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy_order(validation_accuracy: Sequence[float]) -> list[int]:
    """Ingredient indices from the best validation accuracy down (ties: the earlier first)."""
    return sorted(range(len(validation_accuracy)), key=lambda i: (-validation_accuracy[i], i))


def recompute_batch_norm(net: torch.nn.Module, loader: Any, batches: int) -> None:
    """Reset ``net``'s batch-norm statistics and recompute them on the first ``batches`` batches
    of ``loader`` (images, labels), in training mode; ``net`` is left in eval mode."""
    torch.optim.swa_utils.update_bn(itertools.islice(loader, batches), net)
    net.eval()


class Soups:
    """Builds, calibrates and scores networks of one architecture on the study's scans."""

    def __init__(self, arch: str, card: dict[str, Any], scans: Scans, inputs: np.ndarray, train_loader: Any,
                 bn_batches: int, low_confidence: float):
        self.arch, self.card, self.scans, self.inputs = arch, card, scans, inputs
        self.train_loader, self.bn_batches, self.low_confidence = train_loader, bn_batches, low_confidence
        self.val = scans.groups == "validation"

    def network(self, state: dict[str, torch.Tensor], recompute_bn: bool) -> torch.nn.Module:
        net = build_network(self.arch)
        net.load_state_dict(state, strict=True)
        if recompute_bn:
            recompute_batch_norm(net, self.train_loader, self.bn_batches)
        return optimize_for_inference(net.eval(), int(self.card["image_size"]))

    @torch.inference_mode()
    def logits(self, net: torch.nn.Module, mask: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        rows = np.flatnonzero(mask) if mask is not None else np.arange(len(self.inputs))
        parts = [net(torch.from_numpy(self.inputs[rows[i:i + batch_size]].astype(np.float32))).numpy()
                 for i in range(0, len(rows), batch_size)]
        return np.concatenate(parts)

    def validation_accuracy(self, net: torch.nn.Module) -> float:
        logits = self.logits(net, self.val)
        return float((logits.argmax(1) == self.scans.truths[self.val]).mean())

    def score(self, net: torch.nn.Module) -> dict[str, Any]:
        logits = self.logits(net)
        temperature = fit_temperature(logits[self.val], self.scans.truths[self.val])
        return {"temperature": temperature} | score(softmax(logits, temperature), self.scans, self.low_confidence)


def _inputs(scans: Scans, card: dict[str, Any], batch_size: int = 64) -> np.ndarray:
    """Every scan preprocessed once as the app does (float16 to halve the memory)."""
    size = int(card["image_size"])
    out = np.empty((len(scans.paths), len(card["mean"]), size, size), dtype=np.float16)
    for start in range(0, len(scans.paths), batch_size):
        chunk = [read_scan(p) for p in scans.paths[start:start + batch_size]]
        out[start:start + len(chunk)] = input_array(chunk, size, card["mean"], card["std"], bool(card.get("crop_head")))
    return out


def _train_loader(config: TrainConfig, train_samples, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(training_set(config, train_samples), batch_size=config.batch_size, shuffle=True,
                                       num_workers=config.workers, generator=torch.Generator().manual_seed(seed))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, action="append", required=True,
                        help="safetensors weights with their model card (repeatable; one architecture and validation split)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Kaggle dataset (default: $BTMRI_DATA)")
    parser.add_argument("--external", type=Path, default=None, help="external development set (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--audit", type=Path, default=None, help="audit report for the leak-free subset (default: assets/audit.json)")
    parser.add_argument("--bn-batches", type=int, default=40, help="training batches that recompute a soup's batch-norm statistics")
    parser.add_argument("--pairs", action="store_true", help="also score the first weights averaged with each other one")
    parser.add_argument("--score-singles", action="store_true", help="score every ingredient alone on all scans (default: the first only)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes for the batch-norm pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch-norm pass's shuffle and augmentation")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = [load_weights(w) for w in args.weights]
    states = [state for state, _ in loaded]
    cards = [card for _, card in loaded]
    configs = [TrainConfig.from_dict(c["training"]["config"]) for c in cards]
    for weights, card, config in zip(args.weights[1:], cards[1:], configs[1:]):
        if card["arch"] != cards[0]["arch"]:
            raise SystemExit(f"{str(weights)!r} is a {card['arch']!r}, {str(args.weights[0])!r} a {cards[0]['arch']!r}: a soup needs one architecture")
        if (config.split, config.seed) != (configs[0].split, configs[0].seed):
            raise SystemExit(f"{str(weights)!r} was validated on another split than {str(args.weights[0])!r}: a soup's "
                             "greedy choice and its floor need validation scans that none of its networks trained on")
    config = configs[0].replace(data_dir=args.data_dir or data_dir(), workers=args.workers)
    splits = load_data(config)
    scans = collect(config, args.external or external_dir(), args.audit, splits)
    logger.info("preprocessing %d scans", len(scans.paths))
    soups = Soups(cards[0]["arch"], cards[0], scans, _inputs(scans, cards[0]), _train_loader(config, splits[0], args.seed),
                  args.bn_batches, float(cards[0].get("uncertainty", {}).get("low_confidence_below", 0.0)))
    names = [str(w) for w in args.weights]
    result: dict[str, Any] = {"weights": names, "bn_batches": args.bn_batches, "low_confidence_below": soups.low_confidence,
                              "n_images": {g: int((scans.groups == g).sum()) for g in ("validation", "testing", "external")},
                              "candidates": []}

    def add(kind: str, members: Sequence[int], net: torch.nn.Module) -> dict[str, Any]:
        entry = {"kind": kind, "members": [names[i] for i in members]} | soups.score(net)
        result["candidates"].append(entry)
        logger.info("%s %s: validation %.4f, Testing %.4f", kind, [names[i] for i in members],
                    entry["validation_accuracy"], entry["testing_accuracy"])
        return entry

    singles: list[float] = []
    for i, state in enumerate(states):
        net = soups.network(state, recompute_bn=False)
        if i == 0 or args.score_singles:
            singles.append(add("single", [i], net)["validation_accuracy"])
        else:
            singles.append(soups.validation_accuracy(net))
            logger.info("single %s: validation %.4f", names[i], singles[-1])
    result["single_validation_accuracy"] = dict(zip(names, singles))
    add("uniform soup", range(len(states)), soups.network(average_states(states), recompute_bn=True))

    order = greedy_order(singles)
    kept = [order[0]]
    best = singles[order[0]]
    steps = []
    for i in order[1:]:
        accuracy = soups.validation_accuracy(soups.network(average_states([states[k] for k in kept + [i]]), recompute_bn=True))
        steps.append({"add": names[i], "validation_accuracy": accuracy, "kept": accuracy >= best})
        logger.info("greedy: + %s -> validation %.4f (best %.4f)", names[i], accuracy, best)
        if accuracy >= best:
            kept.append(i)
            best = accuracy
    result["greedy_steps"] = steps
    if len(kept) > 1:
        add("greedy soup", kept, soups.network(average_states([states[k] for k in kept]), recompute_bn=True))
    if args.pairs:
        for i in range(1, len(states)):
            add("pair", [0, i], soups.network(average_states([states[0], states[i]]), recompute_bn=True))
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
