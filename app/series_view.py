"""Whole series for the review page: uploads sorted into scans and series inputs, read with
:func:`core.read_series`, scored with :meth:`core.Classifier.predict_series`, summarised,
explained slice by slice and exported.

Uploads are handled as bytes in memory; nothing is written to disk. Logs name an input by the
first 12 hex digits of its digest only: neither file names nor DICOM tags are logged.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import io
import logging
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from app.overlay import overlay_heatmap
from app.review import (
    AS_READ, OUTSIDE_TRAINING_TEXT, UNEXPECTED_ERROR_TEXT, ScanAnalysis, analyse_image, analyse_scan, digest_of, sequence_text,
)
from core import results as core_results
from core.constants import CLASS_LABELS, CLASS_NAMES, NEGATIVE_CLASS, SUPPORTED_EXTENSIONS
from core.model import Classifier
from core.pixels import ScanError
from core.results import series_flag_text
from core.sequence import SequenceInfo, user_sequence
from core.series import Series, SeriesError, read_series
from core.series_rule import KeySlice, SeriesPrediction

__all__ = [
    "HEATMAPS_PER_SERIES",
    "NO_FLAG_TEXT",
    "SERIES_SUFFIXES",
    "UPLOAD_TYPES",
    "SeriesAnalysis",
    "SeriesInput",
    "SeriesRead",
    "analyse_series",
    "answer_text",
    "is_series_file",
    "key_slice_text",
    "reads_under_sequences",
    "release_freed_memory",
    "review_text",
    "sequence_text",
    "series_inputs",
    "series_under_sequence",
    "series_results_csv",
    "series_rows",
    "slice_state",
    "upload_info",
    "zip_holds_nifti",
]

logger = logging.getLogger(__name__)

#: Uploads read as (part of) a series; everything else is a single scan.
SERIES_SUFFIXES = (".dcm", ".zip", ".nii", ".nii.gz")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: What the uploader accepts (without dots): the image types, DICOM, zips and NIfTI volumes.
UPLOAD_TYPES: tuple[str, ...] = tuple(dict.fromkeys(
    [ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS] + [ext.lstrip(".") for ext in SERIES_SUFFIXES]
))
#: The review state of a series answer without a flag.
NO_FLAG_TEXT = "No review flag"
#: Grad-CAM heatmaps kept per series (the most recently shown ones; each 8 bits a pixel).
HEATMAPS_PER_SERIES = 48
_SOURCES = {"dicom": "DICOM upload", "zip": "zip upload", "nifti": "NIfTI upload"}

#: ``progress(fraction, text)``: how far a read has come, between 0 and 1.
Progress = Callable[[float, str], None]


def is_series_file(name: str) -> bool:
    """Whether an upload is read as (part of) a series: DICOM, a zip or a NIfTI volume."""
    return name.lower().endswith(SERIES_SUFFIXES)


def upload_info(name: str, data: bytes | memoryview) -> tuple[str, bool]:
    """An upload's sha256 and whether it is (or, a zip, holds) a NIfTI volume: whether the cut
    plane applies to it. ``data`` may be a view of the upload (nothing is copied to hash it)."""
    lower = name.lower()
    nifti = lower.endswith(_NIFTI_SUFFIXES) or (lower.endswith(".zip") and zip_holds_nifti(bytes(data)))
    return digest_of(data), nifti


def zip_holds_nifti(data: bytes) -> bool:
    """Whether a zip archive lists a NIfTI volume (its directory only is read)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.lower().endswith(_NIFTI_SUFFIXES) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


