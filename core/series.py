"""Reading whole series: DICOM files (any number of series, any order, zipped or in folders,
compressed, multi-frame) and NIfTI volumes, into ordered 8-bit slices.

:func:`read_series` is the one place where DICOM files are grouped into series (by
SeriesInstanceUID, then orientation and size) and ordered along the slice normal. Each series
gets one grey window, from percentiles of its head voxels, so its slices keep their relation to
each other (a stored WindowCenter/Width is not used: it can change from slice to slice, and a
NIfTI volume has none, so one rule serves both). Only MR series are read: another modality (CT,
a secondary capture) is refused and named among the problems. No patient tag is read into a field, a message or a log: a series is
named by its number and description, a NIfTI volume by its file name.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import re
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image

from .constants import (
    MAX_SERIES_BYTES,
    MAX_SERIES_FILES,
    MAX_SERIES_SLICES,
    MAX_SERIES_VOXELS,
    SERIES_GAP_FACTOR,
    SERIES_HEAD_FRACTION,
    SERIES_PLANES,
    SERIES_WINDOW_PERCENTILES,
)
from .dicom import decode_pixels, grey_pixels, has_pixel_data, photometric, quiet_pydicom
from .pixels import tag_float
from .pixels import ScanError, check_dimensions
from .sequence import SequenceInfo, sequence_from_dataset, sequence_from_name

__all__ = ["Series", "SeriesError", "SeriesSource", "read_series", "SERIES_PLANES"]

logger = logging.getLogger(__name__)

#: One input: a path (file or folder), the bytes, a binary file object, or an upload's
#: ``(name, bytes)`` (the name only tells a ``.zip``, ``.nii`` or ``.nii.gz``).
SeriesSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, tuple[str, bytes]]

SERIES_FORMATS = ("dicom", "nifti")

#: Positions closer than this along the normal are one position (a file sent twice).
_SAME_POSITION_MM = 0.01
#: Values the grey window is estimated on, at most (evenly strided over the whole volume).
_WINDOW_SAMPLE = 2_000_000
#: Fewer head voxels than this fraction of the sample: the window is taken over all voxels.
_MIN_HEAD_FRACTION = 0.01
#: A normal further than this from the nearest axis is named as oblique in the notes.
_OBLIQUE_DEGREES = 20.0
#: Names in folders and zips that are never a scan and are skipped without a word.
_JUNK = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|DICOMDIR$|Thumbs\.db$)", re.IGNORECASE)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Display directions (LPS, the DICOM patient axes) per plane: where the column index grows and
#: where the row index grows (downwards). Radiological: the patient's right on the viewer's left,
#: anterior (axial) or superior (coronal, sagittal) at the top, the face on the left (sagittal).
_DISPLAY_AXES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
#: The plane whose normal is each patient axis (x, y, z).
_AXIS_PLANES = ("sagittal", "coronal", "axial")
#: Plain names of modalities that are refused.
_MODALITY_NAMES = {
    "CT": "CT",
    "OT": "secondary capture (OT)",
    "SC": "secondary capture (SC)",
    "PT": "PET (PT)",
    "NM": "nuclear medicine (NM)",
    "US": "ultrasound (US)",
    "CR": "X-ray (CR)",
    "DX": "X-ray (DX)",
    "MG": "mammography (MG)",
    "XA": "angiography (XA)",
    "SEG": "segmentation (SEG)",
    "SR": "report (SR)",
    "PR": "presentation state (PR)",
    "RTSTRUCT": "radiotherapy structure (RTSTRUCT)",
    "KO": "key object selection (KO)",
}


class SeriesError(ScanError):
    """Nothing readable was found; ``problems`` holds ``(file_name, reason)`` for each file."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)


