"""The classifier: one prediction path, and Grad-CAM on the same network.

A prediction happens in :meth:`Classifier.predict_batch`, down one page: image checks and
preprocessing -> the network (``core.runtime``) -> calibration (the card's temperature) ->
out-of-distribution gate -> the scan's sequence (given, from the DICOM tags, or from the image
through ``core.sequence.SequenceRecogniser``, a probe on the features the gate taps) -> review rules (``core.rules``) -> :class:`Prediction`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from . import nets  # noqa: F401  (registers small_cnn with timm)
from .cam import GradCamExplainer, paste_heatmap
from .constants import CLASS_NAMES, default_weights
from .ood import FeatureGate, ImageLimits, image_problem, load_gate
from .optimize import optimize_for_inference
from .preprocess import eval_transform, head_box, input_array, to_grayscale
from .rules import NOT_BRAIN_MRI, OUTSIDE_TRAINING, Flag, ImageProblem, ReviewRules
from .runtime import Runtime, TorchRuntime, open_runtime, with_mirror
from .sequence import SequenceInfo, SequenceRecogniser, load_recogniser
from .series import Series
from .series_rule import SeriesPrediction, SeriesRule, enough_head, series_prediction
from .weights import WeightsError, load_weights

__all__ = ["Classifier", "Prediction", "SeriesPrediction", "build_network", "decided", "load_model", "softmax"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one scan."""

    label: str
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    #: False when the input does not look like a brain MRI slice (the label is then withheld).
    is_brain_mri: bool = True
    #: Out-of-distribution score: the gate's distance over its threshold (above 1: outside the
    #: training data); 0.0 when the model has no gate.
    ood_score: float = 0.0
    #: Reasons to review this prediction (``core.rules``); ``core.results.flag_text`` words them.
    flags: tuple[Flag, ...] = ()
    #: True for a brain MRI unlike the scans the model learned from (another sequence,
    #: preparation or orientation): the prediction is unreliable.
    outside_training: bool = False
    #: The scan's sequence and where it came from: the caller (``source="user"``), the DICOM
    #: tags or a file name, the image (``core.sequence.SequenceRecogniser``), or unknown.
    sequence: SequenceInfo = field(default_factory=SequenceInfo)

    @property
    def flag_kinds(self) -> tuple[str, ...]:
        return tuple(flag.kind for flag in self.flags)


@dataclass(frozen=True)
class _Scored:
    """One batch of scans through the network, before the review rules."""

    served: np.ndarray
    plain: np.ndarray
    mirror: np.ndarray | None
    #: The gate's scores (zeros without a gate).
    scores: np.ndarray
    problems: list[ImageProblem | None]
    #: The tapped stage statistics (N, D) of the unmirrored scans; None when nothing is tapped.
    features: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.served)


def decided(sequence: SequenceInfo | None) -> bool:
    """True when ``sequence`` settles the question: the user's choice, or a sequence (other
    than "unknown") that the tags or a file name give. Otherwise the image is asked."""
    if sequence is None:
        return False
    return sequence.source == "user" or (sequence.source in ("tags", "name") and sequence.name != "unknown")


