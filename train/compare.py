"""``python -m train.compare``: train several architectures the same way and compare them.

The study this project began from trained a plain CNN and compared transfer learning with
EfficientNet and VGG16 on this dataset. This command reruns that comparison with the project's
recipe: every architecture sees the same data, split, augmentation, schedule and selection on
validation (``python -m train`` with ``--no-finalize``), then is scored the same way:

- official Testing accuracy and macro F1, and the leak-free subset (``train.audit``);
- accuracy per source of the external development set (its four known classes; the ``other``
  lesions have no right answer among them, so the share called "no tumour" is given instead);
- parameters, FLOPs per scan (``torch.utils.flop_counter``), ``predict`` latency on this
  machine (``core.Classifier.predict``, PyTorch, one scan, p50), training time and machine.

Scores are those of the network alone: the served model adds calibration, the
out-of-distribution gate and flags (``python -m train.finalize``), which this comparison
leaves out. An architecture that must be trained with a smaller input or fewer epochs on this
machine gets ``--reduce ARCH:epochs=N,image_size=S``; the JSON and the page state it.

    python -m train.compare --data-dir ../shared/datasets/brain-tumor-mri \\
        --extra-data ../shared/datasets/extra-train/tcga-lgg \\
        --external ../shared/datasets/external-dev --output runs/compare
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from core.runtime import TorchRuntime
from core.constants import CLASS_NAMES, COMPARISON_NAME, OTHER_LESION_CLASS, WEIGHTS_NAME, data_dir, external_dir
from core.model import Classifier, build_network
from core.scan import read_scan
from core.weights import load_weights

from .config import TrainConfig, plain
from .data import Sample, ScanFolder, find_samples, limit_per_class, split_dirs
from .engine import predict_logits
from .evaluate import evaluate_samples, load_leak_free
from .external import find_external
from .presets import ClassificationPresetEval
from .pretrained import PRETRAINED_PACKAGES

__all__ = ["DEFAULT_ARCHS", "CompareConfig", "Schedule", "get_args_parser", "main"]

logger = logging.getLogger("train.compare")

#: The seed study's line-up: a CNN from scratch, EfficientNet (today's and a larger one), VGG16.
DEFAULT_ARCHS = ("small_cnn", "efficientnet_lite0", "efficientnet_lite1", "vgg16_bn")
_REDUCIBLE = ("epochs", "image_size")
_LATENCY_CALLS = 30


@dataclass(frozen=True)
class Schedule:
    """How one architecture is trained."""

    epochs: int
    image_size: int
    pretrained: bool
    freeze_epochs: int
    freeze_stages: int
    #: What differs from the common schedule, in words (None: nothing).
    reduced: str | None = None


@dataclass(frozen=True)
class CompareConfig:
    """What one comparison run depends on (``python -m train.compare --help``)."""

    data_dir: Path = field(default_factory=data_dir)
    extra_data: tuple[Path, ...] = ()
    external: Path | None = None
    output: Path = Path("runs/compare")
    archs: tuple[str, ...] = DEFAULT_ARCHS
    epochs: int = 4
    image_size: int = 160
    freeze_epochs: int = 1
    freeze_stages: int = 2
    synth_t2: float = 0.0
    crop_head: bool = False
    reduce: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0
    workers: int = 2
    max_per_class: int | None = None
    max_external: int | None = None
    resume: bool = False
    no_progress: bool = False

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> CompareConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        for name in ("extra_data", "archs", "reduce"):
            values[name] = tuple(values[name])
        return cls(**values)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.compare",
        description="Train several architectures with the project's recipe and compare them on Testing, "
        "its leak-free subset and the external development set; writes one JSON.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=data_dir(), help="folder holding Training/ and Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--extra-data", type=Path, action="append", default=[], metavar="DIR", help="extra training source, as for python -m train (repeatable)")
    parser.add_argument("--external", type=Path, default=None, help="external development set, SOURCE/CLASS/FILE (default: $BTMRI_EXTERNAL if it exists; none: no external rows)")
    parser.add_argument("--output", type=Path, default=Path("runs/compare"), help="folder for one sub-folder per architecture and comparison.json")
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="timm architecture names (small_cnn: core.nets)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs for every architecture (pre-trained ones spend --freeze-epochs of them on the head)")
    parser.add_argument("--image-size", type=int, default=160, help="square input size for every architecture")
    parser.add_argument("--freeze-epochs", type=int, default=1, help="head-only epochs of the pre-trained architectures (0 for those trained from scratch)")
    parser.add_argument("--freeze-stages", type=int, default=2, help="stages kept at their ImageNet weights in pre-trained EfficientNets (0 for the others)")
    parser.add_argument("--synth-t2", type=float, default=0.0, help="T2-like images from extra sources' FLAIR and T1, as for python -m train")
    parser.add_argument("--crop-head", action="store_true", help="crop every scan to its head, in training and scoring, as for python -m train")
    parser.add_argument(
        "--reduce", action="append", default=[], metavar="ARCH:KEY=N[,KEY=N]",
        help=f"a smaller schedule for one architecture on a slow machine, keys {list(_REDUCIBLE)}, "
        "e.g. vgg16_bn:epochs=2,image_size=96 (repeatable; stated in the JSON)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per training batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and augmentation")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--max-per-class", type=int, default=None, help="at most N images per class and split (smoke tests)")
    parser.add_argument("--max-external", type=int, default=None, help="at most N external scans per source and class (smoke tests)")
    parser.add_argument("--resume", action="store_true", help="keep architectures already finished in OUTPUT (their comparison entry is reused)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def parse_reductions(items: Sequence[str], archs: Sequence[str]) -> dict[str, dict[str, int]]:
    """``["vgg16_bn:epochs=2,image_size=96"]`` -> ``{"vgg16_bn": {"epochs": 2, "image_size": 96}}``."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        arch, _, spec = item.partition(":")
        if arch not in archs:
            raise SystemExit(f"--reduce {item!r}: {arch!r} is not one of --archs {list(archs)}.")
        values: dict[str, int] = {}
        for part in filter(None, spec.split(",")):
            key, _, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in _REDUCIBLE or not value.strip().isdigit() or int(value) < 1:
                raise SystemExit(f"--reduce {item!r}: expected KEY=N with KEY in {list(_REDUCIBLE)} and N >= 1, got {part!r}.")
            values[key] = int(value)
        if not values:
            raise SystemExit(f"--reduce {item!r}: nothing to reduce; expected e.g. {arch}:epochs=2.")
        out[arch] = values
    return out


