"""``python -m benchmarks.experiments.gpu_rank.score RUNS OUT``: score every finished run folder
in RUNS (``model.safetensors`` and its card) on ``data/gpu/eval`` (see the package docstring):
the network alone, plain pass, on Testing, its leak-free subset and each external source.
Writes ``OUT/scores.json`` and the probabilities ``OUT/probs.npz``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.constants import CLASS_NAMES
from core.model import build_network
from core.scan import read_scan
from core.weights import load_weights
from train.presets import ClassificationPresetEval

NOTUMOR = CLASS_NAMES.index("notumor")


class _Scans(Dataset):
    def __init__(self, root: Path, rows: list[dict], image_size: int, crop_head: bool = False) -> None:
        self.root, self.rows = root, rows
        self.transform = ClassificationPresetEval(image_size, crop_head=crop_head)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(read_scan(self.root / self.rows[i]["file"]))


def score(probs: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Accuracy (%) on Testing, leak-free and each source; Radiopaedia per sequence, PMRAM per
    class, and the share of ``other`` lesions called "no tumour"."""
    y = np.array([r["label"] for r in rows])
    group = np.array([r["group"] for r in rows])
    seq = np.array([r["seq"] or "" for r in rows])
    leak_free = np.array([r["leakfree"] for r in rows])
    pred = probs.argmax(1)
    out = {"testing": (pred[group == "testing"] == y[group == "testing"]).mean(), "leakfree": (pred[leak_free] == y[leak_free]).mean()}
    for g in sorted(set(group) - {"testing"}):
        known = (group == g) & (y < len(CLASS_NAMES))
        if known.any():
            out[g] = (pred[known] == y[known]).mean()
            for s in sorted(set(seq[known]) - {""}):
                out[f"{g}_{s}"] = (pred[known & (seq == s)] == y[known & (seq == s)]).mean()
            if g == "pmram":
                for k, name in enumerate(CLASS_NAMES):
                    if (known & (y == k)).any():
                        out[f"pmram_{name}"] = (pred[known & (y == k)] == k).mean()
        other = (group == g) & (y == len(CLASS_NAMES))
        if other.any():
            out["other_called_notumor"] = (pred[other] == NOTUMOR).mean()
    return {k: round(float(v) * 100, 2) for k, v in out.items()}


def main(args: argparse.Namespace) -> None:
    root = Path(args.eval_dir)
    rows = json.loads((root / "manifest.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs: dict[tuple[int, bool], torch.Tensor] = {}  # one preprocessed copy per (size, head crop)
    scores, probs = {}, {}
    for folder in sorted(Path(args.runs).iterdir()):
        if not (folder / "model.safetensors").is_file():
            continue
        state, card = load_weights(folder / "model.safetensors")
        net = build_network(card["arch"], num_classes=len(CLASS_NAMES))
        net.load_state_dict(state)
        net.to(device).eval()
        key = (int(card["image_size"]), bool(card.get("crop_head", False)))
        if key not in inputs:
            scans = _Scans(root, rows, *key)
            inputs[key] = torch.cat(list(DataLoader(scans, batch_size=256, num_workers=args.workers))).to(device)
        x = inputs[key]
        with torch.inference_mode():
            p = torch.cat([net(x[i:i + 512]).float().softmax(1) for i in range(0, len(x), 512)]).cpu().numpy()
        scores[folder.name], probs[folder.name] = score(p, rows), p.astype(np.float16)
        print(folder.name, scores[folder.name], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    np.savez_compressed(out / "probs.npz", **probs)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs")
    parser.add_argument("out")
    parser.add_argument("--eval-dir", default="data/gpu/eval")
    parser.add_argument("--workers", type=int, default=8)
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
