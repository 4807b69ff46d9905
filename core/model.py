"""The classifier: a timm network wrapped with the shared preprocessing, prediction and Grad-CAM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from . import nets  # noqa: F401  (registers small_cnn with timm)
from .constants import CLASS_LABELS, CLASS_NAMES, NEGATIVE_CLASS, UNFITTED_LOW_CONFIDENCE, WEAK_NEGATIVE_FLAG, default_weights
from .backend import Backend, choose_backend
from .cam import GradCamExplainer, paste_heatmap
from .ood import NOT_BRAIN_MRI_FLAG, OUTSIDE_TRAINING_FLAG, FeatureGate, ImageLimits, image_problem, load_gate
from .optimize import optimize_for_inference
from .ort import PRECISIONS, OnnxNetwork, load_runtime
from .preprocess import eval_transform, head_box, to_grayscale
from .weights import WeightsError, load_weights

__all__ = ["Classifier", "Prediction", "answer_cosine", "build_network", "load_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one scan."""

    label: str
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    #: False when the input does not look like a brain MRI slice (the label is then withheld).
    is_brain_mri: bool = True
    #: Out-of-distribution score: distance to the Training scans in feature space over the
    #: rejection threshold (above 1 is rejected); 0.0 when the model has no feature gate.
    ood_score: float = 0.0
    #: Reasons to review this prediction, in plain words (empty when none): low confidence, a
    #: weak "no tumour" answer, outside the training data, not recognised as a brain MRI, and
    #: with ``tta`` disagreement with the mirrored scan.
    flags: tuple[str, ...] = ()
    #: True when the scan is a brain MRI unlike the scans the model learned from (another
    #: sequence, preparation or orientation): the prediction is unreliable. Not the same as
    #: ``is_brain_mri`` False, which is for photos, documents and noise.
    outside_training: bool = False



@dataclass(frozen=True)
class _Outputs:
    """One forward pass over scans and their mirror images."""

    probs: torch.Tensor  # (N, C) calibrated, mirror-averaged when tta
    plain: torch.Tensor  # (N, C) calibrated, scans as they are
    mirror: torch.Tensor | None  # (N, C) calibrated, mirror images (None: not run)
    features: np.ndarray | None  # (N, D) gate features of the scans as they are (None: no gate)
    problems: list[str | None]  # what the image checks object to, per scan (None: nothing)


def build_network(arch: str, num_classes: int = len(CLASS_NAMES)) -> torch.nn.Module:
    """A randomly initialised timm network (weights are loaded separately; nothing is downloaded)."""
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:
        raise ValueError(
            f"Unknown architecture {arch!r}; use a timm model name such as 'efficientnet_lite0'."
        ) from exc