@dataclass(frozen=True)
class Series:
    """One series (or NIfTI volume) as ordered 8-bit grey slices, ready for ``predict_batch``.

    ``slices`` are PIL images (mode ``"L"``, one size) in the order of ``positions_mm``, each
    slice's position along the slice normal (increasing towards the patient's right, anterior or
    superior). ``pixel_spacing`` is (row, column) in mm. ``window`` is the (low, high) of the
    one grey window, in the rescaled stored values (negated for MONOCHROME1). ``problems`` are
    ``(file_name, reason)`` for the files of this read that could not be used (its own files and
    those that belong to no series); ``notes`` are plain sentences about what was done.
    """

    name: str
    slices: tuple[Image.Image, ...] = field(repr=False)
    positions_mm: tuple[float, ...] = field(repr=False)
    pixel_spacing: tuple[float, float]
    plane: str
    sequence: SequenceInfo
    source: str
    format: str
    window: tuple[float, float]
    problems: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _set = object.__setattr__
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Series.name must be a non-empty string, not {self.name!r}")
        if not isinstance(self.source, str):
            raise ValueError(f"Series.source must be a string, not {self.source!r}")
        slices = tuple(self.slices)
        if not slices:
            raise ValueError("Series.slices must hold at least one slice, not none")
        for index, image in enumerate(slices):
            if not isinstance(image, Image.Image) or image.mode != "L":
                kind = getattr(image, "mode", type(image).__name__)
                raise ValueError(f"Series.slices[{index}] must be an 8-bit grey ('L') image, not {kind!r}")
            if image.size != slices[0].size:
                raise ValueError(
                    f"Series.slices[{index}] is {image.size}, not the size of slice 0 {slices[0].size}"
                )
        _set(self, "slices", slices)
        positions = tuple(float(p) for p in self.positions_mm)
        if len(positions) != len(slices):
            raise ValueError(
                f"Series.positions_mm holds {len(positions)} positions for {len(slices)} slices"
            )
        if not all(math.isfinite(p) for p in positions):
            raise ValueError(f"Series.positions_mm must be finite, not {positions!r}")
        if any(b <= a for a, b in zip(positions, positions[1:])):
            raise ValueError(f"Series.positions_mm must increase, not {positions!r}")
        _set(self, "positions_mm", positions)
        spacing = tuple(float(s) for s in self.pixel_spacing)
        if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"Series.pixel_spacing must be two positive mm values, not {self.pixel_spacing!r}")
        _set(self, "pixel_spacing", spacing)
        if self.plane not in SERIES_PLANES:
            raise ValueError(f"Series.plane must be one of {SERIES_PLANES}, not {self.plane!r}")
        if not isinstance(self.sequence, SequenceInfo):
            raise ValueError(f"Series.sequence must be a SequenceInfo, not {type(self.sequence).__name__}")
        if self.format not in SERIES_FORMATS:
            raise ValueError(f"Series.format must be one of {SERIES_FORMATS}, not {self.format!r}")
        window = tuple(float(v) for v in self.window)
        if len(window) != 2 or not all(math.isfinite(v) for v in window) or window[1] <= window[0]:
            raise ValueError(f"Series.window must be (low, high) with low < high, not {self.window!r}")
        _set(self, "window", window)
        problems = tuple(tuple(p) for p in self.problems)
        if not all(len(p) == 2 and all(isinstance(v, str) for v in p) for p in problems):
            raise ValueError(f"Series.problems must be (file_name, reason) strings, not {self.problems!r}")
        _set(self, "problems", problems)
        notes = tuple(self.notes)
        if not all(isinstance(n, str) for n in notes):
            raise ValueError(f"Series.notes must be strings, not {self.notes!r}")
        _set(self, "notes", notes)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def slice_step_mm(self) -> float | None:
        """The median distance between neighbouring slices; None for a single slice."""
        if len(self.positions_mm) < 2:
            return None
        return float(np.median(np.diff(self.positions_mm)))


def read_series(sources: Sequence[SeriesSource] | SeriesSource, plane: str = "axial") -> list[Series]:
    """Read every series in ``sources`` (DICOM files, folders, ``.zip``, ``.nii``, ``.nii.gz``).

    Folders are searched recursively; files that are neither DICOM nor NIfTI are skipped and
    named in each series' ``problems``, as are damaged files and series of another modality
    than MR. ``plane`` is the cut of a near-isotropic NIfTI volume (one of ``SERIES_PLANES``);
    other volumes are cut across their thickest voxels, DICOM series as acquired. DICOM series
    come first, by series number, then NIfTI volumes in input order.

    Raises:
        ValueError: ``plane`` is not one of ``SERIES_PLANES``.
        ScanError: the input is over a limit (slices, pixels, files, bytes), or a path is missing.
        SeriesError: no MR series could be read; its ``problems`` name each file and why.
    """
    if plane not in SERIES_PLANES:
        raise ValueError(f"plane must be one of {SERIES_PLANES}, not {plane!r}")
    start = time.perf_counter()
    if _is_one_source(sources):
        sources = [sources]
    found = _Found()
    for index, source in enumerate(sources):
        _collect(source, index, found)
    if not found.dicoms and not found.niftis and not found.problems:
        raise SeriesError("No files were found in the input.")

    budget = _Budget()
    groups = _dicom_groups(found, plane)
    for group in groups:
        budget.take(len(group.frames), sum(f.rows * f.cols for f in group.frames))
    series = [s for s in (_dicom_series(g, found) for g in groups) if s is not None]
    for item in found.niftis:
        try:
            series.append(_nifti_series(item, plane, budget))
        except _LimitError:
            raise
        except ScanError as exc:
            found.problems.append((item.name, str(exc)))

    if not series:
        raise SeriesError(_nothing_message(found.problems), found.problems)
    shared = tuple(found.problems)
    series = [_with_problems(s, shared) for s in series]
    logger.info(
        "read %d series (%d slices) in %.2f s; %d files unusable",
        len(series), sum(len(s) for s in series), time.perf_counter() - start, len(shared),
    )
    return series


