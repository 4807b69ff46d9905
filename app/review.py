"""One uploaded scan, analysed for the review page: read, predicted, summarised, exported.

Uploads are handled as bytes in memory; nothing is written to disk, and neither file names
nor DICOM tags are logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from core import results as core_results
from core.constants import CLASS_LABELS, CLASS_NAMES, USER_SEQUENCES
from core.model import Classifier, Prediction
from core.results import flag_text, plural_of, result_record
from core.rules import SequenceCoverage
from core.scan import ScanError, read_scan
from core.sequence import SequenceInfo, user_sequence

__all__ = [
    "AS_READ",
    "NOT_BRAIN_MRI_TEXT",
    "OUTSIDE_TRAINING_TEXT",
    "SEQUENCE_LABELS",
    "UNEXPECTED_ERROR_TEXT",
    "ScanAnalysis",
    "analyse_image",
    "analyse_scan",
    "correctable",
    "coverage_text",
    "digest_of",
    "items_under_sequences",
    "reanalyse",
    "results_csv",
    "sequence_option_text",
    "sequence_options",
    "sequence_text",
    "summary_rows",
    "under_sequence",
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

#: The sequence selector's first option: the sequence as the analysis read it (no choice).
AS_READ = "as read"


@dataclass(frozen=True)
class ScanAnalysis:
    """The outcome for one upload: an image and its prediction, or a plain error message."""

    digest: str
    image: Image.Image | None = None
    prediction: Prediction | None = None
    error: str | None = None
    #: For DICOM: how stored values became grey levels ("stored window" or "percentile stretch").
    display_transform: str | None = None
    #: Set when ``prediction`` was made under the user's sequence (:func:`reanalyse`): the
    #: sequence the analysis read by itself (DICOM tags, file name, image or unknown).
    read_sequence: SequenceInfo | None = None
    #: Grad-CAM heatmaps computed so far, by explained class (filled lazily by :meth:`heatmap`).
    _heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.prediction is not None

    @property
    def sequence_as_read(self) -> SequenceInfo:
        """The sequence found without the user: what the selector's "As read" option names."""
        if self.read_sequence is not None:
            return self.read_sequence
        return self.prediction.sequence if self.prediction is not None else SequenceInfo()

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


def reanalyse(model: Classifier, analysis: ScanAnalysis, choice: str) -> ScanAnalysis:
    """``analysis`` classified again under the sequence the user chose (one of
    ``core.constants.USER_SEQUENCES``): a new answer, new flags, ``sequence_source`` "user".
    The heatmaps are shared (they do not depend on the sequence). A model error gives the
    analysis an error message; it never raises."""
    if analysis.image is None or analysis.prediction is None:
        raise ValueError("Only an analysed scan can be classified again under another sequence.")
    sequence = user_sequence(choice)
    read = analysis.sequence_as_read
    try:
        [prediction] = model.predict_batch([analysis.image], sequences=[sequence])
    except Exception:
        logger.exception("unexpected error classifying an upload again (sha256 %s)", analysis.digest[:12])
        return replace(analysis, prediction=None, error=UNEXPECTED_ERROR_TEXT, read_sequence=read)
    return replace(analysis, prediction=prediction, read_sequence=read)


def under_sequence(
    model: Classifier,
    analysis: ScanAnalysis,
    choice: str | None,
    cache: MutableMapping[tuple[str, str], ScanAnalysis],
) -> ScanAnalysis:
    """The analysis to show: ``analysis`` itself without a ``choice`` (None or :data:`AS_READ`), else its
    :func:`reanalyse` under ``choice``, made once per (digest, choice) and kept in ``cache``."""
    if choice in (None, AS_READ) or not analysis.ok:
        return analysis
    key = (analysis.digest, choice)
    if key not in cache:
        cache[key] = reanalyse(model, analysis, choice)
    return cache[key]