def schedule_for(arch: str, config: CompareConfig, reductions: dict[str, dict[str, int]]) -> Schedule:
    """The common schedule, with ImageNet weights where they ship offline, and any reduction."""
    pretrained = arch in PRETRAINED_PACKAGES
    change = reductions.get(arch, {})
    epochs = change.get("epochs", config.epochs)
    image_size = change.get("image_size", config.image_size)
    reduced = ", ".join(
        f"{key.replace('_', ' ')} {value} instead of {getattr(config, key)}"
        for key, value in change.items() if value != getattr(config, key)
    ) or None
    return Schedule(
        epochs=epochs,
        image_size=image_size,
        pretrained=pretrained,
        freeze_epochs=min(config.freeze_epochs, epochs - 1) if pretrained else 0,
        freeze_stages=config.freeze_stages if pretrained and arch.startswith("efficientnet") else 0,
        reduced=reduced,
    )


def train_config(arch: str, schedule: Schedule, config: CompareConfig, folder: Path) -> TrainConfig:
    """The project's recipe for ``arch`` with ``schedule``: weights, card and history only."""
    return TrainConfig(
        data_dir=config.data_dir, extra_data=tuple(config.extra_data), output=folder, arch=arch,
        epochs=schedule.epochs, image_size=schedule.image_size, freeze_epochs=schedule.freeze_epochs,
        freeze_stages=schedule.freeze_stages, synth_t2=config.synth_t2, crop_head=config.crop_head,
        batch_size=config.batch_size, seed=config.seed,
        workers=config.workers, no_pretrained=not schedule.pretrained, max_per_class=config.max_per_class,
        no_progress=config.no_progress, no_finalize=True,
    )