@dataclass(frozen=True)
class SeriesInput:
    """One call of :func:`core.read_series`: the uploads it reads (their positions in the
    uploader) and how the page names them. All loose DICOM files go together, so that
    ``read_series`` groups them into series; each zip and each NIfTI volume is read alone."""

    kind: str  # "dicom", "zip" or "nifti"
    indices: tuple[int, ...]
    label: str

    @property
    def source(self) -> str:
        """What the read is, in the export: the kind of upload, not its file name."""
        return _SOURCES[self.kind]

    @property
    def takes_plane(self) -> bool:
        """Whether the cut plane is passed on: for NIfTI volumes (loose or zipped) only; loose
        DICOM files are read as acquired, so a plane change never rescores them."""
        return self.kind != "dicom"

    def key(self, digests: Sequence[str], plane: str) -> str:
        """The cache key of this read: its files' digests (in order) and, where it applies, the plane."""
        parts = [self.kind, *(digests[i] for i in self.indices)]
        if self.takes_plane:
            parts.append(plane)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def series_inputs(names: Sequence[str]) -> list[SeriesInput]:
    """The reads that the uploads named ``names`` make (the uploads that are no series are left out)."""
    dicoms = tuple(i for i, name in enumerate(names) if name.lower().endswith(".dcm"))
    inputs = []
    if dicoms:
        count = len(dicoms)
        inputs.append(SeriesInput("dicom", dicoms, names[dicoms[0]] if count == 1 else f"The {count} DICOM files"))
    for i, name in enumerate(names):
        lower = name.lower()
        if lower.endswith(".zip"):
            inputs.append(SeriesInput("zip", (i,), name))
        elif lower.endswith(_NIFTI_SUFFIXES):
            inputs.append(SeriesInput("nifti", (i,), name))
    return inputs