def items_under_sequences(
    model: Classifier,
    items: Sequence[tuple[str, ScanAnalysis]],
    choices: Mapping[str, str],
    cache: MutableMapping[tuple[str, str], ScanAnalysis],
) -> list[tuple[str, ScanAnalysis]]:
    """``items`` (name, analysis) with each scan under the sequence the user chose for it
    (``choices``: digest -> sequence; :func:`under_sequence`). Entries of ``cache`` for scans
    no longer uploaded are dropped."""
    shown = [(name, under_sequence(model, analysis, choices.get(analysis.digest), cache)) for name, analysis in items]
    digests = {analysis.digest for _, analysis in items}
    for stale in [key for key in cache if key[0] not in digests]:
        del cache[stale]
    return shown


# ---------------------------------------------------------------------- sequence wording
#: Where a sequence came from, in words (``SequenceInfo.source``; "image" adds the confidence).
_SEQUENCE_SOURCES = {"tags": "DICOM tags", "name": "file name", "user": "your choice"}
#: What the user may choose, in words (``core.constants.USER_SEQUENCES``).
SEQUENCE_LABELS: dict[str, str] = {
    "T1": "T1 without contrast",
    "T1C": "T1 with contrast",
    "T1w": "T1-weighted (contrast unknown)",
    "T2": "T2",
    "FLAIR": "FLAIR",
    "other": "Other (DWI, SWI, …)",
}
#: How the class x sequence table's columns read in a sentence.
_SEQUENCE_WORDS = {"T1": "T1", "T1C": "contrast T1", "T2": "T2", "FLAIR": "FLAIR"}


def _source_text(sequence: SequenceInfo) -> str:
    if sequence.source == "image":
        return "from the image" + (f", {100 * sequence.confidence:.0f} %" if sequence.confidence is not None else "")
    return _SEQUENCE_SOURCES.get(sequence.source, "")


def sequence_text(sequence: SequenceInfo | None, read: SequenceInfo | None = None) -> str:
    """A sequence and where it came from: "T1C (DICOM tags)", "T2 (from the image, 91 %)",
    "FLAIR (your choice)", "unknown". With ``read`` (what was found before the user chose), a
    user's choice names that too: "FLAIR (your choice; read as T2, from the image, 91 %)"."""
    if sequence is None or (sequence.name == "unknown" and sequence.source != "user"):
        return "unknown"
    source = _source_text(sequence)
    if sequence.source == "user" and read is not None:
        found = "unknown" if read.name == "unknown" else ", ".join(filter(None, (read.name, _source_text(read))))
        source = f"{source}; read as {found}"
    return f"{sequence.name} ({source})" if source else sequence.name


def correctable(sequence: SequenceInfo) -> bool:
    """Whether the user is offered to correct a sequence found by itself: always, except where
    the DICOM tags gave it."""
    return sequence.source != "tags"


def sequence_options() -> list[str]:
    """The sequence selector's options: :data:`AS_READ`, then ``USER_SEQUENCES``."""
    return [AS_READ, *USER_SEQUENCES]


def sequence_option_text(option: str, as_read: SequenceInfo) -> str:
    """An option of the sequence selector in words (:data:`AS_READ`: the sequence as read)."""
    return f"As read: {sequence_text(as_read)}" if option == AS_READ else SEQUENCE_LABELS[option]


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def coverage_text(coverage: SequenceCoverage | None) -> str | None:
    """Which sequences the model learned each class from, in one sentence, from the class x
    sequence table behind ``sequence_not_learned`` (None without a table)."""
    if coverage is None:
        return None
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in coverage.class_names:
        learned = tuple(q for q in _SEQUENCE_WORDS if (coverage.share(name, q) or 0.0) >= coverage.min_share)
        groups.setdefault(learned, []).append(name)
    parts = []
    for learned, names in groups.items():
        classes = _and([plural_of(name) for name in names])
        if not learned:
            parts.append(f"{classes} from no one sequence")
        else:
            parts.append(f"{classes} from {_and([_SEQUENCE_WORDS[q] for q in learned])}" + (" only" if len(learned) == 1 else ""))
    return ("The model learned " + "; ".join(parts) + ". An answer on a sequence it barely learned is flagged for review.")


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
    """One row per upload for the summary table: file, predicted class, confidence, sequence, flags.

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
                "Sequence": sequence_text(analysis.prediction.sequence) if analysis.prediction is not None else None,
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
