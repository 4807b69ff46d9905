"""``python -m core SCAN_OR_FOLDER [...]``: classify scans; one JSON line (or CSV row) per scan.

Folders are searched recursively for scans (the extensions in
:data:`core.constants.SUPPORTED_EXTENSIONS`). Data-loader workers read and decode the scans in
parallel; prediction runs in this process with :meth:`core.Classifier.predict_batch`, so every
result equals that of :meth:`core.Classifier.predict` on the same scan. A file that cannot be
read gets a record with its error message, and the run goes on; the exit status is 1 when any
scan failed, 0 otherwise.

Examples::

    python -m core scan.jpg other.dcm                   # JSON lines on stdout
    python -m core /data/scans --format csv --output results.csv --workers 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .constants import SUPPORTED_EXTENSIONS
from .results import result_record, write_csv
from .scan import ScanError, read_scan

FORMATS = ("jsonl", "csv")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Classify brain MRI slices: files, or folders searched recursively for "
        f"scans ({', '.join(SUPPORTED_EXTENSIONS)}). Prints one JSON object per scan per line "
        "(or CSV); unreadable files get an error record. Exit status 1 when any scan failed.",
    )
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="image or DICOM files, or folders of them")
    parser.add_argument("--weights", default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--format", default="jsonl", help=f"output format, one of {FORMATS} (default: jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="write the results to this file (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=32, help="scans per forward pass (default: 32)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="data-loader processes reading scans (default: min(4, CPUs); 0 reads in this process)",
    )
    parser.add_argument(
        "--tta", action="store_true",
        help="average each prediction with the mirrored scan's, and flag scans whose mirror image gets another class",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.format not in FORMATS:
        raise SystemExit(f"--format {args.format!r} is not one of {FORMATS}.")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers < 0:
        raise SystemExit(f"--workers must be 0 or more, got {args.workers}.")


# ---------------------------------------------------------------------- inputs
def find_scans(inputs: Sequence[str]) -> list[str]:
    """Files as given (even with another extension: read_scan judges them), and each folder's
    scans, recursively, sorted. A folder without scans is reported on stderr."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            scans = sorted(
                (p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS and p.is_file()),
                key=lambda p: p.as_posix(),
            )
            if not scans:
                print(f"warning: no scans ({', '.join(SUPPORTED_EXTENSIONS)}) found under {item!r}",
                      file=sys.stderr)
            found += [str(p) for p in scans]
        else:
            found.append(item)
    return found


class _ScanFiles:
    """A map-style dataset: index -> (file, PIL image or None, error message or None).

    Runs in the data-loader workers: only reading and decoding, no model.
    """

    def __init__(self, files: Sequence[str]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, Any, str | None]:
        path = self.files[index]
        try:
            return path, read_scan(path), None
        except ScanError as exc:
            return path, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the run
            return path, None, f"Unexpected error reading the file ({type(exc).__name__})."


def _keep_list(batch: list) -> list:
    return batch


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers decode images; the main process owns the cores for the model


def _batches(files: Sequence[str], batch_size: int, workers: int) -> Iterator[list[tuple[str, Any, str | None]]]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _ScanFiles(files),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_keep_list,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
    )
    return iter(loader)  # workers start now, and read while the model loads


# ---------------------------------------------------------------------- outputs
class _Writer:
    """Records (``core.results.result_record``) as JSON lines or CSV, one per scan."""

    def __init__(self, stream: TextIO, fmt: str):
        self.stream, self.fmt = stream, fmt
        if fmt == "csv":
            write_csv([], stream)

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
        else:
            write_csv([record], self.stream, header=False)

    def flush(self) -> None:
        self.stream.flush()


# ---------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    _check_args(args)
    from tqdm import tqdm

    from .model import load_model

    files = find_scans(args.scans)
    if not files:
        raise SystemExit(f"No scans to classify in {args.scans!r}.")
    # Worker processes pay off only beyond one batch.
    workers = args.workers if len(files) > args.batch_size else 0
    batches = _batches(files, args.batch_size, workers)
    model = load_model(args.weights, device=args.device, tta=args.tta)

    stream: TextIO = sys.stdout if args.output is None else io.open(args.output, "w", encoding="utf-8", newline="")
    writer = _Writer(stream, args.format)
    failed = 0
    try:
        with tqdm(total=len(files), unit="scan", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in batches:
                readable = [(path, image) for path, image, error in batch if error is None]
                images = [image for _, image in readable]
                predictions = iter(model.predict_batch(images, batch_size=args.batch_size) if images else [])
                for path, image, error in batch:
                    if error is None:
                        writer.write(result_record(path, next(predictions)))
                    else:
                        failed += 1
                        writer.write(result_record(path, error=error))
                writer.flush()
                bar.update(len(batch))
                if failed:
                    bar.set_postfix(failed=failed)
    finally:
        if args.output is not None:
            stream.close()
    if failed and not args.no_progress:
        print(f"{failed} of {len(files)} scans could not be read", file=sys.stderr)
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
