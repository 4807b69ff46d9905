"""Reading one scan from bytes, a path or a file object into a clean PIL image.

Everything that can go wrong with an upload ends as a :class:`ScanError` whose message is
plain words for a clinician: no traceback text, no library names.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_PIXELS, MAX_SIDE, MAX_UPLOAD_BYTES
from .pixels import WARNINGS_LOCK, ScanError, check_dimensions, stretch_to_uint8

__all__ = ["ScanError", "ScanSource", "read_scan", "MAX_SIDE"]

logger = logging.getLogger(__name__)

ScanSource = Union[bytes, bytearray, memoryview, str, Path, BinaryIO]


#: Pillow plugins tried on an upload (MPO, a multi-picture JPEG, is opened by the JPEG plugin);
#: no other parser ever sees the bytes.
_PIL_OPEN_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
_PIL_FORMATS = {*_PIL_OPEN_FORMATS, "MPO"}
_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP or DICOM"
_KEPT_INFO = ("display_transform", "sequence")

# Pillow refuses (rather than warns about) anything above twice its limit; between the two,
# read_scan makes its own decision (a large JPEG is decoded at reduced scale).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def read_scan(source: ScanSource) -> Image.Image:
    """Read one 2D scan and return it as an 8-bit PIL image (mode ``"L"`` or ``"RGB"``).

    ``source`` is the file's bytes, a path (``str`` or :class:`~pathlib.Path`) or a binary file
    object. JPEG, PNG, BMP, TIFF and WebP are read with Pillow (EXIF orientation honoured,
    16-bit data stretched to 8 bits, transparency flattened onto black); DICOM with pydicom
    (see :func:`core.dicom.read_dicom`). For DICOM the returned image's ``info`` holds
    ``"display_transform"``: how the stored values were mapped to grey levels, and
    ``"sequence"``: the ``core.sequence.SequenceInfo`` of its tags; no other metadata is kept. Images larger than ``MAX_SIDE`` are downscaled.

    Raises:
        ScanError: the data is empty, damaged, too large, too small, not an image, a
            multi-frame file, or in an unsupported format.
    """
    data = _read_bytes(source)
    if not data:
        raise ScanError("The file is empty (0 bytes).")
    if _is_dicom(data):
        from .dicom import read_dicom

        image = read_dicom(data)
    else:
        image = _read_pil(data)
    image = _limit_size(image)
    # Only our own key travels with the image: EXIF, comments and other embedded text (which
    # may name the patient) are dropped here.
    image.info = {key: image.info[key] for key in _KEPT_INFO if key in image.info}
    return image


def _read_bytes(source: ScanSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ScanError(f"No file found at {str(path)!r}.")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise ScanError(_too_big_message(path.stat().st_size))
        data = path.read_bytes()
    elif hasattr(source, "read"):
        try:
            data = source.read(MAX_UPLOAD_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise ScanError("The file could not be read.") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise ScanError("The file must be opened in binary mode.")
        data = bytes(data)
    else:
        raise ScanError(
            f"Cannot read a scan from a {type(source).__name__}; "
            "pass the file's bytes, its path or a binary file object."
        )
    if len(data) > MAX_UPLOAD_BYTES:
        raise ScanError(_too_big_message(len(data)))
    return data


def _too_big_message(size: int) -> str:
    return (
        f"The file is {size / 2**20:.0f} MB; scans up to {MAX_UPLOAD_BYTES // 2**20} MB "
        "are accepted."
    )


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _describe_non_image(data: bytes) -> str:
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "The file is a PDF document, not an image. Upload the scan as an image file."
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "The file is a web page (HTML), not an image."
    if head.startswith(b"gif8"):
        return "GIF files (still or animated) are not supported; use " + _FORMATS_TEXT + "."
    if _looks_like_text(data[:1024]):
        return "The file holds text, not an image."
    return (
        "The file is not an image in a supported format "
        f"({_FORMATS_TEXT}), or it is damaged."
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return False
        text = head[: exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")  # byte-order mark
    return bool(text.strip()) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _bomb_message() -> str:
    return (
        f"The image declares more than {2 * MAX_PIXELS // 1_000_000} million pixels; "
        "that is not a single MRI slice."
    )


def _open_pil(data: bytes) -> Image.Image:
    """Parse the header only (no pixel is decoded), with the supported plugins only."""
    try:
        with WARNINGS_LOCK, warnings.catch_warnings():
            # Between Pillow's warning and error limits read_scan decides itself (below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_PIL_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ScanError(_bomb_message()) from exc
    except UnidentifiedImageError as exc:
        raise ScanError(_describe_non_image(data)) from exc
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise ScanError(_describe_non_image(data)) from exc


def _read_pil(data: bytes) -> Image.Image:
    image = _open_pil(data)
    try:
        return _decode_pil(image)
    except ScanError:
        raise
    except Image.DecompressionBombError as exc:
        raise ScanError(_bomb_message()) from exc
    except Exception as exc:  # truncated or corrupt data (Pillow raises many types)
        raise ScanError(
            "The image data is damaged or incomplete (the file may be truncated)."
        ) from exc


def _decode_pil(image: Image.Image) -> Image.Image:
    if image.format not in _PIL_FORMATS:  # unreachable with formats=..., kept as a guard
        raise ScanError(f"{image.format or 'This'} files are not supported; use {_FORMATS_TEXT}.")
    if image.format in ("JPEG", "MPO") and max(image.size) > 2 * MAX_SIDE:
        # Let the decoder skip detail we would throw away (1/2, 1/4 or 1/8 scale, keeping both
        # sides >= MAX_SIDE): a large photo of a scan decodes in a fraction of the time and memory.
        image.draft(image.mode, (MAX_SIDE, MAX_SIDE))
    check_dimensions(*image.size)  # the size that will be decoded
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1 and image.format != "MPO":
        raise ScanError(
            f"The file holds {n_frames} frames (an animation or a stack of slices); "
            "upload one 2D slice."
        )
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return _to_8bit(image)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to ``L`` (grey content) or ``RGB``."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1",):
        return image.convert("L")
    if mode in ("LA", "La", "RGBA", "RGBa", "PA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return flat.convert("L" if mode in ("LA", "La") else "RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(stretch_to_uint8(np.asarray(image, dtype=np.float64)), mode="L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise ScanError(f"Images with colour mode {mode} are not supported.")


def _limit_size(image: Image.Image) -> Image.Image:
    """Downscale so that the longer side is at most ``MAX_SIDE`` (aspect ratio kept)."""
    width, height = image.size
    if max(width, height) <= MAX_SIDE:
        return image
    scale = MAX_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap=1: box-average by an integer factor first, then Lanczos over the rest;
    # several times faster than Lanczos over the full image, and as free of aliasing.
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
    resized.info.update(image.info)
    return resized