class Classifier:
    """A loaded model. ``predict`` and ``explain`` are safe to call from several threads.

    The prediction pipeline, in :meth:`_predictions`: scans -> preprocess and image checks
    (``backend.prepare``) -> network, with ``tta`` on the scans and their mirror images in one
    pass (``backend.run``) -> calibration (temperature) -> out-of-distribution gate -> flags ->
    :class:`Prediction`. The back-end (PyTorch or ONNX Runtime, ``core.backend``) is chosen
    once, here; Grad-CAM (``core.cam``) always runs in PyTorch.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        card: dict[str, Any],
        device: str | torch.device = "cpu",
        tta: bool = False,
        gate: FeatureGate | None = None,
        runtime: OnnxNetwork | None = None,
        mirror_check: bool | None = None,
    ):
        self.card = card
        #: Run each scan's mirror image too and flag the scan when the two get different
        #: classes (with ``tta`` the mirror image always runs, for the average). Default: with
        #: ``tta`` only. Off, a prediction costs one pass instead of two; the flag caught few
        #: errors the other flags miss (``docs/performance.md``, "What the mirror pass buys").
        self.mirror_check = bool(tta) if mirror_check is None else bool(mirror_check)
        #: Out-of-distribution gate on the pooled features (None: image checks only).
        self.gate = gate
        self.image_limits = ImageLimits()
        #: Scans whose int8 answer was run again in float32 since loading (for reports; not
        #: locked, so approximate under concurrent calls).
        self.rechecked_scans = 0
        uncertainty = card.get("uncertainty", {})
        self.low_confidence = float(uncertainty.get("low_confidence_below", UNFITTED_LOW_CONFIDENCE))
        #: Confidence a "no tumour" answer needs to be shown without a flag (None: weights
        #: whose card fitted none; then only ``low_confidence`` applies).
        # Cards written since the floor moved to the answer cosine name it so; older cards hold a
        # floor on the calibrated confidence.
        cosine = uncertainty.get("notumor_cosine_below")
        floor = cosine if cosine is not None else uncertainty.get("notumor_confidence_below")
        self.negative_floor: float | None = None if floor is None else float(floor)
        #: What the floor is compared with: "cosine" (:func:`answer_cosine`) or "confidence"
        #: (the calibrated "no tumour" probability, cards written before the cosine).
        self.negative_score = "cosine" if cosine is not None else "confidence"
        #: Test-time augmentation: average the probabilities of the scan and its mirror image.
        self.tta = bool(tta)
        self.class_names: tuple[str, ...] = tuple(card["class_names"])
        if self.class_names != CLASS_NAMES:
            raise WeightsError(
                f"The model's classes {self.class_names} differ from the expected {CLASS_NAMES}."
            )
        self.image_size = int(card["image_size"])
        self.temperature = float(card.get("temperature", 1.0))
        self.device = torch.device(device)
        #: Each scan is cropped to its head before resizing (weights trained with
        #: ``python -m train --crop-head``; ``core.preprocess.head_box``).
        self.crop_head = bool(card.get("crop_head", False))
        self.transform = eval_transform(self.image_size, card["mean"], card["std"], self.crop_head)
        # For a scan already cropped to its head's box (explain finds the box once and reuses it).
        self._box_transform = eval_transform(self.image_size, card["mean"], card["std"], crop_head=False)

        network = net.to(self.device).eval().to(memory_format=torch.channels_last)
        for param in network.parameters():
            param.requires_grad_(False)
        #: The PyTorch network, batch norms folded into the convolutions (checked equal, else
        #: left as it is).
        self.network = optimize_for_inference(network, self.image_size)
        #: Grad-CAM, on its own copy of the network.
        self.cam = GradCamExplainer(self.network)
        stages = self.gate.stages if self.gate is not None else ()
        #: What runs the network for predictions (``core.backend``).
        self.backend: Backend = choose_backend(
            self.network, self.device, stages, self.image_size, card["mean"], card["std"], runtime, self.crop_head
        )

    # ------------------------------------------------------------------ prediction
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The PyTorch network input (N, 3, size, size), float32, on the model's device."""
        return torch.stack([self.transform(image) for image in images]).to(self.device)

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Raw network outputs (N, classes) for the scans as they are (no mirror), from the
        served graph as it is (int8 answers are not re-checked here)."""
        return torch.from_numpy(self.backend.run(self.backend.prepare(images))[0]).float()

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Calibrated class probabilities (N, classes), float64; mirror-averaged when ``tta``."""
        out, batch = self._outputs(images)
        return self._rechecked(out, self._scores(out), batch)[0].probs

    def _prepare(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[str | None]]:
        """Network input and the image checks' objections (None: nothing) for some scans."""
        return self.backend.prepare(images), [image_problem(image, self.image_limits) for image in images]

    def _outputs(self, images: Sequence[Image.Image]) -> tuple[_Outputs, np.ndarray]:
        """Steps 1-3: preprocess and check, run the network on the scans (and their mirror images,
        with ``tta`` or ``mirror_check``) in one pass (the gate's statistics tapped on the way),
        calibrate. Also the network input."""
        # Spread over the back-end's threads where it has them; no torch operation (with its
        # own thread pool) runs between two ONNX Runtime predictions.
        parts = self.backend.map(self._prepare, images)
        batch = np.concatenate([part[0] for part in parts])
        problems = [problem for part in parts for problem in part[1]]
        return self._run(self.backend, batch, problems), batch

    @property
    def mirror_pass(self) -> bool:
        """Whether each scan's mirror image runs too (for ``tta`` or ``mirror_check``)."""
        return self.tta or self.mirror_check

    def _run(self, backend: Backend, batch: np.ndarray, problems: list[str | None]) -> _Outputs:
        n = len(batch)
        mirrored = self.mirror_pass
        logits, taps = backend.run(batch, mirror=mirrored)
        features = taps[:n] if taps is not None and self.gate is not None else None
        probs = torch.from_numpy(softmax(logits, self.temperature))
        plain, mirror = probs[:n], (probs[n:] if mirrored else None)
        averaged = (plain + mirror) / 2 if self.tta else plain
        return _Outputs(probs=averaged, plain=plain, mirror=mirror, features=features, problems=problems)

    def _scores(self, out: _Outputs) -> torch.Tensor:
        if self.gate is not None and out.features is not None:
            return torch.as_tensor(self.gate.score(out.features)).clone()
        return torch.zeros(len(out.problems))

    def _rechecked(self, out: _Outputs, scores: torch.Tensor, batch: np.ndarray) -> tuple[_Outputs, torch.Tensor]:
        """An int8 back-end's answers that float32 could give otherwise (``core.ort.Recheck``),
        run again through its float32 reference; the others as they are."""
        backend = self.backend
        if backend.recheck is None or backend.reference is None:
            return out, scores
        reject = self.gate.reject_score if self.gate is not None else float("inf")
        views = [out.probs, out.plain] + ([out.mirror] if out.mirror is not None else [])
        negative = None if self.negative_floor is None else (self.class_names.index(NEGATIVE_CLASS), self.negative_floor)
        values = None if negative is None else self.negative_values(out.probs.numpy())
        rows = backend.recheck.rows([v.numpy() for v in views], scores.numpy(), self.low_confidence, (1.0, reject), negative,
                                    values)
        # Scans the image checks reject get no network answer to differ in.
        rows &= np.array([problem is None for problem in out.problems])
        index = np.flatnonzero(rows)
        self.rechecked_scans += len(index)
        if len(index) == 0:
            return out, scores
        again = self._run(backend.reference, batch[index], [out.problems[i] for i in index])
        t = torch.from_numpy(index)
        probs, plain = out.probs.clone(), out.plain.clone()
        probs[t], plain[t] = again.probs, again.plain
        mirror = None
        if out.mirror is not None and again.mirror is not None:
            mirror = out.mirror.clone()
            mirror[t] = again.mirror
        features = out.features
        if features is not None and again.features is not None:
            features = features.copy()
            features[index] = again.features
        scores = scores.clone()
        scores[t] = self._scores(again).to(scores.dtype)
        return _Outputs(probs=probs, plain=plain, mirror=mirror, features=features, problems=out.problems), scores

    def _flags(
        self, probs: torch.Tensor, plain: torch.Tensor, mirror: torch.Tensor | None, ood: str | None, outside: str | None = None
    ) -> tuple[str, ...]:
        flags = []
        if ood is not None:
            flags.append(f"{NOT_BRAIN_MRI_FLAG} ({ood})")
        elif outside is not None:
            flags.append(f"{OUTSIDE_TRAINING_FLAG} ({outside})")
        confidence = float(probs.max())
        if confidence < self.low_confidence:
            flags.append(f"low confidence ({confidence:.1%}, below {self.low_confidence:.0%})")
        elif self._weak_negative(probs):
            if self.negative_score == "cosine":
                value = float(self.negative_values(probs.numpy()[None])[0])
                runner_up = self.class_names[int(torch.argsort(probs, descending=True)[1])]
                flags.append(
                    f"{WEAK_NEGATIVE_FLAG} (no tumour at {confidence:.1%}, but {CLASS_LABELS[runner_up].lower()} stands out "
                    f"among the alternatives: answer cosine {value:.3f}, needs {self.negative_floor:.3f})"
                )
            else:  # one decimal, so that 94.8 % is not shown as "95%, needs 95%"
                flags.append(f"{WEAK_NEGATIVE_FLAG} (no tumour at {confidence:.1%}, needs {self.negative_floor:.0%})")
        if mirror is None or not self.mirror_check:
            return tuple(flags)
        plain_label, mirror_label = (self.class_names[int(p.argmax())] for p in (plain, mirror))
        if plain_label != mirror_label:
            flags.append(
                f"the mirror image of the scan is classified differently "
                f"({CLASS_LABELS[plain_label]} vs {CLASS_LABELS[mirror_label]})"
            )
        return tuple(flags)

    def negative_values(self, probs: np.ndarray) -> np.ndarray:
        """What the floor of "no tumour" answers is compared with, per row of calibrated
        probabilities (N, classes): the answer cosine, or for older cards the "no tumour"
        probability."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.negative_score == "cosine":
            return answer_cosine(probs)
        return probs[:, self.class_names.index(NEGATIVE_CLASS)]

    def _weak_negative(self, probs: torch.Tensor) -> bool:
        """A "no tumour" answer below the floor a negative answer needs."""
        if self.negative_floor is None:
            return False
        index = int(probs.argmax())
        if self.class_names[index] != NEGATIVE_CLASS:
            return False
        return float(self.negative_values(probs.numpy()[None])[0]) < self.negative_floor

    def _predictions(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """The whole pipeline: outputs (steps 1-3), then the gate and the flags."""
        out, batch = self._outputs(images)
        out, scores = self._rechecked(out, self._scores(out), batch)
        reject = self.gate.reject_score if self.gate is not None else float("inf")
        results = []
        for i in range(len(images)):
            score = float(scores[i])
            ood, outside = out.problems[i], None
            if ood is None and score > reject:
                ood = f"far from any brain MRI the model learned from: out-of-distribution score {score:.2f} > {reject:.2f}"
            elif ood is None and score > 1.0:
                outside = f"unlike the training scans: out-of-distribution score {score:.2f} > 1"
            flags = self._flags(out.probs[i], out.plain[i], out.mirror[i] if out.mirror is not None else None, ood, outside)
            results.append(self._to_prediction(out.probs[i], score, ood, flags, outside is not None))
        return results

    def _to_prediction(
        self, probs: torch.Tensor, ood_score: float, ood: str | None, flags: tuple[str, ...], outside: bool = False
    ) -> Prediction:
        index = int(torch.argmax(probs))
        probabilities = {name: float(p) for name, p in zip(self.class_names, probs.tolist())}
        return Prediction(
            label=self.class_names[index],
            confidence=probabilities[self.class_names[index]],
            probabilities=probabilities,
            is_brain_mri=ood is None,
            ood_score=ood_score,
            flags=flags,
            outside_training=outside,
        )

    def predict(self, image: Image.Image) -> Prediction:
        """Classify one scan (a PIL image, as returned by :func:`core.read_scan`)."""
        return self._predictions([_check_image(image)])[0]

    def predict_batch(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Prediction]:
        """Classify many scans; equal to calling :meth:`predict` on each."""
        images = [_check_image(image) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            results.extend(self._predictions(images[start : start + batch_size]))
        return results

    # ------------------------------------------------------------------ explanation
    def explain(self, image: Image.Image, target: str | None = None) -> np.ndarray:
        """Grad-CAM heatmap (float32, values in [0, 1], same height and width as ``image``).

        It explains the predicted class, or the class named by ``target``.
        """
        image = _check_image(image)
        if target is not None and target not in self.class_names:
            raise ValueError(f"Unknown target class {target!r}; choose one of {self.class_names}.")
        # No target: Grad-CAM explains the top class of its own forward pass (no extra pass).
        index = None if target is None else self.class_names.index(target)
        if not self.crop_head:
            return self.cam(self.preprocess([image]), index, image.size)
        # The network saw the head's box only: its heatmap goes back into that box, fading to
        # zero over one Grad-CAM cell beyond it (core.cam.paste_heatmap).
        left, top, right, bottom = box = head_box(image)
        tensor = self._box_transform(to_grayscale(image).crop(box)).unsqueeze(0).to(self.device)
        inside = self.cam(tensor, index, (right - left, bottom - top))
        return paste_heatmap(inside, box, image.size, self.cam.cells(self.image_size))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` over the last axis, float64, in NumPy (see
    :meth:`core.ood.FeatureGate.distance` on why): how every served probability is computed."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def answer_cosine(probs: np.ndarray) -> np.ndarray:
    """How cleanly each answer points at its class, per row of probabilities (..., classes):
    the cosine between the centred log-probabilities and the centred one-hot vector of the top
    class. It is 1 when the other classes are equally unlikely and falls when one of them stands
    out from the rest, however high the top probability. Centred log-probabilities are the logits
    over the temperature, less their mean, so the cosine does not depend on the temperature.

    This is the maximum centred logit over the logits' 2-norm (MaxLogit-pNorm with p = 2,
    Cattelan and Silva 2023, "How to fix a broken confidence estimator"), divided by its largest
    value sqrt((K - 1) / K). A uniform answer gets 0. It ranks answers better than the top
    probability for the floor of "no tumour" answers (``docs/trust.md``).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 2:
        raise ValueError(f"probs must have at least two classes on its last axis, got shape {p.shape}.")
    z = np.log(np.clip(p, np.finfo(np.float64).tiny, None))
    z = z - z.mean(axis=-1, keepdims=True)
    k = z.shape[-1]
    norm = np.linalg.norm(z, axis=-1)
    safe = np.where(norm > 0, norm, 1.0)
    return np.where(norm > 0, z.max(axis=-1) / safe / np.sqrt((k - 1) / k), 0.0)