# ---------------------------------------------------------------------------- inputs
@dataclass
class _Item:
    """One file to read: where it is (a path or its bytes), its name for problems, its input."""

    name: str
    origin: str
    path: Path | None = None
    data: bytes | None = None
    force: bool = False  # a DICOM file without the 128-byte preamble

    def open(self):
        return str(self.path) if self.path is not None else io.BytesIO(self.data)

    def head(self, size: int = 352) -> bytes:
        if self.data is not None:
            return self.data[:size]
        with open(self.path, "rb") as handle:
            return handle.read(size)

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()

    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size


@dataclass
class _Found:
    dicoms: list[_Item] = field(default_factory=list)
    niftis: list[_Item] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0

    def count(self, n: int = 1) -> None:
        self.files += n
        if self.files > MAX_SERIES_FILES:
            raise _LimitError(
                f"The input holds more than {MAX_SERIES_FILES} files; up to {MAX_SERIES_FILES} "
                "files (zip contents included) are read at once."
            )


class _LimitError(ScanError):
    """An input over a limit: the whole read is refused."""


class _Budget:
    """Slices and pixels taken so far by this read, against the limits."""

    def __init__(self) -> None:
        self.slices = 0
        self.voxels = 0

    def take(self, slices: int, voxels: int) -> None:
        self.slices += slices
        self.voxels += voxels
        if self.slices > MAX_SERIES_SLICES:
            raise _LimitError(
                f"The input holds more than {MAX_SERIES_SLICES} slices; up to {MAX_SERIES_SLICES} "
                "slices are read at once."
            )
        if self.voxels > MAX_SERIES_VOXELS:
            raise _LimitError(
                f"The input holds {self.voxels / 1e6:.0f} million pixels or more; up to "
                f"{MAX_SERIES_VOXELS // 1_000_000} million (about "
                f"{MAX_SERIES_VOXELS // (512 * 512)} slices of 512 x 512) are read at once."
            )


def _is_one_source(sources) -> bool:
    if isinstance(sources, (str, Path, bytes, bytearray, memoryview)) or hasattr(sources, "read"):
        return True
    return (
        isinstance(sources, tuple) and len(sources) == 2 and isinstance(sources[0], str)
        and isinstance(sources[1], (bytes, bytearray, memoryview))
    )


def _too_big(size: int) -> str:
    amount = f"more than {MAX_SERIES_BYTES // 2**20}" if size > MAX_SERIES_BYTES + 1 else f"{size / 2**20:.0f}"
    return f"The file is {amount} MB; files up to {MAX_SERIES_BYTES // 2**20} MB are read."


def _collect(source, index: int, found: _Found) -> None:
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], str):
        name, data = source
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ScanError(f"An upload's (name, data) must hold bytes, not a {type(data).__name__}.")
        label = Path(name).name or f"file {index + 1}"
        found.count()
        _sort_item(_Item(label, label, data=bytes(data)), found, allow_zip=True)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            _collect_folder(path, found)
        elif path.is_file():
            found.count()
            _sort_item(_Item(path.name, str(path), path=path), found, allow_zip=True)
        else:
            raise ScanError(f"No file or folder found at {str(path)!r}.")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        found.count()
        label = f"file {index + 1}"
        _sort_item(_Item(label, label, data=bytes(source)), found, allow_zip=True)
    elif hasattr(source, "read"):
        label = Path(str(getattr(source, "name", "") or "")).name or f"file {index + 1}"
        try:
            data = source.read(MAX_SERIES_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise ScanError("A file could not be read.") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise ScanError("Files must be opened in binary mode.")
        found.count()
        _sort_item(_Item(label, label, data=bytes(data)), found, allow_zip=True)
    else:
        raise ScanError(
            f"Cannot read a series from a {type(source).__name__}; pass paths, bytes, "
            "binary file objects or (name, bytes) pairs."
        )


def _collect_folder(folder: Path, found: _Found) -> None:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or _JUNK.search(relative):
            continue
        found.count()
        _sort_item(_Item(relative, str(folder), path=path), found, allow_zip=True)


def _sort_item(item: _Item, found: _Found, allow_zip: bool) -> None:
    """Put ``item`` with the DICOM files, the NIfTI volumes or the problems (zips are opened)."""
    lower = item.name.lower()
    try:
        head, size = item.head(), item.size()
    except OSError:
        found.problems.append((item.name, "The file could not be read."))
        return
    if size > MAX_SERIES_BYTES:
        found.problems.append((item.name, _too_big(size)))
    elif not head:
        found.problems.append((item.name, "The file is empty."))
    elif lower.endswith(".zip") or head.startswith(b"PK\x03\x04"):
        if allow_zip:
            _collect_zip(item, found)
        else:
            found.problems.append((item.name, "A zip inside a zip is not opened."))
    elif lower.endswith(_NIFTI_SUFFIXES) or _is_nifti(head):
        found.niftis.append(item)
    elif head.startswith(b"\x1f\x8b"):
        if _is_nifti(_gunzip_head(item)):
            found.niftis.append(item)
        else:
            found.problems.append((item.name, "A compressed file that is not a NIfTI volume."))
    elif head[128:132] == b"DICM":
        found.dicoms.append(item)
    elif head[:2] in (b"\x08\x00", b"\x02\x00") and len(head) >= 132:  # DICOM without a preamble
        item.force = True
        found.dicoms.append(item)
    else:
        found.problems.append((item.name, "Not a DICOM or NIfTI file."))


def _is_nifti(head: bytes) -> bool:
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")


def _gunzip_head(item: _Item) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(item.head(1 << 16))) as stream:
            return stream.read(352)
    except (OSError, EOFError, zlib.error):
        return b""


