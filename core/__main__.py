"""``python -m core SCAN [SCAN ...]``: one JSON line per scan."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .model import load_model
from .scan import ScanError, read_scan


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Classify brain MRI slices; prints one JSON object per scan per line.",
    )
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="image or DICOM files")
    parser.add_argument("--weights", default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    return parser


def main(args: argparse.Namespace) -> int:
    model = load_model(args.weights, device=args.device)
    failed = 0
    for path in args.scans:
        try:
            prediction = model.predict(read_scan(path))
        except ScanError as exc:
            failed += 1
            record = {"file": path, "error": str(exc)}
        else:
            record = {
                "file": path,
                "label": prediction.label,
                "confidence": prediction.confidence,
                "probabilities": prediction.probabilities,
            }
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
