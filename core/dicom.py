"""DICOM reading with pydicom: one 2D slice to an 8-bit grey image, and the decoding steps that
whole-series reading (:mod:`core.series`) shares with it.

Only pixel data and the few display tags are used; no patient tag is read, logged or kept,
and no error message quotes a tag value.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from .pixels import WARNINGS_LOCK, ScanError, check_dimensions, stretch_to_uint8

__all__ = [
    "read_dicom",
    "STORED_WINDOW",
    "PERCENTILE_STRETCH",
    "decode_pixels",
    "grey_pixels",
    "has_pixel_data",
    "photometric",
    "quiet_pydicom",
]

logger = logging.getLogger(__name__)

#: Values of ``image.info["display_transform"]``.
STORED_WINDOW = "stored window"
PERCENTILE_STRETCH = "percentile stretch"

_DAMAGED = "The DICOM file is damaged and could not be read."


def read_dicom(data: bytes) -> Image.Image:
    """Decode one single-frame DICOM image.

    Rescale slope and intercept are applied, then the stored window (centre and width) if
    the file has one, else a 0.5-99.5 percentile stretch; MONOCHROME1 is inverted. The
    choice is recorded in ``image.info["display_transform"]`` so the app can announce it; the
    sequence its tags give (``core.sequence.sequence_from_dataset``) in ``image.info["sequence"]``.

    Raises:
        ScanError: the file is damaged, holds no image or several frames, or its pixel data
            is compressed in a way no installed decoder handles.
    """
    import pydicom

    try:
        with quiet_pydicom():
            dataset = pydicom.dcmread(io.BytesIO(data))
            image = _to_image(dataset)
            image.info["sequence"] = _sequence(dataset)
            return image
    except ScanError:
        raise
    except Exception as exc:  # pydicom raises many types on hostile files
        raise ScanError(_DAMAGED) from exc


def _sequence(dataset):
    from .sequence import SequenceInfo, sequence_from_dataset

    try:
        return sequence_from_dataset(dataset)
    except (ValueError, TypeError):  # odd tag values: the image decides instead
        return SequenceInfo()


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence warnings while pydicom reads or decodes.

    pydicom warns about odd values and quotes them (a malformed birth date, say): keep them out
    of the logs. The filter is process-wide, so reads take turns (``WARNINGS_LOCK``).
    """
    with WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def has_pixel_data(dataset) -> bool:
    return any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def photometric(dataset) -> str:
    """The PhotometricInterpretation, upper case, ``""`` when absent."""
    return str(dataset.get("PhotometricInterpretation", "")).strip().upper()


def grey_pixels(pixels: np.ndarray, photometric_name: str) -> np.ndarray:
    """Colour pixel data (RGB or YBR, channels last) averaged to grey; grey data unchanged."""
    if pixels.ndim >= 3 and pixels.shape[-1] in (3, 4) and photometric_name.startswith(("RGB", "YBR")):
        return pixels[..., :3].mean(axis=-1)
    return pixels


def _to_image(dataset) -> Image.Image:
    from pydicom.pixels import apply_modality_lut

    if not has_pixel_data(dataset):
        raise ScanError("The DICOM file holds no image (it has no pixel data).")
    frames = _int_tag(dataset, "NumberOfFrames", default=1)
    if frames > 1:
        raise ScanError(
            f"The DICOM file holds {frames} frames (a series or a volume); "
            "export and upload one 2D slice."
        )
    rows, cols = _int_tag(dataset, "Rows"), _int_tag(dataset, "Columns")
    check_dimensions(cols, rows, "DICOM image")
    pixels = decode_pixels(dataset)

    interpretation = photometric(dataset)
    pixels = grey_pixels(pixels, interpretation)
    if pixels.ndim != 2:
        raise ScanError("The DICOM file does not hold a single 2D slice.")
    check_dimensions(pixels.shape[1], pixels.shape[0], "DICOM image")

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    window = _stored_window(dataset)
    if window is not None:
        grey = _apply_window(values, *window)
        transform = STORED_WINDOW
    else:
        grey = stretch_to_uint8(values)
        transform = PERCENTILE_STRETCH
    if interpretation == "MONOCHROME1":  # stored so that high values are dark
        grey = 255 - grey
    image = Image.fromarray(grey, mode="L")
    image.info["display_transform"] = transform
    return image


