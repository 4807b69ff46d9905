"""Train the sequence recogniser of :mod:`core.sequence`: T1, T1 with contrast, T2 or FLAIR, from the image.

    python -m train.sequence label --output train/sequence_labels.csv   # Kaggle labels, sheets to check
    python -m train.sequence fit --output assets/                       # the recogniser, its card entry
    python -m train.sequence ship --run runs/seq --assets assets/       # a fitted recogniser into assets/
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

**Network.** EfficientNet-Lite0 from ImageNet at :data:`SEQUENCE_IMAGE_SIZE` px on the head's
box (as the classifier sees it), four outputs, exported to ONNX (``sequence.onnx``) and
checked against PyTorch. The validation split (20 % of tcga-lgg patients, 15 % of the
labelled Kaggle scans) picks the contrast threshold: where T1 and T1C cannot be told apart
the recogniser says "T1-weighted" (``core.sequence.SequenceRecogniser``).
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
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from core.constants import CLASS_NAMES, INPUT_MEAN, INPUT_STD, NEGATIVE_CLASS, WEIGHTS_NAME, data_dir, extra_dir
from core.preprocess import crop_to_head, eval_transform, to_grayscale, to_model_tensor
from core.scan import read_scan
from core.sequence import MIN_SEQUENCE_CONFIDENCE, RECOGNISED_SEQUENCES, SEQUENCE_IMAGE_SIZE, SequenceRecogniser
from core.weights import read_model_card, sha256_file, write_model_card

from .data import Sample, find_extra_samples, find_samples, patient_split
from .presets import RandomGamma, SyntheticT2
from . import sequence_table
from .sequence_table import EXTRA_SEQUENCES

__all__ = [
    "NOTUMOR_CLUSTERS",
    "TUMOUR_CLUSTERS",
    "LabelledScan",
    "build_parser",
    "extra_labels",
    "kaggle_labels",
    "main",
    "read_labels",
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


# ---------------------------------------------------------------------------------- data
class _Scans(Dataset):
    def __init__(self, scans: Sequence[LabelledScan], size: int, train: bool, intensity: float = 0.2):
        """``intensity``: the brightness and contrast jitter; the gamma range is
        (1 / (1 + 1.25 * intensity), 1 + 1.25 * intensity)."""
        self.scans = list(scans)
        self.eval = eval_transform(size, INPUT_MEAN, INPUT_STD, crop_head=True)
        self.train = train
        self.augment = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(15)], p=0.5),
            v2.ColorJitter(brightness=intensity, contrast=intensity),
        ])
        gamma = 1 + 1.25 * intensity
        self.to_tensor = to_model_tensor(INPUT_MEAN, INPUT_STD, float_steps=(RandomGamma((1 / gamma, gamma)),))

    def __len__(self) -> int:
        return len(self.scans)

    def image(self, scan: LabelledScan) -> Image.Image:
        image = to_grayscale(read_scan(scan.path))
        if scan.partner is not None:
            t1 = np.asarray(to_grayscale(read_scan(scan.partner)))
            image = Image.fromarray(SyntheticT2.synthesise(np.asarray(image), t1))
        return image

    def __getitem__(self, index: int):
        scan = self.scans[index]
        image = self.image(scan)
        target = RECOGNISED_SEQUENCES.index(scan.sequence)
        if not self.train:
            return self.eval(image), target
        return self.to_tensor(self.augment(crop_to_head(image))), target


def _balanced_sampler(scans: Sequence[LabelledScan], epoch_size: int, seed: int):
    """Each sequence equally likely per draw (T1C outnumbers T2 seven to one)."""
    counts = Counter(s.sequence for s in scans)
    weights = torch.tensor([1.0 / counts[s.sequence] for s in scans], dtype=torch.float64)
    return torch.utils.data.WeightedRandomSampler(weights, epoch_size, replacement=True,
                                                  generator=torch.Generator().manual_seed(seed))


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


@torch.inference_mode()
def probabilities(net: torch.nn.Module, scans: Sequence[LabelledScan], size: int, workers: int = 2) -> np.ndarray:
    net.eval()
    loader = DataLoader(_Scans(scans, size, train=False), batch_size=64, num_workers=workers)
    return np.concatenate([torch.softmax(net(x), dim=1).numpy() for x, _ in loader])


def train_recogniser(train: Sequence[LabelledScan], val: Sequence[LabelledScan], args: argparse.Namespace):
    import timm

    from .pretrained import load_imagenet_weights

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=len(RECOGNISED_SEQUENCES))
    load_imagenet_weights(net, "efficientnet_lite0")
    data = _Scans(train, args.image_size, train=True, intensity=args.intensity)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * (args.epoch_size // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    history = []
    for epoch in range(args.epochs):
        net.train()
        loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers, drop_last=True,
                            sampler=_balanced_sampler(train, args.epoch_size, args.seed + epoch))
        start, total, seen = time.perf_counter(), 0.0, 0
        for x, y in loader:
            loss = loss_fn(net(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total, seen = total + float(loss) * len(y), seen + len(y)
        probs = probabilities(net, val, args.image_size, args.workers)
        truth = np.array([RECOGNISED_SEQUENCES.index(s.sequence) for s in val])
        accuracy = float((probs.argmax(1) == truth).mean())
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "val_accuracy": accuracy,
                        "seconds": time.perf_counter() - start})
        logger.info("epoch %d: loss %.3f, validation accuracy %.3f (%.0f s)", epoch + 1, total / max(seen, 1),
                    accuracy, history[-1]["seconds"])
    return net.eval(), history


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


def export_recogniser(net: torch.nn.Module, path: Path, size: int, atol: float = 1e-4) -> float:
    """``net`` as an ONNX graph at ``path`` (dynamic batch), checked against PyTorch; returns the
    largest difference of the probabilities."""
    import onnxruntime as ort

    from .export import _quiet

    net = net.cpu().float().eval()
    module = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    example = torch.rand(2, 3, size, size) * 2 - 1
    with _quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(module, (example,), input_names=["input"], output_names=["probabilities"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                    dynamo=True, verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        worst = float(np.abs(module(x).numpy() - session.run(None, {"input": x.numpy()})[0]).max())
    if worst > atol:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {atol}); {path} removed.")
    return worst


def save_recogniser(onnx_path: Path, folder: Path, contrast_threshold: float, image_size: int,
                    details: dict[str, Any]) -> dict[str, Any]:
    """Record the recogniser at ``onnx_path`` in the model card in ``folder`` (``card["sequence"]``)."""
    weights = Path(folder) / WEIGHTS_NAME
    card = read_model_card(weights)
    card["sequence"] = {"file": Path(onnx_path).name, "sha256": sha256_file(onnx_path), "image_size": int(image_size),
                        "classes": list(RECOGNISED_SEQUENCES), "contrast_threshold": float(contrast_threshold),
                        "min_confidence": MIN_SEQUENCE_CONFIDENCE, **details}
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
    fit = sub.add_parser("fit", help="train the recogniser and write sequence.onnx and the card entry")
    fit.add_argument("--data-dir", type=Path, default=data_dir())
    fit.add_argument("--extra-data", type=Path, default=extra_dir())
    fit.add_argument("--labels", type=Path, default=Path("train/sequence_labels.csv"))
    fit.add_argument("--output", type=Path, default=Path("assets"), help="folder of the model card to extend")
    fit.add_argument("--synth-t2", action=argparse.BooleanOptionalAction, default=True,
                     help="T2-like images of tcga-lgg slices as T2 examples")
    fit.add_argument("--epochs", type=int, default=4)
    fit.add_argument("--epoch-size", type=int, default=6000, help="scans drawn per epoch, sequences balanced")
    fit.add_argument("--batch-size", type=int, default=48)
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--image-size", type=int, default=SEQUENCE_IMAGE_SIZE)
    fit.add_argument("--intensity", type=float, default=0.2,
                     help="brightness and contrast jitter of training images (gamma range follows)")
    fit.add_argument("--workers", type=int, default=2)
    fit.add_argument("--seed", type=int, default=0)
    ship = sub.add_parser("ship", help="copy a fitted recogniser (sequence.onnx and its card entry) into an assets folder")
    ship.add_argument("--run", type=Path, required=True, help="folder that python -m train.sequence fit wrote to")
    ship.add_argument("--assets", type=Path, default=Path("assets"))
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
    kaggle = read_labels(args.labels, Path(args.data_dir))
    extra = extra_labels(args.extra_data, args.synth_t2)
    train, val = split(kaggle, extra, args.seed)
    logger.info("train %s, validation %s", dict(Counter(s.sequence for s in train)), dict(Counter(s.sequence for s in val)))
    net, history = train_recogniser(train, val, args)
    probs = probabilities(net, val, args.image_size, args.workers)
    threshold = contrast_threshold(probs, [s.sequence for s in val])
    recogniser = SequenceRecogniser(None, contrast_threshold=threshold, image_size=args.image_size)
    report = sequence_report(probs, [s.sequence for s in val], recogniser)
    path = Path(args.output) / "sequence.onnx"
    export_recogniser(net, path, args.image_size)
    entry = save_recogniser(path, Path(args.output), threshold, args.image_size, {
        "arch": "efficientnet_lite0",
        "synth_t2": args.synth_t2,
        "epochs": args.epochs,
        "epoch_size": args.epoch_size,
        "intensity": args.intensity,
        "seed": args.seed,
        "train_counts": dict(Counter(f"{s.source}/{s.sequence}" for s in train)),
        "val_counts": dict(Counter(f"{s.source}/{s.sequence}" for s in val)),
        "validation": report,
        "history": history,
    })
    logger.info("sequence recogniser: %s", json.dumps(report))
    return entry


def ship_recogniser(run: Path, assets: Path) -> dict[str, Any]:
    """Copy the recogniser that ``fit`` wrote to ``run`` into ``assets`` (its sha256 checked),
    with its card entry; the class x sequence table is dropped, to be counted again (``table``)."""
    import shutil

    from core.weights import checked_companion

    entry = read_model_card(Path(run) / WEIGHTS_NAME).get("sequence")
    if not entry:
        raise SystemExit(f"No recogniser in {str(run)!r}: run python -m train.sequence fit --output {run} first.")
    source = checked_companion(run, entry, "sequence.onnx", "sequence recogniser")
    shutil.copyfile(source, Path(assets) / source.name)
    card = read_model_card(Path(assets) / WEIGHTS_NAME)
    card["sequence"] = entry
    card.pop("sequence_table", None)
    write_model_card(Path(assets) / WEIGHTS_NAME, card)
    logger.info("shipped the recogniser of %s into %s; now run: python -m train.sequence table --assets %s", run, assets, assets)
    return entry


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "ship":
        return ship_recogniser(args.run, args.assets)
    if args.command == "table":
        return sequence_table.main(args)
    return _label(args) if args.command == "label" else _fit(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(build_parser().parse_args())
