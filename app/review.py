"""One uploaded scan, analysed for the review page: read, predicted, summarised, exported.

Uploads are handled as bytes in memory; nothing is written to disk, and neither file names
nor DICOM tags are logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from core import results as core_results
from core.constants import CLASS_LABELS, CLASS_NAMES
from core.model import Classifier, Prediction
from core.results import flag_text, result_record
from core.scan import ScanError, read_scan

__all__ = [
    "NOT_BRAIN_MRI_TEXT",
    "OUTSIDE_TRAINING_TEXT",
    "UNEXPECTED_ERROR_TEXT",
    "ScanAnalysis",
    "analyse_image",
    "analyse_scan",
    "digest_of",
    "results_csv",
    "summary_rows",
    "warm_up",
]

logger = logging.getLogger(__name__)

NOT_BRAIN_MRI_TEXT = "Not recognised as a brain MRI"
#: Shown with the class of a brain MRI unlike the scans the model learned from.
OUTSIDE_TRAINING_TEXT = "outside the training data: unreliable"
UNEXPECTED_ERROR_TEXT = (
    "This file could not be analysed because of an unexpected error. "
    "Try exporting the scan again as PNG or JPEG."
)


@dataclass(frozen=True)
class ScanAnalysis:
    """The outcome for one upload: an image and its prediction, or a plain error message."""

    digest: str
    image: Image.Image | None = None
    prediction: Prediction | None = None
    error: str | None = None
    #: For DICOM: how stored values became grey levels ("stored window" or "percentile stretch").
    display_transform: str | None = None
    #: Grad-CAM heatmaps computed so far, by explained class (filled lazily by :meth:`heatmap`).
    _heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.prediction is not None

    def heatmap(self, model: Classifier, target: str) -> np.ndarray:
        """The Grad-CAM heatmap for ``target``, computed once per class."""
        if self.image is None:
            raise ValueError("This upload has no image to explain.")
        if target not in CLASS_NAMES:
            raise ValueError(f"Unknown class {target!r}; choose one of {CLASS_NAMES}.")
        if target not in self._heatmaps:
            self._heatmaps[target] = model.explain(self.image, target=target)
        return self._heatmaps[target]


def warm_up(model: Classifier) -> None:
    """Run one prediction and one explanation on a synthetic image, so that the first real scan
    does not pay the one-off start-up costs (lazy imports, kernel selection: seconds on a CPU)."""
    size = max(model.image_size, 64)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2).astype(np.uint8) * 120
    image = Image.fromarray(disc, mode="L")
    model.predict(image)
    model.explain(image, target=CLASS_NAMES[0])


def digest_of(data: bytes) -> str:
    """The sha256 of an upload's bytes: the cache key of its analysis."""
    return hashlib.sha256(data).hexdigest()


def analyse_scan(model: Classifier, data: bytes) -> ScanAnalysis:
    """Read and classify one upload; a file that cannot be read gives its message, never raises."""
    digest = digest_of(data)
    try:
        image = read_scan(data)
    except ScanError as exc:
        return ScanAnalysis(digest=digest, error=str(exc))
    except Exception:  # a reader bug must not stop the batch
        logger.exception("unexpected error reading an upload (sha256 %s)", digest[:12])
        return ScanAnalysis(digest=digest, error=UNEXPECTED_ERROR_TEXT)
    return analyse_image(model, image, digest)


def analyse_image(model: Classifier, image: Image.Image, digest: str) -> ScanAnalysis:
    """Classify one image already read (a scan, or the one slice of a series); never raises."""
    try:
        prediction = model.predict(image)
    except Exception:
        logger.exception("unexpected error classifying an upload (sha256 %s)", digest[:12])
        return ScanAnalysis(digest=digest, image=image, error=UNEXPECTED_ERROR_TEXT)
    return ScanAnalysis(
        digest=digest,
        image=image,
        prediction=prediction,
        display_transform=image.info.get("display_transform"),
    )


def _shown_class(analysis: ScanAnalysis) -> str:
    if analysis.prediction is None:
        return "Could not be read" if analysis.image is None else "Not analysed"
    if not analysis.prediction.is_brain_mri:
        return NOT_BRAIN_MRI_TEXT
    if analysis.prediction.outside_training:
        return f"{CLASS_LABELS[analysis.prediction.label]} ({OUTSIDE_TRAINING_TEXT})"
    return CLASS_LABELS[analysis.prediction.label]


def _notes(analysis: ScanAnalysis) -> str:
    if analysis.error is not None:
        return analysis.error
    assert analysis.prediction is not None
    return "; ".join(flag_text(flag) for flag in analysis.prediction.flags)


def summary_rows(items: Sequence[tuple[str, ScanAnalysis]]) -> list[dict[str, object]]:
    """One row per upload for the summary table: file, predicted class, confidence, flags.

    The confidence (a percentage) is left empty where no class is shown.
    """
    rows = []
    for name, analysis in items:
        shown = analysis.ok and analysis.prediction.is_brain_mri  # type: ignore[union-attr]
        rows.append(
            {
                "File": name,
                "Predicted class": _shown_class(analysis),
                "Confidence (%)": round(100.0 * analysis.prediction.confidence, 1) if shown else None,  # type: ignore[union-attr]
                "Flags / message": _notes(analysis),
            }
        )
    return rows


def results_csv(items: Sequence[tuple[str, ScanAnalysis]]) -> bytes:
    """The batch's results as UTF-8 CSV, in the one result schema (``core.results``) that
    ``python -m core`` writes too: file name, outcome, class probabilities; no DICOM tag."""
    return core_results.results_csv(
        result_record(name, analysis.prediction, None if analysis.prediction is not None else analysis.error or "not analysed")
        for name, analysis in items
    )
