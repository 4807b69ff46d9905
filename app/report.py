"""A printable one-page PDF report of one series (fpdf2): the model's version, the series, its
answer and review state, the key slices with their Grad-CAM overlays, and the model's measured
figures on scans from other sources.

Only what the reader named the series (its number and description, or a volume's file stem) and
the model's outputs go in: no DICOM tag, no file path, no date of the scan. Text is set in the
PDF core fonts (Latin-1); other characters print as "?".
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import fpdf.encryption
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image

from app.overlay import to_png_bytes
from app.series_view import answer_text, key_slice_text, review_text, sequence_text
from core.constants import CLASS_LABELS
from core.sequence import SequenceInfo
from core.series_rule import SeriesPrediction

__all__ = ["NOTICE", "series_report_pdf"]

logger = logging.getLogger(__name__)

NOTICE = "Research demonstration, not for diagnostic use"
_FONT = "Helvetica"
_MARGIN = 14.0
_PAGE_W, _PAGE_H = 210.0, 297.0
_WIDTH = _PAGE_W - 2 * _MARGIN
_INK = (28, 43, 54)
_MUTED = (90, 104, 115)
_ALERT = (170, 60, 0)
#: Rows of the external-sources table that fit on the page with five key slices.
_MAX_EXTERNAL_ROWS = 12
#: Columns of that table: (heading, key of an ``app.artifacts.external_rows`` row, width in mm).
_EXTERNAL_COLUMNS = (
    ("Source", "Scans", 78.0),
    ("Class", "Classes", 44.0),
    ("N", "N", 14.0),
    ("Accuracy", "Accuracy (%)", 23.0),
    ("Unflagged acc.", "Accuracy without flag (%)", 23.0),
)


def _release_import_frames() -> None:
    """fpdf2 keeps the ImportError of its optional ``cryptography`` import
    (``fpdf.encryption.import_error``, quoted only if AES encryption is asked for, which this
    report never does). Its traceback holds the frames that first imported fpdf: in the app, the
    script run of the first session that opened the review page, and with it that session's whole
    state (uploads' analyses, series slices) for the life of the server. The message is kept; the
    frames are let go."""
    error = getattr(fpdf.encryption, "import_error", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None
        error.__context__ = None


_release_import_frames()


def _text(value: Any) -> str:
    """``value`` as Latin-1 text (the core fonts' character set)."""
    text = str(value).replace("\u2014", "-").replace("\u2013", "-").replace("\u2026", "...")
    return text.encode("latin-1", "replace").decode("latin-1")


def _percent(value: Any) -> str:
    return f"{float(value):.1f} %" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


class _Report(FPDF):
    def heading(self, text: str) -> None:
        self.ln(2)
        self.set_font(_FONT, "B", 11)
        self.set_text_color(*_INK)
        self.cell(0, 6, _text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def line_of(self, label: str, value: str) -> None:
        self.set_font(_FONT, "B", 9)
        self.cell(34, 5, _text(label))
        self.set_font(_FONT, "", 9)
        self.multi_cell(_WIDTH - 34, 5, _text(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def notice(self) -> None:
        self.set_fill_color(255, 243, 205)
        self.set_text_color(*_ALERT)
        self.set_font(_FONT, "B", 10)
        self.cell(0, 7, _text(f"{NOTICE}."), fill=True, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(*_INK)


def series_report_pdf(
    prediction: SeriesPrediction,
    heatmaps: Mapping[int, tuple[Image.Image, Image.Image]],
    model_card: Mapping[str, Any],
    external_figures: Sequence[Mapping[str, Any]],
    read_sequence: SequenceInfo | None = None,
) -> bytes:
    """The one-page report of ``prediction`` as PDF bytes.

    ``heatmaps``: for each key slice (by index), the slice and its Grad-CAM overlay
    (:meth:`app.series_view.SeriesAnalysis.key_views`); ``model_card``: the loaded model's card
    (its ``weights_sha256`` names the version); ``external_figures``: the rows of
    :func:`app.artifacts.external_rows` (empty when no such figures are stored);
    ``read_sequence``: where the user chose the sequence, the one found without them. The
    sequence line says where the sequence came from: the DICOM tags, the file name, the image
    (with the recogniser's confidence) or the user's choice.
    """
    pdf = _Report(orientation="P", unit="mm", format="A4")
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_auto_page_break(False)
    pdf.set_creator("Brain MRI tumour classifier")
    pdf.set_title("Series report")
    pdf.add_page()
    pdf.set_text_color(*_INK)

    pdf.notice()
    pdf.ln(2)
    pdf.set_font(_FONT, "B", 16)
    pdf.cell(0, 9, "Brain MRI tumour classifier: series report", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, "", 8)
    pdf.set_text_color(*_MUTED)
    sha = str(model_card.get("weights_sha256") or "unknown")[:12]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pdf.cell(0, 4, _text(f"Model {model_card.get('arch', 'unknown')}, weights sha256 {sha}; report made {stamp}"),
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_INK)

    pdf.heading("Series")
    pdf.line_of("Name", prediction.name)
    pdf.line_of("Plane", prediction.plane)
    pdf.line_of("Sequence", sequence_text(prediction.sequence, read_sequence))
    pdf.line_of("Slices", f"{prediction.n_slices}, of which {prediction.assessed} assessed (enough of the head, "
                          "recognised as a brain MRI)")

    pdf.heading("Answer")
    confidence = f", confidence {100 * prediction.confidence:.1f} %" if prediction.assessed else ""
    pdf.line_of("Answer", answer_text(prediction) + confidence)
    support = ", ".join(f"{CLASS_LABELS[c].lower()} {n}" for c, n in prediction.support.items())
    pdf.line_of("Supporting slices", support or "-")
    pdf.line_of("Review state", review_text(prediction))

    _key_slices(pdf, prediction, heatmaps)
    _external_table(pdf, external_figures)

    pdf.set_y(_PAGE_H - _MARGIN - 17)
    pdf.set_font(_FONT, "", 7.5)
    pdf.set_text_color(*_MUTED)
    pdf.multi_cell(
        0, 3.6,
        _text("Answers come from single 2-D slices combined by a fitted rule; the model knows four classes (glioma, "
              "meningioma, pituitary tumour, no tumour): 'no tumour' means none of these, not a normal scan. "
              "Grad-CAM shows which regions drove a slice's answer; it is a sanity check, not a segmentation."),
        new_x=XPos.LMARGIN, new_y=YPos.NEXT,
    )
    pdf.set_text_color(*_INK)
    pdf.ln(1)
    pdf.notice()
    return bytes(pdf.output())


def _key_slices(pdf: _Report, prediction: SeriesPrediction, heatmaps: Mapping[int, tuple[Image.Image, Image.Image]]) -> None:
    pdf.heading("Key slices (top: slice; bottom: Grad-CAM overlay for the answer)")
    keys = [k for k in prediction.key_slices if k.index in heatmaps]
    if not keys:
        pdf.set_font(_FONT, "", 9)
        pdf.cell(0, 5, "No slice was assessed, so no key slice is shown.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    size, gap = 33.0, (_WIDTH - 5 * 33.0) / 4
    top = pdf.get_y() + 1
    for column, key in enumerate(keys[:5]):
        x = _MARGIN + column * (size + gap)
        image, overlay = heatmaps[key.index]
        for row, picture in enumerate((image, overlay)):
            pdf.image(io.BytesIO(to_png_bytes(_thumbnail(picture))), x=x, y=top + row * (size + 1), w=size, h=size)
        pdf.set_xy(x, top + 2 * size + 2.5)
        pdf.set_font(_FONT, "B", 8)
        pdf.cell(size, 3.8, _text(f"Slice {key.index + 1} of {prediction.n_slices}"), align="C")
        pdf.set_xy(x, top + 2 * size + 6.3)
        pdf.set_font(_FONT, "", 7.5)
        position = "" if key.position_mm is None else f"{key.position_mm:.1f} mm"
        pdf.cell(size, 3.8, _text(position), align="C")
        pdf.set_xy(x, top + 2 * size + 10.1)
        pdf.set_font(_FONT, "", 7)
        pdf.multi_cell(size, 3.2, _text(key_slice_text(prediction, key)), align="C")
    pdf.set_xy(_MARGIN, top + 2 * size + 17.5)


def _thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    """A square thumbnail (the slice fitted in, black around it), small enough for the page."""
    picture = image.convert("RGB")
    picture.thumbnail((size, size))
    square = Image.new("RGB", (size, size))
    square.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    return square


def _external_table(pdf: _Report, rows: Sequence[Mapping[str, Any]]) -> None:
    pdf.heading("Measured on scans from other sources (single slices)")
    if not rows:
        pdf.set_font(_FONT, "", 9)
        pdf.cell(0, 5, "No figures on other sources are stored with this model.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    pdf.set_font(_FONT, "B", 8.5)
    pdf.set_fill_color(241, 245, 248)
    for heading, _, width in _EXTERNAL_COLUMNS:
        pdf.cell(width, 5.5, heading, border="B", fill=True, align="L" if width > 30 else "R")
    pdf.ln(5.5)
    pdf.set_font(_FONT, "", 8.5)
    for row in rows[:_MAX_EXTERNAL_ROWS]:
        for _, key, width in _EXTERNAL_COLUMNS:
            value = row.get(key)
            text = _percent(value) if key.endswith("(%)") else ("-" if value is None else str(value))
            pdf.cell(width, 4.8, _text(text), align="L" if width > 30 else "R")
        pdf.ln(4.8)
    if len(rows) > _MAX_EXTERNAL_ROWS:
        pdf.set_font(_FONT, "I", 8)
        pdf.cell(0, 4.5, _text(f"{len(rows) - _MAX_EXTERNAL_ROWS} more rows on the app's Model performance page."),
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, "", 7.5)
    pdf.set_text_color(*_MUTED)
    pdf.cell(0, 4.5, "Unflagged acc.: accuracy on the scans the model raised no review flag for. 'Other lesion types' "
                     "have no right answer.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_INK)
