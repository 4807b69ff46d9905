"""``python -m core SCAN_OR_FOLDER [...]``: classify scans; one JSON line (or CSV row) per scan.

Folders are searched recursively for scans (the extensions in
:data:`core.constants.SUPPORTED_EXTENSIONS`). Data-loader workers read and decode the scans in
parallel; prediction runs in this process with :meth:`core.Classifier.predict_batch`, so every
result equals that of :meth:`core.Classifier.predict` on the same scan. A file that cannot be
read gets a record with its error message, and the run goes on; the exit status is 1 when any
scan failed, 0 otherwise.

With ``--series`` each path (DICOM files, a folder, a ``.zip``, a ``.nii``/``.nii.gz``) is read
on its own with :func:`core.read_series` and answered once per series with
:meth:`core.Classifier.predict_series`: one :func:`core.results.series_record` per series (a
folder holding several series gives several), with ``--slices`` followed by its
:func:`core.results.slice_records`. The next path is read in a thread while one is predicted. A
path that cannot be read gets an error record, the run goes on, and the exit status is 1.

Examples::

    python -m core scan.jpg other.dcm                   # JSON lines on stdout
    python -m core /data/scans --format csv --output results.csv --workers 4
    python -m core --series dicom_folder/ volume.nii.gz --slices --format csv --output series.csv
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .constants import SERIES_PLANES, SUPPORTED_EXTENSIONS, USER_SEQUENCES
from .results import result_record, series_record, series_records, write_csv, write_series_csv
from .scan import ScanError, read_scan
from .sequence import user_sequence

if TYPE_CHECKING:
    from .model import Classifier
    from .series import Series

FORMATS = ("jsonl", "csv")
DEFAULT_PLANE = "axial"

logger = logging.getLogger("core.cli")


def _lines(*paragraphs: str, width: int = 88) -> str:
    """Paragraphs wrapped for the help text (which keeps the examples' lines as written)."""
    return "\n".join(textwrap.fill(p, width) if not p.startswith("  ") else p for p in paragraphs)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description=_lines(
            "Classify brain MRI slices: files, or folders searched recursively for scans "
            f"({', '.join(SUPPORTED_EXTENSIONS)}). Prints one JSON object per scan per line (or CSV); "
            "unreadable files get an error record. Exit status 1 when any scan failed.",
            "With --series, classify whole series instead (DICOM series, NIfTI volumes): one record per series.",
        ),
        epilog=_lines(
            "examples:",
            "  python -m core scan.jpg /data/scans --format csv --output results.csv",
            "  python -m core --series dicom_folder/ study.zip volume.nii.gz --slices --output series.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scans", nargs="+", metavar="PATH",
        help="image or DICOM files, or folders of them; with --series: DICOM files, folders, .zip, .nii or .nii.gz",
    )
    parser.add_argument("--weights", default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--format", default="jsonl", help=f"output format, one of {FORMATS} (default: jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="write the results to this file (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=32, help="scans (or slices) per forward pass (default: 32)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="data-loader processes reading scans (default: min(4, CPUs); 0 reads in this process; not used by --series)",
    )
    parser.add_argument(
        "--tta", action="store_true",
        help="average each prediction with the mirrored scan's, and flag scans whose mirror image gets another class",
    )
    parser.add_argument(
        "--sequence", default=None, metavar="NAME",
        help=f"the sequence of every scan (or series), one of {', '.join(USER_SEQUENCES)}: overrides the DICOM tags "
        "and the image recogniser (default: tags, else the image)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    series = parser.add_argument_group(
        "whole series",
        _lines(
            "Each PATH is read on its own; a folder or zip holding several series gives one record per series: "
            "series, source, n_slices, assessed, plane, sequence, label, confidence, flags, key_slices, support, "
            "error. CSV: a 'series' row, then its 'slice' rows.",
        ),
    )
    series.add_argument("--series", action="store_true",
                        help="answer once per series (DICOM series or NIfTI volume) instead of once per scan")
    series.add_argument("--slices", action="store_true",
                        help="with --series: also one record per slice, after its series' record")
    series.add_argument(
        "--plane", default=None,
        help=f"with --series: the plane a near-isotropic NIfTI volume is cut in, one of {SERIES_PLANES} "
        f"(default: {DEFAULT_PLANE}); other volumes are cut across their thickest voxels, DICOM as acquired",
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.format not in FORMATS:
        raise SystemExit(f"--format {args.format!r} is not one of {FORMATS}.")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers < 0:
        raise SystemExit(f"--workers must be 0 or more, got {args.workers}.")
    if args.sequence is not None:
        try:
            user_sequence(args.sequence)
        except ValueError as exc:
            raise SystemExit(f"--sequence: {exc}") from None
    if args.plane is not None and args.plane not in SERIES_PLANES:
        raise SystemExit(f"--plane {args.plane!r} is not one of {SERIES_PLANES}.")
    if not args.series and (args.slices or args.plane is not None):
        option = "--slices" if args.slices else "--plane"
        raise SystemExit(f"{option} applies to whole series only: add --series.")


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


# ---------------------------------------------------------------------- series inputs
def _read_one(path: str, plane: str) -> tuple[list[Series] | None, str | None]:
    """The series in one path, or the message that says why it could not be read."""
    from .series import read_series

    try:
        return read_series([path], plane=plane), None
    except ScanError as exc:  # SeriesError too
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the run
        logger.warning("unexpected %s reading a series input", type(exc).__name__)
        return None, f"Unexpected error reading the series ({type(exc).__name__})."


class _ReadAhead:
    """Each path read with :func:`core.read_series` on its own, in a thread, one path ahead of
    the caller: the first while the model loads, the next while one is predicted (so at most two
    inputs are held at once). Iterating gives ``(path, series or None, error or None)``."""

    def __init__(self, paths: Sequence[str], plane: str):
        self.paths, self.plane = list(paths), plane
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-series")
        self._next = self._submit(0)

    def _submit(self, index: int) -> Future | None:
        if index >= len(self.paths):
            return None
        return self._pool.submit(_read_one, self.paths[index], self.plane)

    def __iter__(self) -> Iterator[tuple[str, list[Series] | None, str | None]]:
        for index, path in enumerate(self.paths):
            found, error = self._next.result()
            self._next = self._submit(index + 1)
            yield path, found, error

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _log_reading(index: int, found: list[Series]) -> None:
    """What the reader set aside, by counts and plain notes: no file name, no patient tag."""
    unusable = {problem for series in found for problem in series.problems}
    if unusable:
        logger.warning("input %d: %d file(s) could not be used (not MR, not DICOM or NIfTI, or damaged)",
                       index + 1, len(unusable))
    for series in found:
        logger.info("input %d: %d slices, %s, %s; %s", index + 1, len(series), series.plane, series.sequence.name,
                    " ".join(series.notes) or "no notes")


# ---------------------------------------------------------------------- outputs
class _Writer:
    """Records as JSON lines or CSV (``write_table``: :func:`core.results.write_csv` for scans,
    :func:`core.results.write_series_csv` for series)."""

    def __init__(self, stream: TextIO, fmt: str, write_table: Callable[..., None] = write_csv):
        self.stream, self.fmt, self.write_table = stream, fmt, write_table
        if fmt == "csv":
            write_table([], stream)

    def write(self, record: dict[str, Any]) -> None:
        self.write_all([record])

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        if self.fmt == "jsonl":
            self.stream.writelines(json.dumps(record) + "\n" for record in records)
        else:
            self.write_table(records, self.stream, header=False)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with io.open(path, "w", encoding="utf-8", newline="") as stream:
        yield stream


# ---------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    _check_args(args)
    return _classify_series(args) if args.series else _classify_scans(args)


def _classify_scans(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .model import load_model

    files = find_scans(args.scans)
    if not files:
        raise SystemExit(f"No scans to classify in {args.scans!r}.")
    # Worker processes pay off only beyond one batch.
    workers = args.workers if len(files) > args.batch_size else 0
    batches = _batches(files, args.batch_size, workers)
    model = load_model(args.weights, device=args.device, tta=args.tta)

    failed = 0
    with _output(args.output) as stream:
        writer = _Writer(stream, args.format)
        with tqdm(total=len(files), unit="scan", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in batches:
                readable = [(path, image) for path, image, error in batch if error is None]
                images = [image for _, image in readable]
                given = [user_sequence(args.sequence)] * len(images) if args.sequence is not None else None
                predictions = iter(model.predict_batch(images, batch_size=args.batch_size, sequences=given) if images else [])
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
    if failed and not args.no_progress:
        print(f"{failed} of {len(files)} scans could not be read", file=sys.stderr)
    return 1 if failed else 0


def _classify_series(args: argparse.Namespace) -> int:
    """One record per series of each path (each read on its own), with ``--slices`` its slice
    records after it; exit status 1 when any path could not be read."""
    from .model import load_model

    paths = list(args.scans)
    with _ReadAhead(paths, args.plane or DEFAULT_PLANE) as inputs:
        model = load_model(args.weights, device=args.device, tta=args.tta)
        with _output(args.output) as stream:
            failed = _write_series(model, inputs, _Writer(stream, args.format, write_series_csv), args)
    if failed and not args.no_progress:
        print(f"{failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


def _write_series(model: Classifier, inputs: _ReadAhead, writer: _Writer, args: argparse.Namespace) -> int:
    """Predict and write each input's series as it is read; returns how many inputs failed."""
    from tqdm import tqdm

    failed = 0
    # The total grows as each input is read: its slices are known only then.
    with tqdm(total=0, unit="slice", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for index, (path, found, error) in enumerate(inputs):
            if error is not None:
                failed += 1
                writer.write(series_record(None, path, error))
            else:
                _log_reading(index, found)
                for series in found:
                    bar.total += len(series)
                    start = bar.n
                    prediction = model.predict_series(
                        series, args.batch_size, progress=lambda done, total: bar.update(start + done - bar.n),
                        sequence=user_sequence(args.sequence) if args.sequence is not None else None)
                    writer.write_all(series_records([(prediction, path, None)], slices=args.slices))
            writer.flush()
            bar.set_postfix(inputs=f"{index + 1}/{len(inputs.paths)}", **({"failed": failed} if failed else {}))
    return failed


def cli(argv: Sequence[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