def _collect_zip(item: _Item, found: _Found) -> None:
    """The zip's members as items: declared sizes checked first, each read with a cap."""
    try:
        archive = zipfile.ZipFile(item.path if item.path is not None else io.BytesIO(item.data))
    except (zipfile.BadZipFile, OSError, ValueError):
        found.problems.append((item.name, "The zip archive is damaged and could not be opened."))
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _JUNK.search(m.filename)]
        found.count(len(members))
        declared = sum(m.file_size for m in members)
        if declared > MAX_SERIES_BYTES:
            raise _LimitError(
                f"The zip archive unpacks to {declared / 2**20:.0f} MB; archives up to "
                f"{MAX_SERIES_BYTES // 2**20} MB unpacked are read."
            )
        for member in members:
            name = member.filename
            if member.flag_bits & 0x1:
                found.problems.append((name, "The file is encrypted in the zip archive."))
                continue
            try:
                data = _read_member(archive, member)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error):
                found.problems.append((name, "The file could not be unpacked from the zip archive."))
                continue
            _sort_item(_Item(name, item.origin, data=data), found, allow_zip=False)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than its declared size (a lying header fails fast)."""
    chunks, total, cap = [], 0, member.file_size
    with archive.open(member) as stream:
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise zipfile.BadZipFile("member longer than declared")
            chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------- DICOM
@dataclass
class _Frame:
    """One 2-D image of a DICOM file (a file of a series, or a frame of a multi-frame file)."""

    item: int
    frame: int | None
    uid: str
    number: int | None
    description: str
    modality: str
    rows: int
    cols: int
    orientation: tuple[float, ...] | None
    position: np.ndarray | None
    spacing: tuple[float, float] | None
    step: float | None
    location: float | None
    sop_uid: str
    instance: int
    slope: float
    intercept: float
    monochrome1: bool
    sequence: SequenceInfo
    note: str | None = None
    pixels: np.ndarray | None = None


@dataclass
class _Group:
    frames: list[_Frame]
    part: int = 1
    parts: int = 1
    notes: list[str] = field(default_factory=list)
    plane: str = "axial"
    normal: np.ndarray | None = None
    positions: list[float] = field(default_factory=list)


def _dicom_groups(found: _Found, plane: str) -> list[_Group]:
    """The MR frames of all DICOM files, grouped into series, ordered and without duplicates;
    other modalities refused (one problem per series)."""
    frames: list[_Frame] = []
    for index, item in enumerate(found.dicoms):
        try:
            frames += _read_header(item, index)
        except _LimitError:
            raise
        except ScanError as exc:
            found.problems.append((item.name, str(exc)))
    by_key: dict[tuple, list[_Frame]] = {}
    for frame in frames:
        orientation = None if frame.orientation is None else tuple(round(v, 2) + 0.0 for v in frame.orientation)
        by_key.setdefault((frame.uid, orientation, frame.rows, frame.cols), []).append(frame)
    parts = Counter(key[0] for key in by_key)
    seen: Counter = Counter()
    groups = []
    for key, members in by_key.items():
        seen[key[0]] += 1
        modality = members[0].modality
        if modality not in ("MR", ""):
            found.problems.append((found.dicoms[members[0].item].name, _refusal(modality, members)))
            continue
        group = _Group(members, part=seen[key[0]], parts=parts[key[0]])
        if not modality:
            group.notes.append("The files do not say their modality; they were read as MR.")
        _order(group, plane)
        groups.append(group)
    groups.sort(key=lambda g: (g.frames[0].number is None, g.frames[0].number or 0, g.frames[0].description, g.part))
    return groups


def _refusal(modality: str, members: list[_Frame]) -> str:
    label = _MODALITY_NAMES.get(modality, re.sub(r"[^A-Z0-9_ ]", "", modality.upper())[:16] or "non-MR")
    files = len({f.item for f in members})
    count = f" ({files} files)" if files > 1 else ""
    return f"The files hold a {label} series{count}, not MR; only MR series are read."


def _read_header(item: _Item, index: int) -> list[_Frame]:
    import pydicom

    try:
        with quiet_pydicom():
            dataset = pydicom.dcmread(item.open(), stop_before_pixels=True, force=item.force)
            return _frames_of(dataset, index)
    except ScanError:
        raise
    except Exception as exc:  # pydicom raises many types on hostile files
        raise ScanError("The DICOM file is damaged and could not be read.") from exc


def _frames_of(ds, index: int) -> list[_Frame]:
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if not rows or not cols:
        raise ScanError("The DICOM file holds no image.")
    check_dimensions(cols, rows, "DICOM image")
    count = max(1, _int(ds.get("NumberOfFrames")) or 1)
    if count > MAX_SERIES_SLICES:
        raise _LimitError(
            f"A file holds {count} frames; up to {MAX_SERIES_SLICES} slices are read at once."
        )
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None) or []
    common = dict(
        item=index,
        uid=str(ds.get("SeriesInstanceUID", "") or ""),
        number=_int(ds.get("SeriesNumber")),
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        rows=rows,
        cols=cols,
        monochrome1=photometric(ds) == "MONOCHROME1",
        sequence=sequence_from_dataset(ds),
    )
    frames = []
    for number in range(count):
        own = per_frame[number] if number < len(per_frame) else None
        items = (own, shared)  # per frame, then shared, then the top level
        orientation = _floats(_functional(ds, items, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        # A frame of a multi-frame file has a position of its own, or is placed in frame order.
        top = None if count > 1 else ds
        position = _floats(_functional(top, (own,), "PlanePositionSequence", "ImagePositionPatient"), 3)
        spacing = _floats(_functional(ds, items, "PixelMeasuresSequence", "PixelSpacing"), 2)
        if spacing is None:
            spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
        slope = tag_float(_functional(ds, items, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = tag_float(_functional(ds, items, "PixelValueTransformationSequence", "RescaleIntercept"))
        step = tag_float(_functional(ds, items, "PixelMeasuresSequence", "SpacingBetweenSlices"))
        step = step or tag_float(_functional(ds, items, "PixelMeasuresSequence", "SliceThickness"))
        frames.append(
            _Frame(
                frame=number if count > 1 else None,
                orientation=orientation,
                position=None if position is None else np.array(position),
                spacing=None if spacing is None or min(spacing) <= 0 else (spacing[0], spacing[1]),
                step=step if step and step > 0 else None,
                location=None if count > 1 else tag_float(ds.get("SliceLocation")),
                sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
                instance=number if count > 1 else (_int(ds.get("InstanceNumber")) or 0),
                slope=1.0 if slope is None or slope == 0 else slope,
                intercept=intercept or 0.0,
                **common,
            )
        )
    if count > 1 and any(f.position is None for f in frames):
        base = _floats(_functional(ds, (shared,), "PlanePositionSequence", "ImagePositionPatient"), 3)
        _place_in_frame_order(frames, base)
    return frames


def _place_in_frame_order(frames: list[_Frame], base: tuple[float, ...] | None) -> None:
    """Frames without their own position: the shared position plus the slice step, in order."""
    step = frames[0].step or 1.0
    orientation = frames[0].orientation
    normal = np.cross(orientation[:3], orientation[3:]) if orientation else np.array([0.0, 0.0, 1.0])
    origin = np.array(base) if base else np.zeros(3)
    for number, frame in enumerate(frames):
        frame.position = origin + number * step * normal
        frame.note = f"The frames hold no positions of their own: placed {step:g} mm apart in frame order."


def _functional(top, items, sequence: str, keyword: str):
    """``keyword`` inside ``sequence`` of the first functional group item of ``items`` that has
    it, else at the top level of the dataset ``top`` (None: not there)."""
    for item in items:
        inner = None if item is None else item.get(sequence, None)
        if inner:
            value = inner[0].get(keyword, None)
            if value not in (None, ""):
                return value
    value = None if top is None else top.get(keyword, None)
    return None if value in (None, "") else value


def _first_item(ds, keyword: str):
    sequence = ds.get(keyword, None)
    return sequence[0] if sequence else None


def _order(group: _Group, plane: str) -> None:
    """Order the frames along the slice normal and drop repeated positions.

    The positions are ImagePositionPatient along the normal; SliceLocation where those repeat
    and it does not (some exports write one position into every file); the instance number,
    one slice step apart, where neither is usable.
    """
    frames = _unique_images(group)
    group.notes += sorted({f.note for f in frames if f.note})
    normal = _normal(frames[0].orientation)
    if normal is not None:
        axis = int(np.argmax(np.abs(normal)))
        group.normal, group.plane = normal, _AXIS_PLANES[axis]
        angle = math.degrees(math.acos(min(1.0, abs(float(normal[axis])))))
        if angle > _OBLIQUE_DEGREES:
            group.notes.append(f"The slices are oblique, about {angle:.0f} degrees from the {group.plane} plane.")
    else:
        group.plane = plane
        group.notes.append(f"The files do not state the slice orientation: the slices were taken as {plane}.")
    positions = None
    if normal is not None and all(f.position is not None for f in frames):
        positions = [float(f.position @ normal) for f in frames]
    locations = [f.location for f in frames]
    if None not in locations and _distinct(locations) > _distinct(positions or [0.0]):
        if positions is not None:
            group.notes.append("The files repeat their slice positions: SliceLocation was used instead.")
        positions = locations
    if positions is None or (_distinct(positions) == 1 and len(frames) > 1):
        step = frames[0].step or 1.0
        by_instance = sorted(frames, key=lambda f: (f.instance, f.item, f.frame or 0))
        positions, frames = [k * step for k in range(len(frames))], by_instance
        group.notes.append(f"The files hold no usable slice positions: ordered by instance number, {step:g} mm apart.")
    keyed = sorted(zip(positions, ((f.instance, f.item, f.frame or 0) for f in frames), frames), key=lambda t: t[:2])
    kept: list[tuple[float, _Frame]] = []
    for position, _, frame in keyed:
        if kept and position - kept[-1][0] < _SAME_POSITION_MM:
            continue
        kept.append((position, frame))
    dropped = len(keyed) - len(kept)
    if dropped:
        group.notes.append(
            "1 duplicate position removed." if dropped == 1 else f"{dropped} duplicate positions removed."
        )
    group.frames = [f for _, f in kept]
    group.positions = [p for p, _ in kept]


def _unique_images(group: _Group) -> list[_Frame]:
    """The frames without repeats of one image (the same SOPInstanceUID and frame given twice)."""
    seen: set[tuple[str, int]] = set()
    frames = []
    for frame in group.frames:
        key = (frame.sop_uid, frame.frame or 0)
        if frame.sop_uid and key in seen:
            continue
        seen.add(key)
        frames.append(frame)
    repeats = len(group.frames) - len(frames)
    if repeats:
        group.notes.append("1 file given twice was read once." if repeats == 1 else f"{repeats} files given twice were read once.")
    return frames


def _normal(orientation: tuple[float, ...] | None) -> np.ndarray | None:
    """The unit slice normal, pointing to the patient's right, anterior or superior."""
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    normal = normal / length
    axis = int(np.argmax(np.abs(normal)))
    if normal[axis] * (1.0 if axis == 2 else -1.0) < 0:  # LPS: x points left, y posterior
        normal = -normal
    return normal


