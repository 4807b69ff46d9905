"""Back-ends: what runs the prediction network.

A :class:`Backend` takes scans to a network input (:meth:`Backend.prepare`) and a network input to
float64 logits and the out-of-distribution gate's tapped statistics (:meth:`Backend.run`). Two
implementations:

- :class:`TorchBackend`: the PyTorch network (batch norms folded, ``core.optimize``), on any
  device; input from :func:`core.preprocess.eval_transform`.
- :class:`OnnxBackend`: the exported ``model.onnx`` in ONNX Runtime on the CPU (about twice as
  fast on the 2-core development machine; ``docs/performance.md``); input from
  :func:`core.preprocess.input_array`, the same numbers computed with Pillow and NumPy; float32,
  or int8 when the model card records a quantized graph that passed its fidelity check
  (``core.ort``, ``python -m train.quantize``).

:func:`choose_backend` picks one, once, when a model is built; nothing else branches on which
is in use. Training (``train.finalize``, ``train.evaluate``, ``train.ood``) scores scans through
the same objects.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from .constants import INPUT_MEAN, INPUT_STD
from .ood import forward_with_taps
from .ort import OnnxNetwork, Recheck
from .preprocess import eval_transform, input_array

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "choose_backend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Batch = np.ndarray | torch.Tensor


class Backend(ABC):
    """Runs the prediction network. ``run`` and ``prepare`` are safe to call from several threads."""

    #: "pytorch" or "onnxruntime".
    name: str
    #: "float32" or "int8" (``core.ort.PRECISIONS``).
    precision: str = "float32"
    #: The float32 back-end near-boundary answers are run again through (int8 only; else None).
    reference: Backend | None = None
    #: Which answers to run again through ``reference`` (``core.ort.Recheck``; None: none).
    recheck: Recheck | None = None
    #: Indices of the network blocks whose statistics ``run`` taps (empty: no taps).
    stages: tuple[int, ...]

    #: Whether :meth:`prepare` crops each scan to its head first (weights trained so record
    #: ``crop_head`` in their model card; ``core.preprocess.head_box``).
    crop_head: bool = False

    @abstractmethod
    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The network input for ``images``: float32 (N, C, size, size)."""

    @abstractmethod
    def run(self, batch: Batch, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, classes) and taps (N, features; None without stages), float64, of a
        network input with three equal grey channels, as :meth:`prepare` or the training
        data loaders give it. ``mirror``: also of the horizontally mirrored inputs, as if
        ``batch`` were followed by its mirror image (2N rows out)."""

    def map(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` over consecutive chunks of ``items``, in order; one chunk unless the back-end
        has threads of its own to spread the work over."""
        return [fn(items)]


