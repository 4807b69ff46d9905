"""The classifier: a timm network wrapped with the shared preprocessing, prediction and Grad-CAM."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from . import nets  # noqa: F401  (registers small_cnn with timm)
from .constants import CLASS_LABELS, CLASS_NAMES, UNFITTED_LOW_CONFIDENCE, default_weights
from .ood import (
    NOT_BRAIN_MRI_FLAG,
    OUTSIDE_TRAINING_FLAG,
    FeatureGate,
    ImageLimits,
    forward_with_taps,
    image_problem,
    load_gate,
)
from .optimize import optimize_for_inference
from .ort import OnnxNetwork, load_runtime
from .preprocess import eval_transform, input_array
from .weights import WeightsError, load_weights

__all__ = ["Classifier", "Prediction", "build_network", "load_model"]

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
    #: Reasons to review this prediction, in plain words (empty when none): low confidence,
    #: disagreement with the mirrored scan, outside the training data, not recognised as a
    #: brain MRI.
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
    mirror: torch.Tensor  # (N, C) calibrated, mirror images
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


def _cam_target_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage: where Grad-CAM reads activations and gradients."""
    for name in ("bn2", "conv_head", "norm_pre"):
        layer = getattr(net, name, None)
        if isinstance(layer, torch.nn.Module) and not isinstance(layer, torch.nn.Identity):
            return layer
    # Plain convolutional networks (core.nets.SmallCNN, timm's VGG): the last layer of
    # ``features`` that is not a pooling layer.
    features = getattr(net, "features", None)
    if isinstance(features, torch.nn.Sequential):
        for layer in reversed(features):
            if not isinstance(layer, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
                return layer
    raise ValueError(f"No Grad-CAM target layer known for {type(net).__name__}.")


def _cam_gradient_source(net: torch.nn.Module, layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameters start the gradient at the Grad-CAM target layer: the layer
    itself, or (a folded batch norm, now only its activation) the convolution before it."""
    if any(True for _ in layer.parameters()):
        return layer
    conv = getattr(net, "conv_head", None)
    if isinstance(conv, torch.nn.Module) and any(True for _ in conv.parameters()):
        return conv
    return net


class Classifier:
    """A loaded model. ``predict`` and ``explain`` are safe to call from several threads."""

    def __init__(
        self,
        net: torch.nn.Module,
        card: dict[str, Any],
        device: str | torch.device = "cpu",
        tta: bool = False,
        gate: FeatureGate | None = None,
        runtime: OnnxNetwork | None = None,
    ):
        self.card = card
        #: Out-of-distribution gate on the pooled features (None: image checks only).
        self.gate = gate
        self.image_limits = ImageLimits()
        self.low_confidence = float(card.get("uncertainty", {}).get("low_confidence_below", UNFITTED_LOW_CONFIDENCE))
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
        self.transform = eval_transform(self.image_size, card["mean"], card["std"])

        self.network = net.to(self.device).eval().to(memory_format=torch.channels_last)
        for param in self.network.parameters():
            param.requires_grad_(False)
        # Batch norms folded into the convolutions (checked equal, else left as they are).
        self.network = optimize_for_inference(self.network, self.image_size)
        # Grad-CAM hooks live on a module, so explanations use their own copy of the network
        # (predictions never pass through the hooks) and are serialised by a lock.
        self._cam_net = copy.deepcopy(self.network)
        self._cam_layer = _cam_target_layer(self._cam_net)
        # Gradients are needed from the logits back to the target layer only: leave the
        # backbone frozen so the backward pass stops there (several times cheaper). Once the
        # batch norm is folded the target layer is its activation, which has no parameters:
        # the convolution before it then starts the gradient.
        for param in _cam_gradient_source(self._cam_net, self._cam_layer).parameters():
            param.requires_grad_(True)
        self._cam_lock = threading.Lock()
        #: ONNX Runtime session for predictions on the CPU (None: PyTorch).
        self.runtime = self._checked_runtime(runtime)

    def _checked_runtime(self, runtime: OnnxNetwork | None) -> OnnxNetwork | None:
        """``runtime`` when it can serve this model's predictions, else None (PyTorch serves)."""
        if runtime is None:
            return None
        if self.device.type != "cpu":
            logger.info("ONNX Runtime is used on the CPU only; predictions on %s run through PyTorch", self.device)
            return None
        stages = self.gate.stages if self.gate is not None else ()
        if tuple(runtime.stages) != tuple(stages):
            raise WeightsError(
                f"The ONNX network taps blocks {tuple(runtime.stages)} but the out-of-distribution gate "
                f"needs {tuple(stages)}; run python -m train.export again."
            )
        generator = torch.Generator().manual_seed(0)
        # Grey scans, as the preprocessing gives them: three equal channels.
        grey = torch.rand(2, 1, self.image_size, self.image_size, generator=generator) * 2 - 1
        batch = grey.expand(-1, 3, -1, -1).contiguous()
        with torch.inference_mode():
            expected, expected_taps = forward_with_taps(self.network, batch.contiguous(memory_format=torch.channels_last), stages)
            got, got_taps = runtime(batch)
        same = torch.allclose(got, expected.float(), rtol=1e-4, atol=1e-3) and (
            expected_taps is None or torch.allclose(got_taps, expected_taps.float(), rtol=1e-4, atol=1e-3)
        )
        if not same:
            logger.warning("the ONNX network's outputs differ from the weights'; predictions run through PyTorch")
            return None
        return runtime

    # ------------------------------------------------------------------ prediction
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The network input (N, 3, size, size), float32, on the model's device."""
        return torch.stack([self.transform(image) for image in images]).to(self.device)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the gate's tapped features (None without a gate), float64 on the CPU."""
        stages = self.gate.stages if self.gate is not None else ()
        with torch.inference_mode():
            if self.runtime is not None:
                logits, taps = self.runtime(batch)
            else:
                logits, taps = forward_with_taps(self.network, batch.contiguous(memory_format=torch.channels_last), stages)
        taps = taps.double().cpu() if stages and taps is not None else None
        return logits.double().cpu(), taps

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Raw network outputs (N, classes) for the scans as they are (no mirror)."""
        return self._forward(self.preprocess(images))[0].float()

    def _prepared(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[str | None]]:
        """The network input as NumPy (see :func:`core.preprocess.input_array`) and the image
        checks' objections, for the ONNX Runtime path."""
        channels = self.runtime.channels
        array = input_array(images, self.image_size, self.card["mean"][:channels], self.card["std"][:channels])
        return array, self._image_problems(images)

    def _image_problems(self, images: Sequence[Image.Image]) -> list[str | None]:
        return [image_problem(image, self.image_limits) for image in images]

    def _outputs(self, images: Sequence[Image.Image]) -> _Outputs:
        """One forward pass over the scans and their mirror images: probabilities, and the gate's
        features tapped on the way (no second pass)."""
        n = len(images)
        if self.runtime is not None:
            # Prepared on the runtime's threads, and no torch operation (with its own thread
            # pool) on the way: measured 18 ms per prediction this way, 27 ms through torch.
            parts = self.runtime.map(self._prepared, images)
            array = np.concatenate([part[0] for part in parts])
            problems = [problem for part in parts for problem in part[1]]
            raw_logits, raw_taps = self.runtime.run(array, mirror=True)
            logits = raw_logits.astype(np.float64)
            taps = raw_taps.astype(np.float64) if raw_taps is not None and self.gate is not None else None
        else:
            batch = self.preprocess(images)
            logits, taps = (t.numpy() if t is not None else None for t in self._forward(torch.cat([batch, torch.flip(batch, dims=[3])])))
            problems = self._image_problems(images)
        features = taps[:n] if taps is not None else None
        probs = torch.from_numpy(softmax(logits, self.temperature))
        plain, mirror = probs[:n], probs[n:]
        averaged = (plain + mirror) / 2 if self.tta else plain
        return _Outputs(probs=averaged, plain=plain, mirror=mirror, features=features, problems=problems)

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Calibrated class probabilities (N, classes), float64; mirror-averaged when ``tta``."""
        return self._outputs(images).probs

    def _flags(
        self, probs: torch.Tensor, plain: torch.Tensor, mirror: torch.Tensor, ood: str | None, outside: str | None = None
    ) -> tuple[str, ...]:
        flags = []
        if ood is not None:
            flags.append(f"{NOT_BRAIN_MRI_FLAG} ({ood})")
        elif outside is not None:
            flags.append(f"{OUTSIDE_TRAINING_FLAG} ({outside})")
        confidence = float(probs.max())
        if confidence < self.low_confidence:
            flags.append(f"low confidence ({confidence:.0%}, below {self.low_confidence:.0%})")
        plain_label, mirror_label = (self.class_names[int(p.argmax())] for p in (plain, mirror))
        if plain_label != mirror_label:
            flags.append(
                f"the mirror image of the scan is classified differently "
                f"({CLASS_LABELS[plain_label]} vs {CLASS_LABELS[mirror_label]})"
            )
        return tuple(flags)

    def _predictions(self, images: Sequence[Image.Image]) -> list[Prediction]:
        out = self._outputs(images)
        scores = self.gate.score(out.features) if self.gate is not None and out.features is not None else torch.zeros(len(images))
        reject = self.gate.reject_score if self.gate is not None else float("inf")
        results = []
        for i in range(len(images)):
            score = float(scores[i])
            ood, outside = out.problems[i], None
            if ood is None and score > reject:
                ood = f"far from any brain MRI the model learned from: out-of-distribution score {score:.2f} > {reject:.2f}"
            elif ood is None and score > 1.0:
                outside = f"unlike the training scans: out-of-distribution score {score:.2f} > 1"
            flags = self._flags(out.probs[i], out.plain[i], out.mirror[i], ood, outside)
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
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        image = _check_image(image)
        if target is not None and target not in self.class_names:
            raise ValueError(f"Unknown target class {target!r}; choose one of {self.class_names}.")
        batch = self.preprocess([image]).contiguous(memory_format=torch.channels_last)
        # No target: Grad-CAM explains the top class of its own forward pass (no extra pass).
        targets = None if target is None else [ClassifierOutputTarget(self.class_names.index(target))]
        with self._cam_lock:
            with GradCAM(model=self._cam_net, target_layers=[self._cam_layer]) as cam:
                heatmap = cam(input_tensor=batch, targets=targets)[0]
            self._cam_net.zero_grad(set_to_none=True)
        resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
            image.size, Image.Resampling.BILINEAR
        )
        return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` over the last axis, float64, in NumPy (see
    :meth:`core.ood.FeatureGate.distance` on why): how every served probability is computed."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


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
) -> Classifier:
    """Load a classifier: the shipped weights (``assets/``, or ``$BTMRI_ASSETS``), or ``weights``.

    The model card (``model_card.json`` beside the weights) gives the architecture, input
    size, normalisation, temperature and the out-of-distribution gate file (``ood.safetensors``);
    the sha256 of the weights and of the gate must match it. ``tta=True`` averages each
    prediction with that of the mirrored scan (twice the compute). ``threads``: CPU threads one
    call may use (ONNX Runtime's concurrent runs; torch's thread count is process-wide and is
    set to it too); default: torch's current thread count.
    """
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
    runtime = load_runtime(path.parent, card, threads) if torch.device(device).type == "cpu" else None
    logger.info(
        "loaded %s (%s) on %s; feature gate: %s; ONNX Runtime: %s",
        path, card["arch"], device, gate is not None, runtime is not None,
    )
    return Classifier(net, card, device, tta=tta, gate=gate, runtime=runtime)
