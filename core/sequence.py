"""Which MR sequence a series is (T1, T1 with contrast, T2, FLAIR), from its DICOM tags or a name.

Keywords in SeriesDescription and ProtocolName decide first (vendors' usual words: ``t2_tse_tra``,
``AX FLAIR``, ``T1 MPRAGE +C``, ``T1W_3D_TFE``); the timings (TR, TE, TI) decide when the words
do not. Contrast (``+C``, ``Gd``, ``post``, a ContrastBolusAgent) turns T1 into T1C. A guess from
a file name says ``source="name"``: a name is weaker evidence than the scanner's own tags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from .constants import SEQUENCE_NAMES, SEQUENCE_SOURCES
from .dicom import tag_float

__all__ = ["SequenceInfo", "sequence_from_dataset", "sequence_from_name", "sequence_from_tags"]

# Words, lower case, as tokens of the description (split on anything but letters and digits).
_FLAIR = {"flair", "t2flair", "flairt2", "darkfluid"}
_OTHER = {
    "dwi", "dti", "adc", "trace", "tracew", "diff", "diffusion", "swi", "swan", "t2star",
    "perfusion", "perf", "pwi", "dsc", "asl", "pcasl", "tof", "mra", "angio", "localizer",
    "localiser", "scout", "survey", "loc", "bold", "fmri", "fieldmap", "mrs", "svs", "stir",
    "pd", "pdw",
}
_T1C = {"t1c", "t1ce", "t1gd", "t1post", "t1km", "t1wce", "t1cm"}
_T1 = {"t1", "t1w", "t1wi", "mprage", "mp2rage", "spgr", "fspgr", "bravo", "t1se", "t1tse", "t1fse"}
#: T1 words that other sequences share (MPR is also a reformat; GRE also makes T2*).
_T1_WEAK = {"mpr", "tfe", "tfl", "vibe", "flash", "gre", "fl3d", "fl2d"}
_T2 = {"t2", "t2w", "t2wi", "t2tse", "t2fse"}
#: Turbo spin echo makes T1, T2 and PD: T2 only with a long echo time.
_T2_WEAK = {"tse", "fse", "frfse", "haste"}
_CONTRAST = {
    "gd", "gad", "gado", "gadolinium", "post", "postcontrast", "postgd", "ce", "contrast",
    "mdc", "km", "enhanced",
}
_PRE = {"pre", "precontrast", "nativ", "native"}
#: "+C", "C+", "+Gd", "+ contrast" (tokens lose the plus sign).
_PLUS_CONTRAST = re.compile(r"\+\s*(c|gd|gad|contrast)\b|\bc\s*\+")

#: Timing rules, in ms.
_LONG_TE = 60.0
_SHORT_TE = 30.0
_LONG_TR = 2000.0
_SHORT_TR = 1000.0
_FLAIR_TI = 1500.0
_FLAIR_TR = 4000.0
#: An inversion pulse of 300-1500 ms with a short TE is a T1 preparation (MPRAGE, IR-FSPGR).
_T1_TI = (300.0, 1500.0)


@dataclass(frozen=True)
class SequenceInfo:
    """A series' sequence (``name``), where that came from (``source``), and the raw tag values.

    ``name`` is one of ``SEQUENCE_NAMES``; ``source`` one of ``SEQUENCE_SOURCES``. The tag values
    are kept as written (times in ms), ``None`` where the tag is absent.
    """

    name: str = "unknown"
    source: str = "unknown"
    series_description: str | None = None
    protocol_name: str | None = None
    scanning_sequence: str | None = None
    sequence_variant: str | None = None
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    contrast_bolus_agent: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SEQUENCE_NAMES:
            raise ValueError(f"SequenceInfo.name must be one of {SEQUENCE_NAMES}, not {self.name!r}")
        if self.source not in SEQUENCE_SOURCES:
            raise ValueError(
                f"SequenceInfo.source must be one of {SEQUENCE_SOURCES}, not {self.source!r}"
            )
        if self.name == "unknown" and self.source not in ("unknown", "user"):
            raise ValueError(f"SequenceInfo: an unknown sequence cannot have source {self.source!r}")
        for field in fields(self)[2:]:
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.name.endswith("_time"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"SequenceInfo.{field.name} must be a number of ms, not {value!r}")
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"SequenceInfo.{field.name} must be finite and >= 0, not {value!r}")
                object.__setattr__(self, field.name, float(value))
            elif not isinstance(value, str):
                raise ValueError(f"SequenceInfo.{field.name} must be a string, not {value!r}")


def sequence_from_tags(
    series_description: str | None = None,
    protocol_name: str | None = None,
    scanning_sequence: str | None = None,
    sequence_variant: str | None = None,
    repetition_time: float | None = None,
    echo_time: float | None = None,
    inversion_time: float | None = None,
    contrast_bolus_agent: str | None = None,
) -> SequenceInfo:
    """The sequence from DICOM tag values: keywords first, then TR/TE/TI (``source="tags"``).

    ``"unknown"`` (with ``source="unknown"``) when neither the words nor the timings decide.
    """
    text = " ".join(t for t in (series_description, protocol_name) if t)
    times = (repetition_time, echo_time, inversion_time)
    contrast = bool(contrast_bolus_agent and contrast_bolus_agent.strip())
    name = _classify(text, *times, agent=contrast)
    return SequenceInfo(
        name=name,
        source="unknown" if name == "unknown" else "tags",
        series_description=series_description,
        protocol_name=protocol_name,
        scanning_sequence=scanning_sequence,
        sequence_variant=sequence_variant,
        repetition_time=repetition_time,
        echo_time=echo_time,
        inversion_time=inversion_time,
        contrast_bolus_agent=contrast_bolus_agent,
    )


def sequence_from_name(name: str) -> SequenceInfo:
    """The sequence from a file name's words (``"sub-01_T2w.nii.gz"``): ``source="name"``.

    Only keywords count (a name has no timings); ``"unknown"`` when none is found.
    """
    stem = re.sub(r"(\.nii(\.gz)?|\.gz|\.zip|\.dcm)$", "", str(name).strip(), flags=re.IGNORECASE)
    guess = _classify(stem, None, None, None, agent=False)
    return SequenceInfo(name=guess, source="unknown" if guess == "unknown" else "name")


def sequence_from_dataset(dataset) -> SequenceInfo:
    """:func:`sequence_from_tags` on a pydicom dataset's tags (enhanced MR's functional groups too)."""
    return sequence_from_tags(
        series_description=_text(_tag(dataset, "SeriesDescription")),
        protocol_name=_text(_tag(dataset, "ProtocolName")),
        scanning_sequence=_text(_tag(dataset, "ScanningSequence")),
        sequence_variant=_text(_tag(dataset, "SequenceVariant")),
        repetition_time=_number(_tag(dataset, "RepetitionTime")),
        echo_time=_number(_tag(dataset, "EchoTime", "EffectiveEchoTime")),
        inversion_time=_number(_tag(dataset, "InversionTime", "InversionTimes")),
        contrast_bolus_agent=_text(_tag(dataset, "ContrastBolusAgent")),
    )


def _classify(text: str, tr: float | None, te: float | None, ti: float | None, agent: bool) -> str:
    text = text.lower()
    text = re.sub(r"t2\s*\*|t2\s*star", " t2star ", text)
    text = re.sub(r"dark[\s_-]*fluid", " darkfluid ", text)
    tokens = set(re.findall(r"[a-z0-9]+", text))
    contrast = bool(tokens & _CONTRAST) or bool(_PLUS_CONTRAST.search(text)) or agent
    if tokens & _PRE:
        contrast = False
    if tokens & _FLAIR and not (tokens & _T1 and not tokens & _T2):
        return "FLAIR"  # "T1 FLAIR" (GE) is T1-weighted, so it goes on below
    if tokens & _OTHER:
        return "other"
    if tokens & _T1C:
        return "T1C"
    t1, t2 = bool(tokens & _T1), bool(tokens & _T2)
    t1_weak, t2_weak = bool(tokens & _T1_WEAK), bool(tokens & _T2_WEAK)
    timed = _from_timings(tr, te, ti)
    if t1 and not t2:
        name = "T1"
    elif t2 and not t1:
        name = "T2"
    elif t1 or t2:  # both: the timings decide
        name = timed
    elif t2_weak and te is not None and te > _LONG_TE:
        name = "T2"
    elif t1_weak and not t2_weak:
        name = "T1"
    elif timed != "unknown":
        name = timed
    else:
        name = "T1" if contrast else "unknown"  # "post Gd" alone: contrast is given with T1
    return "T1C" if name == "T1" and contrast else name


def _from_timings(tr: float | None, te: float | None, ti: float | None) -> str:
    if ti is not None and ti > _FLAIR_TI and tr is not None and tr > _FLAIR_TR:
        return "FLAIR"
    if tr is not None and te is not None:
        if tr > _LONG_TR and te > _LONG_TE:
            return "T2"
        if tr < _SHORT_TR and te < _SHORT_TE:
            return "T1"
    if ti is not None and _T1_TI[0] < ti < _T1_TI[1] and te is not None and te < _SHORT_TE:
        return "T1"
    return "unknown"


def _tag(dataset, *keywords: str):
    """The first of ``keywords`` found at the top level, else in the shared or first per-frame
    functional group (enhanced MR keeps timings there, one sequence deep)."""
    for keyword in keywords:
        value = dataset.get(keyword, None)
        if value not in (None, ""):
            return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = dataset.get(groups, None)
        if not sequence:
            continue
        for item in sequence[0]:
            if item.VR != "SQ" or not item.value:
                continue
            for keyword in keywords:
                value = item.value[0].get(keyword, None)
                if value not in (None, ""):
                    return value
    return None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):  # a multi-valued tag
        return "\\".join(str(v) for v in value) or None
    return str(value).strip() or None


def _number(value) -> float | None:
    number = tag_float(value)
    return number if number is not None and number >= 0 else None