def flops_per_scan(net: torch.nn.Module, image_size: int) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts two)."""
    net = net.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


def _limit_external(scans, n: int | None):
    if not n:
        return scans
    kept, seen = [], {}
    for scan in scans:
        key = (scan.source, scan.label)
        if seen.get(key, 0) < n:
            kept.append(scan)
            seen[key] = seen.get(key, 0) + 1
    return kept


def external_scores(net: torch.nn.Module, scans, image_size: int, workers: int, crop_head: bool = False) -> dict[str, Any]:
    """Per source: accuracy on the four known classes, per-class recall, and for the ``other``
    lesions the share called "no tumour" (network alone, no gate or flags)."""
    other_index = len(CLASS_NAMES)  # a label no prediction can match
    samples = [
        Sample(s.path, CLASS_NAMES.index(s.label) if s.label in CLASS_NAMES else other_index, source=s.source)
        for s in scans
    ]
    loader = DataLoader(ScanFolder(samples, ClassificationPresetEval(image_size, crop_head=crop_head)), batch_size=64, num_workers=workers)
    logits, _, targets = predict_logits(TorchRuntime(net), loader, desc="external", progress=False)
    predicted = logits.argmax(1)
    out: dict[str, Any] = {}
    for source in sorted({s.source for s in samples}):
        mask = np.array([s.source == source for s in samples])
        known = mask & (targets != other_index)
        entry: dict[str, Any] = {"n_images": int(known.sum())}
        if known.any():
            entry["accuracy"] = float((predicted[known] == targets[known]).mean())
            entry["recall"] = {
                name: float((predicted[known & (targets == i)] == i).mean())
                for i, name in enumerate(CLASS_NAMES) if (known & (targets == i)).any()
            }
        other = mask & (targets == other_index)
        if other.any():
            entry["other_lesions"] = int(other.sum())
            entry["other_called_no_tumour"] = float((predicted[other] == CLASS_NAMES.index("notumor")).mean())
        out[source] = entry
    return out


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def _history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
    return [
        {"epoch": r["epoch"], "seconds": r["seconds"], **{f"{side}_{k}": r[side][k] for side in ("train", "val") for k in keys}}
        for r in history
    ]


def compare_one(arch: str, schedule: Schedule, config: CompareConfig, test_samples, leak_free, external) -> dict[str, Any]:
    """Train ``arch`` with ``schedule``, then score it; returns its comparison entry."""
    from .train import main as train_main

    folder = config.output / arch
    logger.info("%s: training (%s)", arch, schedule)
    result = train_main(train_config(arch, schedule, config, folder))
    state, card = load_weights(folder / WEIGHTS_NAME)
    net = build_network(arch, num_classes=len(CLASS_NAMES))
    net.load_state_dict(state)
    net.eval()
    entry: dict[str, Any] = {
        "arch": arch,
        "pretrained": "ImageNet" if schedule.pretrained else None,
        "schedule": {k: v for k, v in vars(schedule).items() if k != "pretrained"},
        "params": int(sum(p.numel() for p in net.parameters())),
        "flops_per_scan": flops_per_scan(net, schedule.image_size),
        "training_s": card["training"]["wall_time_s"],
        "hardware": card["training"]["hardware"],
        "best_epoch": card["training"]["best_epoch"],
        "validation": {k: card["validation"][k] for k in ("accuracy", "macro_f1", "n_images")},
        "history": _history(result["history"]),
    }
    if test_samples:
        with torch.inference_mode():
            report = evaluate_samples(
                TorchRuntime(net), test_samples, schedule.image_size, 64, config.workers, perturb=False, crop_head=config.crop_head,
                root=config.data_dir / "Testing", leak_free=leak_free,
            )
        for name, key in (("testing", "testing"), ("leak_free", "testing_leak_free")):
            if key in report["evaluations"]:
                r = report["evaluations"][key]
                entry[name] = {"n_images": r["n_images"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    if external:
        with torch.inference_mode():
            entry["external"] = external_scores(net, external, schedule.image_size, config.workers, config.crop_head)
    return entry


def main(args: argparse.Namespace | CompareConfig) -> dict[str, Any]:
    """Train and score every architecture; writes and returns the comparison."""
    config = args if isinstance(args, CompareConfig) else CompareConfig.from_namespace(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(set(config.archs)) != len(config.archs):
        raise SystemExit(f"--archs lists an architecture twice: {config.archs}.")
    for arch in config.archs:
        build_network(arch)  # unknown names fail here, before any training
    reductions = parse_reductions(config.reduce, config.archs)
    schedules = {arch: schedule_for(arch, config, reductions) for arch in config.archs}
    config.output.mkdir(parents=True, exist_ok=True)
    path = config.output / COMPARISON_NAME

    _, test_dir = split_dirs(config.data_dir)
    test_samples = find_samples(test_dir)
    if config.max_per_class:
        test_samples = limit_per_class(test_samples, config.max_per_class)
    leak_free = load_leak_free(None) if not config.max_per_class else None
    external_root = config.external or (external_dir() if external_dir().is_dir() else None)
    external = _limit_external(find_external(external_root), config.max_external) if external_root else []

    previous = {}
    if config.resume and path.is_file():
        previous = {e["arch"]: e for e in json.loads(path.read_text())["architectures"]}
    entries = []
    started = time.perf_counter()
    for arch in config.archs:
        same = previous.get(arch, {}).get("schedule") == {k: v for k, v in vars(schedules[arch]).items() if k != "pretrained"}
        entry = previous[arch] if same else compare_one(arch, schedules[arch], config, test_samples, leak_free, external)
        entries.append(entry)
        result = _result(config, entries, external_root, len(test_samples), time.perf_counter() - started)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        logger.info(
            "%s: Testing %.4f, leak-free %s; wrote %s",
            arch, entry.get("testing", {}).get("accuracy", float("nan")), entry.get("leak_free", {}).get("accuracy"), path,
        )
    if test_samples:
        # Latency last, all architectures in the same rounds: a busy moment slows them alike.
        latencies = interleaved_latencies(config, read_scan(test_samples[0].path))
        for entry in entries:
            entry["predict_ms"] = latencies[entry["arch"]]
        result = _result(config, entries, external_root, len(test_samples), time.perf_counter() - started)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        logger.info("predict p50: %s ms; wrote %s", {a: v["p50"] for a, v in latencies.items()}, path)
    return result


def interleaved_latencies(config: CompareConfig, image: Image.Image, calls: int = _LATENCY_CALLS) -> dict[str, dict[str, Any]]:
    """``Classifier.predict`` latency (PyTorch back-end, one scan, one pass as the app predicts)
    of every trained architecture, measured in interleaved rounds: each round calls each
    architecture once."""
    classifiers = {}
    for arch in config.archs:
        state, card = load_weights(config.output / arch / WEIGHTS_NAME)
        net = build_network(arch, num_classes=len(CLASS_NAMES))
        net.load_state_dict(state)
        classifiers[arch] = Classifier(net, card)
    for classifier in classifiers.values():
        for _ in range(3):
            classifier.predict(image)
    times: dict[str, list[float]] = {arch: [] for arch in classifiers}
    for _ in range(calls):
        for arch, classifier in classifiers.items():
            start = time.perf_counter()
            classifier.predict(image)
            times[arch].append((time.perf_counter() - start) * 1000)
    out = {}
    for arch, values in times.items():
        values.sort()
        out[arch] = {"p50": round(statistics.median(values), 2), "p90": round(values[int(0.9 * (len(values) - 1))], 2),
                     "calls": calls, "interleaved": True, "threads": torch.get_num_threads()}
    return out


def _result(config: CompareConfig, entries, external_root, n_testing: int, seconds: float) -> dict[str, Any]:
    return {
        "schema": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {f.name: plain(getattr(config, f.name)) for f in fields(config)},
        "class_names": list(CLASS_NAMES),
        "machine": _machine(),
        "common": {
            "epochs": config.epochs,
            "image_size": config.image_size,
            "freeze_epochs": config.freeze_epochs,
            "freeze_stages": config.freeze_stages,
            "synth_t2": config.synth_t2,
            "crop_head": config.crop_head,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "extra_data": [Path(p).name for p in config.extra_data],
            "max_per_class": config.max_per_class,
        },
        "scores": "network alone (no calibration, gate or flags); external: the four known classes, "
        f"'{OTHER_LESION_CLASS}' lesions as the share called no tumour",
        "testing_images": n_testing,
        "external": str(external_root) if external_root else None,
        "seconds": round(seconds, 1),
        "architectures": entries,
    }


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))