def build_network(arch: str, num_classes: int = len(CLASS_NAMES)) -> torch.nn.Module:
    """A randomly initialised timm network (weights are loaded separately; nothing is downloaded)."""
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:
        raise ValueError(f"Unknown architecture {arch!r}; use a timm model name such as 'efficientnet_lite1'.") from exc


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` over the last axis, float64: how every
    served probability is computed."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    """A loaded model. ``predict``, ``predict_batch`` and ``explain`` are safe to call from
    several threads."""

    def __init__(
        self,
        net: torch.nn.Module,
        card: dict[str, Any],
        folder: str | Path | None = None,
        gate: FeatureGate | None = None,
        device: str | torch.device = "cpu",
        tta: bool = False,
        threads: int = 1,
        runtime: Runtime | None = None,
        recogniser: SequenceRecogniser | None = None,
    ):
        """``folder``: where the card's files lie (its ONNX graph is served when it names one);
        ``runtime``: what runs the network instead (default: :func:`core.runtime.open_runtime`);
        ``recogniser``: reads the sequence from the image where nothing else gives it."""
        self.card = card
        self.class_names: tuple[str, ...] = tuple(card["class_names"])
        if self.class_names != CLASS_NAMES:
            raise WeightsError(f"The model's classes {self.class_names} differ from the expected {CLASS_NAMES}.")
        self.image_size = int(card["image_size"])
        self.temperature = float(card.get("temperature", 1.0))
        #: Each scan is cropped to its head before resizing (weights trained so; ``core.preprocess.head_box``).
        self.crop_head = bool(card.get("crop_head", False))
        #: Average each scan's probabilities with its mirror image's, and flag a disagreement.
        self.tta = bool(tta)
        self.device = torch.device(device)
        self.gate = gate
        self.image_limits = ImageLimits()
        self.rules = ReviewRules.from_card(card, gate.reject_score if gate is not None else float("inf"))
        #: How slice answers become a series answer (``core.series_rule``).
        self.series_rule = SeriesRule.from_card(card)
        network = net.to(self.device).eval().to(memory_format=torch.channels_last)
        for param in network.parameters():
            param.requires_grad_(False)
        #: The PyTorch network, batch norms folded into the convolutions (checked equal).
        self.network = optimize_for_inference(network, self.image_size)
        if recogniser is not None and gate is not None and tuple(recogniser.stages) != tuple(gate.stages):
            raise WeightsError(f"The sequence recogniser reads stages {recogniser.stages}, the gate taps {gate.stages}; "
                               "fit the recogniser again (python -m train.sequence fit).")
        # The network taps the stages the gate and the sequence recogniser read (the same ones).
        stages = gate.stages if gate is not None else (recogniser.stages if recogniser is not None else ())
        #: What runs the network for predictions (``core.runtime``).
        if runtime is None:
            runtime = open_runtime(folder, card, self.network, self.device, stages, threads) if folder is not None else TorchRuntime(
                self.network, self.device, stages)
        self.runtime: Runtime = runtime
        self.cam = GradCamExplainer(self.network)
        self._box_transform = eval_transform(self.image_size, card["mean"], card["std"], crop_head=False)
        self._mean, self._std = list(card["mean"])[: self.runtime.channels], list(card["std"])[: self.runtime.channels]
        self.recogniser = recogniser
        self._threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prepare") if self._threads > 1 else None

    # ------------------------------------------------------------------ prediction
    def predict(self, image: Image.Image) -> Prediction:
        """Classify one scan (a PIL image, as returned by :func:`core.read_scan`)."""
        return self.predict_batch([image])[0]

    def predict_batch(
        self,
        images: Sequence[Image.Image],
        batch_size: int = 32,
        sequences: Sequence[SequenceInfo | None] | None = None,
    ) -> list[Prediction]:
        """Classify many scans, ``batch_size`` per forward pass; equal to :meth:`predict` on each.

        ``sequences``: each scan's sequence where the caller has settled it (a user's choice,
        ``core.sequence.user_sequence``, or a series' sequence), taken as it is; None entries,
        and scans without one, take the DICOM tags kept in ``image.info["sequence"]`` by
        :func:`core.read_scan` when they decide (:func:`decided`), else the recogniser's answer.
        """
        images = [_check_image(image) for image in images]
        if sequences is not None and len(sequences) != len(images):
            raise ValueError(f"{len(sequences)} sequences for {len(images)} images; give one per image (None: unknown).")
        given = list(sequences) if sequences is not None else [None] * len(images)
        # What the caller gives is final; the tags of the image itself decide only when they say.
        given = [q if q is not None else _tagged(image) for q, image in zip(given, images)]
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            scored = self._score(images[start : start + batch_size])
            results += self._judge(scored, self._sequences(scored, given[start : start + batch_size]))
        return results

    def predict_series(
        self, series: Series, batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
        sequence: SequenceInfo | None = None,
    ) -> SeriesPrediction:
        """One answer for a whole series (``core.read_series``): every slice through the network
        once, in batches of ``batch_size``, then judged under the series' one sequence
        (``sequence``: the user's choice, else the recogniser's reading of the same pass); ``progress(done,
        total)`` is called after each batch."""
        scored: list[_Scored] = []
        for start in range(0, len(series.slices), batch_size):
            scored.append(self._score(series.slices[start : start + batch_size]))
            if progress is not None:
                progress(min(start + batch_size, len(series.slices)), len(series.slices))
        enough = enough_head(series.slices)
        if sequence is None:
            features = [s.features for s in scored]
            sequence = self._series_sequence(series, np.concatenate(features) if scored and features[0] is not None else None, enough)
        predictions = [p for s in scored for p in self._judge(s, [sequence] * s.n)]
        return series_prediction(self.series_rule, series, predictions, sequence, self.rules.coverage, enough)

    def _series_sequence(self, series: Series, features: np.ndarray | None, enough: np.ndarray) -> SequenceInfo:
        """A series' sequence: its tags' or name's when they decide, else the recogniser's
        reading of the mean probabilities over the slices with enough head in them (``enough``,
        the assessed slices' rule ``core.series_rule.enough_head``); unknown without one.
        ``features``: the slices' tapped features, one row per slice (None: none tapped)."""
        if decided(series.sequence) or self.recogniser is None or features is None or not enough.any():
            return series.sequence
        return self.recogniser.info_of(self.recogniser.probabilities(features[enough]).mean(axis=0))

    def _score(self, images: Sequence[Image.Image]) -> _Scored:
        """One batch through the image checks, the network, calibration and the gate."""
        batch, problems = self._prepare(images)
        n = len(images)
        logits, taps = self.runtime.run(with_mirror(batch) if self.tta else batch)
        probs = softmax(logits, self.temperature)
        plain, mirror = probs[:n], (probs[n:] if self.tta else None)
        features = taps[:n] if taps is not None else None
        scores = self.gate.score(features).numpy() if self.gate is not None and features is not None else np.zeros(n)
        return _Scored(served=(plain + mirror) / 2 if mirror is not None else plain, plain=plain, mirror=mirror,
                       scores=scores, problems=problems, features=features)

    def _sequences(self, scored: _Scored, given: Sequence[SequenceInfo | None]) -> list[SequenceInfo]:
        """Each scan's sequence: what was given, else the recogniser's reading of the scan's
        tapped features, else unknown."""
        out = [q if q is not None else SequenceInfo() for q in given]
        ask = [i for i, q in enumerate(given) if q is None]
        if ask and self.recogniser is not None and scored.features is not None:
            for i, info in zip(ask, self.recogniser.recognise(scored.features[ask])):
                out[i] = info
        return out

    def _judge(self, scored: _Scored, known: Sequence[SequenceInfo]) -> list[Prediction]:
        """The review rules on one scored batch, each scan under its sequence."""
        coverage = self.rules.coverage
        judged = [coverage.judged(q.name, q.source, q.confidence) if coverage is not None else q.name for q in known]
        flags = self.rules.flags(scored.served, scored.scores, scored.problems, scored.plain, scored.mirror, judged)
        return [self._prediction(p, s, f, q) for p, s, f, q in zip(scored.served, scored.scores, flags, known)]

    def _prepare(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[ImageProblem | None]]:
        """The network input and the image checks' findings, spread over the threads (Pillow and
        NumPy release the GIL)."""

        def prepare(part: Sequence[Image.Image]) -> tuple[np.ndarray, list[ImageProblem | None]]:
            array = input_array(part, self.image_size, self._mean, self._std, self.crop_head)
            return array, [image_problem(image, self.image_limits) for image in part]

        if self._pool is None or len(images) < 2:
            return prepare(images)
        bounds = np.linspace(0, len(images), min(self._threads, len(images)) + 1).round().astype(int)
        parts = list(self._pool.map(prepare, [images[a:b] for a, b in zip(bounds[:-1], bounds[1:])]))
        return np.concatenate([p[0] for p in parts]), [problem for p in parts for problem in p[1]]

    def _prediction(self, probs: np.ndarray, score: float, flags: tuple[Flag, ...], sequence: SequenceInfo) -> Prediction:
        probabilities = {name: float(p) for name, p in zip(self.class_names, probs)}
        label = self.class_names[int(np.argmax(probs))]
        kinds = {flag.kind for flag in flags}
        return Prediction(
            label=label,
            confidence=probabilities[label],
            probabilities=probabilities,
            is_brain_mri=NOT_BRAIN_MRI not in kinds,
            ood_score=float(score),
            flags=flags,
            outside_training=OUTSIDE_TRAINING in kinds,
            sequence=sequence,
        )

    # ------------------------------------------------------------------ explanation
    def explain(self, image: Image.Image, target: str | None = None) -> np.ndarray:
        """Grad-CAM heatmap (float32 in [0, 1], the size of ``image``) of the predicted class,
        or of the class named by ``target``. Always in float32 PyTorch."""
        image = _check_image(image)
        if target is not None and target not in self.class_names:
            raise ValueError(f"Unknown target class {target!r}; choose one of {self.class_names}.")
        index = None if target is None else self.class_names.index(target)
        # The network saw the head's box only: the heatmap goes back into that box, fading to
        # zero over one Grad-CAM cell beyond it (core.cam.paste_heatmap).
        box = head_box(image) if self.crop_head else (0, 0, *image.size)
        left, top, right, bottom = box
        tensor = self._box_transform(to_grayscale(image).crop(box)).unsqueeze(0).to(self.device)
        inside = self.cam(tensor, index, (right - left, bottom - top))
        if not self.crop_head:
            return inside
        return paste_heatmap(inside, box, image.size, self.cam.cells(self.image_size))


def _tagged(image: Image.Image) -> SequenceInfo | None:
    """The sequence of the image's own DICOM tags (``image.info["sequence"]``) when they decide."""
    sequence = image.info.get("sequence")
    return sequence if decided(sequence) else None


def _check_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image (use core.read_scan to read a file), got {type(image).__name__}.")
    return image


def load_model(
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    tta: bool = False,
    threads: int | None = None,
) -> Classifier:
    """Load a classifier: the shipped weights (``assets/``, or ``$BTMRI_ASSETS``), or ``weights``.

    The model card beside the weights gives the architecture, input size, normalisation,
    temperature, review thresholds, the out-of-distribution gate, the ONNX graph and the sequence
    recogniser with the class x sequence table behind ``sequence_not_learned``; the sha256
    of each file must match it. On the CPU predictions run through ONNX Runtime in float32.
    ``tta=True`` averages each prediction with the mirrored scan's and flags a disagreement
    (twice the compute). ``threads``: CPU threads one call may use (default: torch's thread
    count; torch's process-wide count is set to it too).
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}.")
        torch.set_num_threads(threads)
    threads = threads if threads is not None else torch.get_num_threads()
    path = Path(weights) if weights is not None else default_weights()
    state, card = load_weights(path)
    net = build_network(card["arch"], num_classes=len(card["class_names"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"Weights file {str(path)!r} does not fit the architecture {card['arch']!r}: {exc}") from exc
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gate = load_gate(path.parent, card)
    recogniser = load_recogniser(path.parent, card)
    classifier = Classifier(net, card, path.parent, gate, device, tta=tta, threads=threads, recogniser=recogniser)
    logger.info("loaded %s (%s) on %s; gate: %s; sequence recogniser: %s; runtime: %s", path, card["arch"], device,
                gate is not None, recogniser is not None, classifier.runtime.name)
    return classifier
