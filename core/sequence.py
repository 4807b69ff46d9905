"""Which MR sequence a scan or series is (T1, T1 with contrast, T2, FLAIR): tags, name or image.

Keywords in SeriesDescription and ProtocolName decide first (vendors' usual words: ``t2_tse_tra``,
``AX FLAIR``, ``T1 MPRAGE +C``, ``T1W_3D_TFE``); the timings (TR, TE, TI) decide when the words
do not. Contrast (``+C``, ``Gd``, ``post``, a ContrastBolusAgent) turns T1 into T1C. A guess from
a file name says ``source="name"``: a name is weaker evidence than the scanner's own tags.

Without tags or a name, :class:`SequenceRecogniser` (fitted by ``train.sequence``: a linear probe
on features the classifier computes anyway) reads it from the image (``source="image"``). Where T1 with
and without contrast cannot be told apart it says ``"T1w"``; below its confidence floor it says
``"unknown"``. The user's choice (``source="user"``) overrides all of these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .constants import RECOGNISED_SEQUENCES, SEQUENCE_NAMES, SEQUENCE_SOURCES, USER_SEQUENCES
from .pixels import tag_float

__all__ = [
    "SEQUENCE_PROBE_NAME",
    "SequenceInfo",
    "SequenceRecogniser",
    "load_recogniser",
    "save_recogniser",
    "sequence_from_dataset",
    "sequence_from_name",
    "sequence_from_tags",
    "user_sequence",
]

logger = logging.getLogger(__name__)

SEQUENCE_PROBE_NAME = "sequence.safetensors"
#: The recogniser names a sequence only when its probability (T1 and T1C together for "T1w")
#: reaches this; below it the sequence is "unknown" and the user is asked.
MIN_SEQUENCE_CONFIDENCE = 0.6

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
    #: For ``source="image"``: the recogniser's probability of ``name`` (of T1 and T1C together
    #: for "T1w").
    confidence: float | None = None

    @property
    def known(self) -> bool:
        """True when the sequence is one of T1, T1C, T1w, T2 or FLAIR."""
        return self.name not in ("other", "unknown")

    def __post_init__(self) -> None:
        if self.name not in SEQUENCE_NAMES:
            raise ValueError(f"SequenceInfo.name must be one of {SEQUENCE_NAMES}, not {self.name!r}")
        if self.source not in SEQUENCE_SOURCES:
            raise ValueError(
                f"SequenceInfo.source must be one of {SEQUENCE_SOURCES}, not {self.source!r}"
            )
        if self.name == "unknown" and self.source not in ("unknown", "user"):
            raise ValueError(f"SequenceInfo: an unknown sequence cannot have source {self.source!r}")
        if self.confidence is not None:
            if not 0.0 <= float(self.confidence) <= 1.0:
                raise ValueError(f"SequenceInfo.confidence must be in [0, 1], not {self.confidence!r}")
            object.__setattr__(self, "confidence", float(self.confidence))
        for field in fields(self)[2:-1]:
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


def user_sequence(name: str) -> SequenceInfo:
    """The sequence a user chose (``source="user"``); ``name`` one of ``USER_SEQUENCES``
    (case-insensitive: "t2", "flair", "t1c")."""
    lookup = {n.lower(): n for n in USER_SEQUENCES}
    key = str(name).strip().lower()
    if key not in lookup:
        raise ValueError(f"Unknown sequence {name!r}; choose one of {list(USER_SEQUENCES)}.")
    return SequenceInfo(name=lookup[key], source="user")


class SequenceRecogniser:
    """The sequence from the image: a linear probe on the classifier's own features.

    The classifier's out-of-distribution gate already taps the per-channel means and standard
    deviations of two of its stages (``core.ood.stage_statistics``) on every prediction. A
    multinomial logistic regression over those features (``train.sequence fit``) gives the
    probabilities of ``RECOGNISED_SEQUENCES``, so recognising a sequence costs one small
    matrix product per scan and no second network.

    ``weight`` (4, D) and ``bias`` (4,): the probe, its standardisation folded in; ``stages``:
    the classifier stages whose statistics it reads. ``contrast_threshold``: the share of the
    T1-weighted probability that T1C (or T1) must hold to be named; below it the answer is
    "T1w". Fitted on validation (``train.sequence``).
    """

    def __init__(self, weight, bias, contrast_threshold: float, stages: Sequence[int] = (),
                 min_confidence: float = MIN_SEQUENCE_CONFIDENCE):
        if not 0.5 <= contrast_threshold <= 1.0:
            raise ValueError(f"contrast_threshold must be in [0.5, 1], got {contrast_threshold!r}.")
        self.weight = np.asarray(weight, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.weight.ndim != 2 or self.weight.shape[0] != len(RECOGNISED_SEQUENCES) or self.bias.shape != (len(RECOGNISED_SEQUENCES),):
            raise ValueError(f"The probe takes weight (4, D) and bias (4,), got {self.weight.shape} and {self.bias.shape}.")
        self.contrast_threshold = float(contrast_threshold)
        self.stages = tuple(int(s) for s in stages)
        self.min_confidence = float(min_confidence)

    def probabilities(self, features) -> np.ndarray:
        """(N, 4) probabilities of ``RECOGNISED_SEQUENCES`` for (N, D) tapped features."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"The sequence probe takes (N, {self.weight.shape[1]}) features, got shape {features.shape}.")
        logits = features @ self.weight.T + self.bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def name_of(self, probs) -> str:
        """The sequence named by one row of probabilities (see the class docstring)."""
        return self.info_of(probs).name

    def info_of(self, probs) -> SequenceInfo:
        p = dict(zip(RECOGNISED_SEQUENCES, (float(v) for v in probs)))
        t1w = p["T1"] + p["T1C"]
        best = max(("T2", p["T2"]), ("FLAIR", p["FLAIR"]), ("T1w", t1w), key=lambda kv: kv[1])
        name, confidence = best
        if confidence < self.min_confidence:
            return SequenceInfo()
        if name == "T1w" and t1w > 0:
            share = p["T1C"] / t1w
            if share >= self.contrast_threshold:
                name, confidence = "T1C", p["T1C"]
            elif share <= 1 - self.contrast_threshold:
                name, confidence = "T1", p["T1"]
        return SequenceInfo(name=name, source="image", confidence=min(1.0, confidence))

    def recognise(self, features) -> list[SequenceInfo]:
        """The sequence of each of N scans, from their (N, D) tapped features."""
        return [self.info_of(p) for p in self.probabilities(features)]


def save_recogniser(recogniser: SequenceRecogniser, path: str | Path) -> str:
    """Write the probe's weight, bias and stages as safetensors; returns the file's sha256."""
    from safetensors.numpy import save_file

    from .weights import sha256_file

    save_file({"weight": np.ascontiguousarray(recogniser.weight), "bias": np.ascontiguousarray(recogniser.bias),
               "stages": np.array(recogniser.stages, dtype=np.int64)}, str(path))
    return sha256_file(path)


def load_recogniser(folder: str | Path, card: dict[str, Any]) -> SequenceRecogniser | None:
    """The recogniser named in ``card["sequence"]`` (its sha256 checked), or None without one."""
    info = card.get("sequence")
    if not info or "file" not in info:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from .weights import WeightsError, checked_companion

    path = checked_companion(folder, info, SEQUENCE_PROBE_NAME, "sequence recogniser")
    try:
        tensors = load_file(str(path))
        return SequenceRecogniser(tensors["weight"], tensors["bias"], float(info["contrast_threshold"]),
                                  tuple(int(s) for s in tensors["stages"]),
                                  float(info.get("min_confidence", MIN_SEQUENCE_CONFIDENCE)))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"Sequence recogniser file {str(path)!r} is not valid: {exc}") from exc


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