class TorchBackend(Backend):
    """The PyTorch network on ``device``."""

    name = "pytorch"

    def __init__(
        self,
        net: torch.nn.Module,
        device: str | torch.device = "cpu",
        stages: Sequence[int] = (),
        image_size: int | None = None,
        mean: Sequence[float] = INPUT_MEAN,
        std: Sequence[float] = INPUT_STD,
        crop_head: bool = False,
    ):
        self.net = net
        self.device = torch.device(device)
        self.stages = tuple(int(s) for s in stages)
        self.crop_head = bool(crop_head)
        self.transform = eval_transform(image_size, mean, std, self.crop_head) if image_size is not None else None

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.transform is None:
            raise ValueError("This back-end was built without an image size; it runs prepared batches only.")
        return torch.stack([self.transform(image) for image in images]).numpy()

    def run(self, batch: Batch, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.as_tensor(batch).to(self.device, non_blocking=True)
        if mirror:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        with torch.inference_mode():
            logits, taps = forward_with_taps(self.net, x.contiguous(memory_format=torch.channels_last), self.stages)
        return logits.double().cpu().numpy(), taps.double().cpu().numpy() if taps is not None else None


class OnnxBackend(Backend):
    """``model.onnx`` in ONNX Runtime on the CPU, a batch split across concurrent runs."""

    name = "onnxruntime"

    def __init__(
        self,
        runtime: OnnxNetwork,
        image_size: int,
        mean: Sequence[float] = INPUT_MEAN,
        std: Sequence[float] = INPUT_STD,
        crop_head: bool = False,
    ):
        self.runtime = runtime
        self.crop_head = bool(crop_head)
        self.precision = runtime.precision
        self.stages = runtime.stages
        self.image_size = int(image_size)
        # A graph exported for grey input (train.export) takes the one channel.
        self.mean, self.std = list(mean)[: runtime.channels], list(std)[: runtime.channels]
        if runtime.reference is not None:
            self.reference = OnnxBackend(runtime.reference, image_size, mean, std, crop_head)
            self.recheck = runtime.recheck

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        return input_array(images, self.image_size, self.mean, self.std, self.crop_head)

    def map(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        # Pillow and NumPy release the GIL: preparing on the runtime's threads pays off.
        return self.runtime.map(fn, items)

    def run(self, batch: Batch, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        array = batch.detach().cpu().float().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, dtype=np.float32)
        if self.runtime.channels == 1 and array.ndim == 4 and array.shape[1] > 1:
            if not np.array_equal(array, np.broadcast_to(array[:, :1], array.shape)):
                raise ValueError(
                    "The ONNX network was exported for grey input (equal channels, see train.export); "
                    "this batch's channels differ."
                )
            array = array[:, :1]
        logits, taps = self.runtime.run(array, mirror=mirror)
        return logits.astype(np.float64), taps.astype(np.float64) if taps is not None else None


def choose_backend(
    network: torch.nn.Module,
    device: torch.device,
    stages: Sequence[int],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    runtime: OnnxNetwork | None = None,
    crop_head: bool = False,
) -> Backend:
    """ONNX Runtime when a runtime is given, the device is the CPU and its float32 graph's
    outputs (for an int8 runtime: its float32 reference's) match the PyTorch network's on a test
    batch; else PyTorch. An int8 graph is not held to that equality: it was checked against
    float32 on real scans when it was made (``train.quantize``), and its sha256 ties it to that
    check. Raises when the runtime taps
    other blocks than the gate needs (the files do not belong together)."""
    torch_backend = TorchBackend(network, device, stages, image_size, mean, std, crop_head)
    if runtime is None:
        return torch_backend
    if torch.device(device).type != "cpu":
        logger.info("ONNX Runtime is used on the CPU only; predictions on %s run through PyTorch", device)
        return torch_backend
    from .weights import WeightsError

    if tuple(runtime.stages) != tuple(stages):
        raise WeightsError(
            f"The ONNX network taps blocks {tuple(runtime.stages)} but the out-of-distribution gate "
            f"needs {tuple(stages)}; run python -m train.export again."
        )
    onnx_backend = OnnxBackend(runtime, image_size, mean, std, crop_head)
    checked = onnx_backend if onnx_backend.reference is None else onnx_backend.reference
    if runtime.precision != "float32" and onnx_backend.reference is None:
        return onnx_backend
    generator = torch.Generator().manual_seed(0)
    # Grey scans, as the preprocessing gives them: three equal channels.
    grey = torch.rand(2, 1, image_size, image_size, generator=generator) * 2 - 1
    batch = grey.expand(-1, 3, -1, -1).contiguous()
    expected, expected_taps = torch_backend.run(batch)
    got, got_taps = checked.run(batch)
    same = np.allclose(got, expected, rtol=1e-4, atol=1e-3) and (
        expected_taps is None or np.allclose(got_taps, expected_taps, rtol=1e-4, atol=1e-3)
    )
    if not same:
        logger.warning("the ONNX network's outputs differ from the weights'; predictions run through PyTorch")
        return torch_backend
    return onnx_backend