def _check_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"Expected a PIL image (use core.read_scan to read a file), got {type(image).__name__}."
        )
    return image


def load_model(
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    tta: bool = False,
    threads: int | None = None,
    precision: str = "int8",
    mirror_check: bool | None = None,
) -> Classifier:
    """Load a classifier: the shipped weights (``assets/``, or ``$BTMRI_ASSETS``), or ``weights``.

    The model card (``model_card.json`` beside the weights) gives the architecture, input
    size, normalisation, temperature and the out-of-distribution gate file (``ood.safetensors``);
    the sha256 of the weights and of the gate must match it. ``tta=True`` averages each
    prediction with that of the mirrored scan and flags the scans whose mirror image gets another
    class (twice the compute); ``mirror_check=True`` runs the mirror image for that flag alone
    (default: with ``tta`` only). ``threads``: CPU threads one
    call may use (ONNX Runtime's concurrent runs; torch's thread count is process-wide and is
    set to it too); default: torch's current thread count. ``precision``: "int8" serves the
    quantized ONNX graph on the CPU when the card records one that passed its fidelity check
    against float32 (``python -m train.quantize``), else float32; "float32" serves the float32
    graph, the reference (``core.ort.PRECISIONS``). Grad-CAM always runs in float32 PyTorch.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}.")
        torch.set_num_threads(threads)
    path = Path(weights) if weights is not None else default_weights()
    state, card = load_weights(path)
    net = build_network(card["arch"], num_classes=len(card["class_names"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"Weights file {str(path)!r} does not fit the architecture {card['arch']!r}: {exc}"
        ) from exc
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gate = load_gate(path.parent, card)
    runtime = load_runtime(path.parent, card, threads, precision) if torch.device(device).type == "cpu" else None
    classifier = Classifier(net, card, device, tta=tta, gate=gate, runtime=runtime, mirror_check=mirror_check)
    logger.info(
        "loaded %s (%s) on %s; feature gate: %s; back-end: %s, %s",
        path, card["arch"], device, gate is not None, classifier.backend.name, classifier.backend.precision,
    )
    return classifier