@dataclass(frozen=True)
class SeriesAnalysis:
    """One series as read and scored: its slices, the series answer and every slice's, and the
    Grad-CAM heatmaps computed so far (the slice shown only; see :meth:`heatmap`)."""

    key: str
    series: Series
    prediction: SeriesPrediction
    #: Set when ``prediction`` was made under the user's sequence (:func:`series_under_sequence`):
    #: the sequence decided without the user (tags, name, image or unknown).
    read_sequence: SequenceInfo | None = None
    _heatmaps: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.series.name

    @property
    def sequence_as_read(self) -> SequenceInfo:
        """The sequence decided without the user: what the selector's "As read" option names."""
        return self.read_sequence if self.read_sequence is not None else self.prediction.sequence

    @property
    def n_slices(self) -> int:
        return len(self.series)

    def heatmap(self, model: Classifier, index: int, target: str) -> np.ndarray:
        """The Grad-CAM heatmap of slice ``index`` for class ``target``, computed on first use and
        kept (as 8 bits a pixel) for the :data:`HEATMAPS_PER_SERIES` most recent (slice, class)."""
        if not 0 <= index < self.n_slices:
            raise ValueError(f"Slice {index} is outside this series of {self.n_slices} slices (0 to {self.n_slices - 1}).")
        if target not in CLASS_NAMES:
            raise ValueError(f"Unknown class {target!r}; choose one of {CLASS_NAMES}.")
        with self._lock:
            stored = self._heatmaps.get((index, target))
            if stored is not None:
                self._heatmaps.move_to_end((index, target))
        if stored is None:
            heat = model.explain(self.series.slices[index], target=target)
            stored = (np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            with self._lock:
                self._heatmaps[(index, target)] = stored
                while len(self._heatmaps) > HEATMAPS_PER_SERIES:
                    self._heatmaps.popitem(last=False)
        return stored.astype(np.float32) / 255.0

    def key_views(self, model: Classifier, opacity: float = 0.5) -> dict[int, tuple[Image.Image, Image.Image]]:
        """Each key slice (by index) with its Grad-CAM overlay for the series answer: what the
        report prints. Slices not recognised as a brain MRI get no overlay (the slice twice)."""
        views = {}
        for key in self.prediction.key_slices:
            image = self.series.slices[key.index]
            if self.prediction.slices[key.index].is_brain_mri:
                overlay = overlay_heatmap(image, self.heatmap(model, key.index, self.prediction.label), opacity)
            else:
                overlay = image.convert("RGB")
            views[key.index] = (image, overlay)
        return views


@dataclass(frozen=True)
class SeriesRead:
    """What one :class:`SeriesInput` gave: its series (two slices or more), the series of one
    slice (reviewed as single scans, with the scan's name), the files that could not be used
    (``(file name, reason)``), or the message that stopped the read."""

    key: str
    label: str
    source: str
    series: tuple[SeriesAnalysis, ...] = ()
    scans: tuple[tuple[str, ScanAnalysis], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()
    error: str | None = None


def analyse_series(
    model: Classifier,
    uploads: Sequence[tuple[str, bytes]],
    plane: str = "axial",
    progress: Progress | None = None,
    key: str | None = None,
    label: str = "The upload",
    source: str = "upload",
) -> SeriesRead:
    """Read ``uploads`` (``(name, bytes)``) with :func:`core.read_series` and score each series.

    A series of one slice is reviewed as a single scan: a loose DICOM file through
    :func:`app.review.analyse_scan` (as any single upload), the one slice of a zip or a volume
    as the image read. ``progress(fraction, text)`` follows the reading and the scoring;
    ``key`` names the read (default: from the uploads' digests), ``label`` and ``source`` say
    what it is on the page and in the export.
    Never raises: a read that fails gives its message in :attr:`SeriesRead.error`.
    """
    key = key or hashlib.sha256(b"".join(digest_of(data).encode() for _, data in uploads)).hexdigest()
    report = progress or (lambda fraction, text: None)
    report(0.0, f"Reading {len(uploads)} file(s)…")
    try:
        found = read_series(list(uploads), plane)
    except SeriesError as exc:
        return SeriesRead(key, label, source, problems=exc.problems, error=str(exc))
    except ScanError as exc:  # over a limit: the whole input is refused
        return SeriesRead(key, label, source, error=str(exc))
    except Exception:
        logger.exception("unexpected error reading a series input (sha256 %s)", key[:12])
        return SeriesRead(key, label, source, error=UNEXPECTED_ERROR_TEXT)
    problems = tuple(dict.fromkeys(p for series in found for p in series.problems))
    by_name: dict[str, bytes | None] = {}
    for name, data in uploads:  # a name given twice cannot tell which upload a series came from
        by_name[name] = None if name in by_name else data
    total = sum(len(series) for series in found if len(series) > 1)
    done = 0
    analyses, scans = [], []
    for number, series in enumerate(found):
        series_key = hashlib.sha256(f"{key}:{number}".encode()).hexdigest()
        if len(series) == 1:
            scans.append(_one_slice(model, series, by_name, series_key))
            continue

        def scored(count: int, of: int, before: int = done) -> None:
            report(min(1.0, (before + count) / max(total, 1)), f"Scored {before + count} of {total} slices")

        try:
            prediction = model.predict_series(series, progress=scored)
        except Exception:
            logger.exception("unexpected error scoring a series (sha256 %s)", series_key[:12])
            return SeriesRead(key, label, source, problems=problems, error=UNEXPECTED_ERROR_TEXT)
        done += len(series)
        analyses.append(SeriesAnalysis(series_key, series, prediction))
    report(1.0, f"Scored {total} slices" if total else "Read")
    return SeriesRead(key, label, source, tuple(analyses), tuple(scans), problems)


def _one_slice(model: Classifier, series: Series, by_name: Mapping[str, bytes | None], key: str) -> tuple[str, ScanAnalysis]:
    data = by_name.get(series.source) if series.format == "dicom" else None
    if data is not None:  # one loose DICOM file: exactly as a single upload is reviewed
        return series.source, analyse_scan(model, data)
    return series.name, analyse_image(model, series.slices[0], key)


def series_under_sequence(
    model: Classifier,
    analysis: SeriesAnalysis,
    choice: str | None,
    cache: MutableMapping[tuple[str, str], SeriesAnalysis],
    progress: Callable[[int, int], None] | None = None,
) -> SeriesAnalysis:
    """The series to show: ``analysis`` itself without a ``choice`` (None or ``AS_READ``), else the
    series scored again by :meth:`core.Classifier.predict_series` under the user's sequence
    ``choice`` (one of ``core.constants.USER_SEQUENCES``), once per (series key, choice), kept
    in ``cache``. Its heatmaps are shared with ``analysis`` (they do not depend on the sequence)."""
    if choice in (None, AS_READ):
        return analysis
    key = (analysis.key, choice)
    if key not in cache:
        prediction = model.predict_series(analysis.series, progress=progress, sequence=user_sequence(choice))
        cache[key] = replace(analysis, prediction=prediction, read_sequence=analysis.sequence_as_read)
    return cache[key]


def reads_under_sequences(
    model: Classifier,
    reads: Sequence[SeriesRead],
    choices: Mapping[str, str],
    cache: MutableMapping[tuple[str, str], SeriesAnalysis],
    progress: Callable[[int, int], None] | None = None,
) -> list[SeriesRead]:
    """``reads`` with each series under the sequence the user chose for it (``choices``: series
    key -> sequence; :func:`series_under_sequence`). Entries of ``cache`` for series no longer
    read are dropped."""
    shown = [replace(read, series=tuple(series_under_sequence(model, a, choices.get(a.key), cache, progress)
                                        for a in read.series)) for read in reads]
    keys = {a.key for read in reads for a in read.series}
    for stale in [k for k in cache if k[0] not in keys]:
        del cache[stale]
    return shown


# ---------------------------------------------------------------------- wording
def answer_text(prediction: SeriesPrediction) -> str:
    label = CLASS_LABELS[prediction.label]
    return f"{label} ({OUTSIDE_TRAINING_TEXT})" if prediction.outside_training else label


def review_text(prediction: SeriesPrediction) -> str:
    """The series' review state: its flags worded by :func:`core.results.series_flag_text`."""
    return "; ".join(series_flag_text(flag) for flag in prediction.flags) or NO_FLAG_TEXT


def series_rows(analyses: Sequence[SeriesAnalysis]) -> list[dict[str, object]]:
    """One row per series for the series table."""
    return [
        {
            "Series": a.name,
            "Slices": a.n_slices,
            "Assessed": a.prediction.assessed,
            "Plane": a.series.plane,
            "Sequence": sequence_text(a.prediction.sequence),
            "Answer": answer_text(a.prediction),
            "Confidence (%)": round(100.0 * a.prediction.confidence, 1) if a.prediction.assessed else None,
            "Review": review_text(a.prediction),
        }
        for a in analyses
    ]


def key_slice_text(prediction: SeriesPrediction, key: KeySlice) -> str:
    """A key slice's own answer and the probability that made it key: of the series answer, or,
    for a "no tumour" answer, of the slice's likeliest tumour class."""
    if prediction.label == NEGATIVE_CLASS:
        return f"{CLASS_LABELS[key.label]}; likeliest tumour {100 * key.probability:.0f} %"
    return f"{CLASS_LABELS[key.label]} {100 * key.probability:.0f} %"


def slice_state(prediction: SeriesPrediction, index: int) -> str:
    """How a slice counted: a key slice, assessed, or not assessed and why."""
    if any(k.index == index for k in prediction.key_slices):
        return "key slice"
    if prediction.assessed_mask[index]:
        return "assessed"
    if not prediction.slices[index].is_brain_mri:
        return "not assessed: not recognised as a brain MRI"
    return "not assessed: too little of the head in the slice"


# ---------------------------------------------------------------------- export
def series_results_csv(reads: Sequence[SeriesRead]) -> bytes:
    """The reads' results as UTF-8 CSV in ``core.results``' series schema: a row per series
    followed by one per slice, and a row with the message for each read that failed. The
    ``source`` column says what kind of upload it was, never its file name."""
    items: list[tuple[SeriesPrediction | None, str, str | None]] = []
    for read in reads:
        if read.error is not None:
            items.append((None, read.source, read.error))
        items += [(analysis.prediction, read.source, None) for analysis in read.series]
    return core_results.series_csv(items, slices=True)


# ---------------------------------------------------------------------- memory
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None with another C library (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Collect the garbage of ended sessions and give the memory freed back to the system (the
    second step where the C library is glibc). Called once after new series were read (0.3 s).

    A session's analyses sit in reference cycles (Streamlit's session objects) once it ends, and
    the server's full collections are rare (``runner.postScriptGC`` is off); and a read goes
    through hundreds of half-megabyte buffers that glibc keeps in its heaps once they are freed.
    Measured in the served app with 300-slice 512 x 512 series, one session after another:
    without this the server's RSS grew by 230 to 450 MB with each series, without bound; with
    it, RSS comes back to the same level after each."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