def _int_tag(dataset, keyword: str, default: int = 0) -> int:
    value = dataset.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ScanError(_DAMAGED) from exc


def decode_pixels(dataset) -> np.ndarray:
    """Decode the pixel data (all frames); a compression without a decoder gets its own message.

    Raises:
        ScanError: no installed decoder handles the compression, or the data is damaged.
    """
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and getattr(syntax, "is_compressed", False) and not _can_decode(syntax):
        raise ScanError(
            f"The DICOM image is stored with a compression ({_syntax_name(syntax)}) that this "
            "app cannot decode. Export it uncompressed or as PNG."
        )
    if syntax is not None and _would_hang(dataset, syntax):
        raise ScanError(
            f"The DICOM image data ({_syntax_name(syntax)}) is damaged and could not be decoded."
        )
    try:
        return dataset.pixel_array
    except Exception as exc:
        if syntax is not None and getattr(syntax, "is_compressed", False):
            message = (
                f"The DICOM image data ({_syntax_name(syntax)}) is damaged and could not be "
                "decoded. Export it uncompressed or as PNG."
            )
        else:
            message = "The DICOM image data is damaged or incomplete (the file may be truncated)."
        raise ScanError(message) from exc


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


def _would_hang(dataset, syntax) -> bool:
    """True for JPEG 2000 data on which pydicom's parameter parser never returns.

    pydicom (3.0) walks the boxes of a JP2 file by their lengths to find the codestream; a box
    length of 0 (or a last box cut to under 4 bytes) makes it loop forever. A 300-byte upload
    must not freeze a worker, so such data is refused before decoding.
    """
    from pydicom.encaps import generate_fragments, generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes

    if syntax not in JPEG2000TransferSyntaxes or "PixelData" not in dataset:
        return False
    pixel_data = dataset.PixelData
    offsets = None
    if "ExtendedOffsetTable" in dataset and "ExtendedOffsetTableLengths" in dataset:
        offsets = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    chunks = [*generate_fragments(pixel_data)]
    frames = max(1, _int_tag(dataset, "NumberOfFrames", default=1))
    chunks += generate_frames(pixel_data, number_of_frames=frames, extended_offsets=offsets)
    return any(not _jp2_box_walk_ends(chunk) for chunk in chunks)


def _jp2_box_walk_ends(codestream: bytes) -> bool:
    """Replays pydicom's walk over the JP2 boxes; False where it would not end."""
    if not codestream.startswith(_JP2_SIGNATURE):
        return True
    offset, total = 12, len(codestream)
    while offset < total:
        length = int.from_bytes(codestream[offset : offset + 4], byteorder="big")
        if codestream[offset + 4 : offset + 8] == b"jp2c":
            return True
        if length == 0:
            return False
        offset += length
    return True


def _can_decode(syntax) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except Exception:  # no decoder known for this transfer syntax
        return False


def _syntax_name(syntax) -> str:
    name = str(getattr(syntax, "name", "") or "")
    return name if name and name != str(syntax) else "an unknown encoding"


def _apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _stored_window(dataset) -> tuple[float, float] | None:
    """The first stored (centre, width) window as (low, high), or None if absent or unusable.

    The bounds follow the DICOM linear VOI function (PS3.3 C.11.2.1.2.1): values up to
    ``c - 0.5 - (w - 1) / 2`` are black, values above ``c - 0.5 + (w - 1) / 2`` white.
    """
    try:
        centre, width = dataset.WindowCenter, dataset.WindowWidth
    except AttributeError:
        return None
    try:
        centre, width = float(_first(centre)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(centre) or not np.isfinite(width) or width <= 1:
        return None
    return centre - 0.5 - (width - 1) / 2.0, centre - 0.5 + (width - 1) / 2.0


def _first(value):
    from collections.abc import Sequence

    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value