def _distinct(values: list[float]) -> int:
    return len({round(v / _SAME_POSITION_MM) for v in values})


def _dicom_series(group: _Group, found: _Found) -> Series | None:
    """Decode the group's files, window them once and make the series (None: nothing decoded)."""
    problems: list[tuple[str, str]] = []
    by_item: dict[int, list[_Frame]] = {}
    for frame in group.frames:
        by_item.setdefault(frame.item, []).append(frame)
    failed: set[int] = set()
    for index, frames in by_item.items():
        try:
            _decode_file(found.dicoms[index], frames)
        except ScanError as exc:
            problems.append((found.dicoms[index].name, str(exc)))
            failed.add(index)
    kept = [(p, f) for p, f in zip(group.positions, group.frames) if f.item not in failed]
    if not kept:
        found.problems += problems
        return None
    positions = [p for p, _ in kept]
    frames = [f for _, f in kept]
    first = frames[0]
    notes = list(group.notes) + _gap_notes(positions)
    transpose, flip_rows, flip_cols = _display_flips(first.orientation, group.plane)
    spacing = first.spacing
    if spacing is None:
        spacing = (1.0, 1.0)
        notes.append("The files do not state the pixel spacing: 1 mm was assumed.")
    if transpose:
        spacing = (spacing[1], spacing[0])
    scale = [(-f.slope, -f.intercept) if f.monochrome1 else (f.slope, f.intercept) for f in frames]
    low, high, blank = _window([f.pixels for f in frames], scale)
    if blank:
        notes.append("The series is blank (one grey level).")
    slices = []
    for frame, (a, b) in zip(frames, scale):
        grey = _to_uint8(frame.pixels, a, b, low, high)
        frame.pixels = None
        if transpose:
            grey = grey.T
        if flip_rows:
            grey = grey[::-1]
        if flip_cols:
            grey = grey[:, ::-1]
        slices.append(Image.fromarray(np.ascontiguousarray(grey)))
    return Series(
        name=_dicom_name(group),
        slices=tuple(slices),
        positions_mm=tuple(positions),
        pixel_spacing=spacing,
        plane=group.plane,
        sequence=first.sequence,
        source=_dicom_source(found, frames),
        format="dicom",
        window=(low, high),
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _decode_file(item: _Item, frames: list[_Frame]) -> None:
    """Decode one file's pixel data into its ``frames`` (a Modality LUT applied here).

    Raises:
        ScanError: the file holds no pixel data, or it is damaged or of another size.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        with quiet_pydicom():
            dataset = pydicom.dcmread(item.open(), force=item.force)
            if not has_pixel_data(dataset):
                raise ScanError("The DICOM file holds no image (it has no pixel data).")
            pixels = grey_pixels(decode_pixels(dataset), photometric(dataset))
            if "ModalityLUTSequence" in dataset:
                pixels = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
                for frame in frames:
                    frame.slope, frame.intercept = 1.0, 0.0
    except ScanError:
        raise
    except Exception as exc:  # pydicom raises many types on hostile files
        raise ScanError("The DICOM file is damaged and could not be read.") from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    for frame in frames:
        if (frame.frame or 0) >= len(pixels) or pixels.shape[1:] != (frame.rows, frame.cols):
            raise ScanError("The image data does not match the size the file declares.")
        frame.pixels = pixels[frame.frame or 0]


def _dicom_name(group: _Group) -> str:
    first = group.frames[0]
    name = "Series" if first.number is None else f"Series {first.number}"
    if first.description:
        name += f": {first.description}"
    if group.parts > 1:
        name += f" (part {group.part} of {group.parts}, {first.cols} x {first.rows})"
    return name


def _dicom_source(found: _Found, frames: list[_Frame]) -> str:
    origins = sorted({found.dicoms[f.item].origin for f in frames})
    if len(origins) == 1:
        return origins[0]
    paths = [found.dicoms[f.item].path for f in frames]
    if all(p is not None for p in paths):
        return os.path.commonpath([str(p.parent) for p in paths])
    return f"{len(origins)} inputs"


def _display_flips(orientation, plane: str) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that show a stored slice the radiological way."""
    if orientation is None:
        return False, False, False
    row, col = np.array(orientation[:3]), np.array(orientation[3:])  # column index, row index
    across, down = (np.array(v) for v in _DISPLAY_AXES[plane])
    transpose = abs(row @ across) + abs(col @ down) < abs(col @ across) + abs(row @ down)
    if transpose:
        row, col = col, row
    return transpose, bool(col @ down < 0), bool(row @ across < 0)


def _gap_notes(positions: list[float]) -> list[str]:
    if len(positions) < 3:
        return []
    steps = np.diff(positions)
    median = float(np.median(steps))
    notes = []
    for index, step in enumerate(steps):
        if step > SERIES_GAP_FACTOR * median:
            missing = max(1, round(step / median) - 1)
            slices = "1 slice" if missing == 1 else f"{missing} slices"
            notes.append(
                f"{slices} missing between {positions[index]:.1f} mm and {positions[index + 1]:.1f} mm."
            )
    return notes


# ---------------------------------------------------------------------------- intensity
def _window(arrays: list[np.ndarray], scale: list[tuple[float, float]]) -> tuple[float, float, bool]:
    """One (low, high) for the whole volume: percentiles of its head voxels (``True``: blank).

    ``scale`` holds each slice's (a, b) with display value ``a * stored + b``.
    """
    total = sum(a.size for a in arrays)
    step = max(1, -(-total // _WINDOW_SAMPLE))
    width = arrays[0].shape[-1]
    while step > 1 and math.gcd(step, width) != 1:  # a stride sharing a factor with the row
        step += 1  # would sample a few columns only
    samples = [a.ravel()[::step].astype(np.float64) * s + b for a, (s, b) in zip(arrays, scale)]
    sample = np.concatenate(samples)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0, True
    floor = float(sample.min())
    top = float(np.percentile(sample, 99))
    head = sample[sample > floor + SERIES_HEAD_FRACTION * (top - floor)]
    if head.size < _MIN_HEAD_FRACTION * sample.size:
        head = sample
    low, high = (float(v) for v in np.percentile(head, SERIES_WINDOW_PERCENTILES))
    if high <= low:
        low, high = float(head.min()), float(head.max())
    if high <= low:
        return low, low + 1.0, True
    return low, high, False


def _to_uint8(values: np.ndarray, a: float, b: float, low: float, high: float) -> np.ndarray:
    factor = 255.0 / (high - low)
    grey = values.astype(np.float32)
    grey *= a * factor
    grey += (b - low) * factor
    if values.dtype.kind == "f":
        np.nan_to_num(grey, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(grey, 0.0, 255.0, out=grey)
    grey += 0.5
    return grey.astype(np.uint8)


# ---------------------------------------------------------------------------- NIfTI
def _nifti_series(item: _Item, plane: str, budget: _Budget) -> Series:
    """One NIfTI volume cut across its thickest voxels (or in ``plane`` when near-isotropic)."""
    import nibabel as nib

    image = _load_nifti(item)
    shape = tuple(int(n) for n in image.shape)
    notes = []
    if len(shape) < 3:
        raise ScanError("The NIfTI file holds a 2-D image, not a volume.")
    if len(shape) > 3 and math.prod(shape[3:]) > 1:
        notes.append(f"{len(shape)}-D file: first volume used.")
    budget.take(0, math.prod(shape[:3]))
    try:
        if len(shape) > 3:
            image = image.slicer[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
        zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
        affine = np.asarray(canonical.affine, dtype=np.float64)
        codes = "".join(nib.aff2axcodes(affine))
    except ScanError:
        raise
    except Exception as exc:  # nibabel raises many types on damaged files
        raise ScanError("The NIfTI file is damaged and could not be read.") from exc
    if data.dtype.kind not in "buif":
        raise ScanError("The NIfTI volume holds colour or complex values, not MR intensities.")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if codes != "RAS" or not all(math.isfinite(z) and z > 0 for z in zooms):
        raise ScanError("The NIfTI file's orientation (its affine) is damaged.")
    axis = _nifti_axis(data.shape, zooms, plane, notes)
    budget.take(data.shape[axis], 0)
    rest = [a for a in range(3) if a != axis]
    check_dimensions(data.shape[rest[0]], data.shape[rest[1]], "NIfTI slice")
    normal = affine[:3, axis] / np.linalg.norm(affine[:3, axis])
    positions = [float((affine[:3, 3] + k * affine[:3, axis]) @ normal) for k in range(data.shape[axis])]
    cuts = [data[(slice(None),) * axis + (k,)] for k in range(data.shape[axis])]
    low, high, blank = _window(cuts, [(1.0, 0.0)] * len(cuts))
    if blank:
        notes.append("The volume is blank (one grey level).")
    # (first remaining axis, second) -> rows along the second, reversed (anterior or superior at
    # the top), columns along the first, reversed (the patient's right, or the face, on the left).
    slices = tuple(
        Image.fromarray(np.ascontiguousarray(_to_uint8(cut, 1.0, 0.0, low, high).T[::-1, ::-1])) for cut in cuts
    )
    stem = _nifti_stem(item.name)
    return Series(
        name=stem,
        slices=slices,
        positions_mm=tuple(positions),
        pixel_spacing=(round(zooms[rest[1]], 4), round(zooms[rest[0]], 4)),
        plane=_AXIS_PLANES[axis],
        sequence=sequence_from_name(stem),
        source=item.origin if item.path is None else str(item.path),
        format="nifti",
        window=(low, high),
        notes=tuple(notes),
    )


def _nifti_axis(shape: tuple[int, ...], zooms: list[float], plane: str, notes: list[str]) -> int:
    """The axis to cut across (0 sagittal, 1 coronal, 2 axial in RAS)."""
    single = [a for a in range(3) if shape[a] == 1]
    if single:
        return single[-1]
    if max(zooms) / min(zooms) < 1.2:
        notes.append(f"The voxels are nearly isotropic: the volume was cut in the {plane} plane.")
        return _AXIS_PLANES.index(plane)
    return int(np.argmax(zooms))


def _nifti_stem(name: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.nii|\.gz)$", "", Path(name).name, flags=re.IGNORECASE)
    return stem or "NIfTI volume"


def _load_nifti(item: _Item):
    import nibabel as nib

    try:
        if item.path is not None and item.path.suffix.lower() in (".nii", ".gz"):
            return nib.load(str(item.path))  # reads the header; the data only as it is used
        data = item.read()
        if data[:2] == b"\x1f\x8b":
            data = _gunzip(data)
        for kind in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                return kind.from_bytes(data)
            except Exception:  # not this kind: try the next
                continue
        raise ScanError("The NIfTI file is damaged and could not be read.")
    except ScanError:
        raise
    except Exception as exc:  # nibabel raises many types on damaged files
        raise ScanError("The NIfTI file is damaged and could not be read.") from exc


def _gunzip(data: bytes) -> bytes:
    """Decompress with a cap, so a small file that unpacks to gigabytes fails fast."""
    chunks, total = [], 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > MAX_SERIES_BYTES:
                raise _LimitError(
                    f"The compressed file unpacks to more than {MAX_SERIES_BYTES // 2**20} MB; "
                    f"files up to {MAX_SERIES_BYTES // 2**20} MB unpacked are read."
                )
            chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------- helpers
def _with_problems(series: Series, shared: tuple[tuple[str, str], ...]) -> Series:
    if not shared:
        return series
    from dataclasses import replace

    return replace(series, problems=series.problems + shared)


def _nothing_message(problems: list[tuple[str, str]]) -> str:
    if not problems:
        return "No MR series could be read from the input."
    reasons = Counter(reason for _, reason in problems)
    reason, count = reasons.most_common(1)[0]
    others = len(problems) - count
    message = f"No MR series could be read from the input. {reason}"
    if others:
        message += f" ({others} other file{'s' if others > 1 else ''} could not be used either.)"
    return message


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != n or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers
