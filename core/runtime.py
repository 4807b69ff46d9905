"""What runs the prediction network: ``run(batch) -> (logits, taps)``, chosen once at load time.

- :class:`OnnxRuntime`: the exported float32 ``model.onnx`` in one ONNX Runtime session on the
  CPU (faster than PyTorch there; ``docs/performance.md``).
- :class:`TorchRuntime`: the PyTorch network (batch norms folded), on any device: CUDA, or
  weights whose card names no ONNX graph.

Both take the float32 input of :func:`core.preprocess.input_array` and return float64 logits
(N, classes) and the statistics the out-of-distribution gate taps (N, features; None without
gate stages). :func:`open_runtime` picks one; nothing else branches on which is in use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .ood import forward_with_taps
from .weights import WeightsError, checked_companion

__all__ = ["ONNX_NAME", "OnnxRuntime", "Runtime", "TorchRuntime", "open_runtime", "open_session", "with_mirror"]

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
INPUT_NAME = "image"


class Runtime(Protocol):
    """Runs the network on a prepared batch. ``run`` is safe to call from several threads."""

    #: "onnxruntime" or "pytorch".
    name: str
    #: Input channels: 1 for a graph exported for grey input, else 3.
    channels: int

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def with_mirror(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """``batch`` (N, C, H, W) followed by its horizontally mirrored images (2N rows)."""
    batch = np.asarray(batch, dtype=np.float32)
    return np.concatenate([batch, batch[..., ::-1]])


def open_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads that stop spinning when a
    run returns (so they leave the CPU to the Grad-CAM pass that may follow)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    """One ONNX Runtime session computing ``(logits, taps)``."""

    name = "onnxruntime"

    def __init__(self, session: Any):
        self.session = session
        self._outputs = [o.name for o in session.get_outputs()]
        shape = session.get_inputs()[0].shape
        self.channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 3

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.asarray(batch, dtype=np.float32)
        if self.channels == 1 and batch.ndim == 4 and batch.shape[1] == 3:
            # The training loaders' grey scans repeated to three channels (equal by construction).
            if not np.array_equal(batch, np.broadcast_to(batch[:, :1], batch.shape)):
                raise ValueError("The ONNX network takes one grey channel; this batch's three channels differ.")
            batch = batch[:, :1]
        if batch.ndim != 4 or batch.shape[1] != self.channels:
            raise ValueError(f"The ONNX network takes (N, {self.channels}, H, W) arrays, got shape {batch.shape}.")
        outputs = self.session.run(self._outputs, {INPUT_NAME: batch})
        taps = outputs[1].astype(np.float64) if len(outputs) > 1 else None
        return outputs[0].astype(np.float64), taps


class TorchRuntime:
    """The PyTorch network on ``device``; taps the outputs of ``net.blocks[stages]``."""

    name = "pytorch"
    channels = 3

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", stages: tuple[int, ...] = ()):
        self.net = net
        self.device = torch.device(device)
        self.stages = tuple(int(s) for s in stages)

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device, non_blocking=True)
        if x.shape[1] == 1:  # one grey channel: the network takes it three times
            x = x.expand(-1, 3, -1, -1)
        with torch.inference_mode():
            logits, taps = forward_with_taps(self.net, x.contiguous(memory_format=torch.channels_last), self.stages)
        return logits.double().cpu().numpy(), None if taps is None else taps.double().cpu().numpy()


def open_runtime(
    folder: str | Path, card: dict[str, Any], net: torch.nn.Module, device: torch.device, stages: tuple[int, ...], threads: int
) -> Runtime:
    """ONNX Runtime on the CPU when the card names a graph (sha256 checked, made from the card's
    weights, tapping the gate's ``stages``, and equal to ``net`` on a test batch); else PyTorch."""
    torch_runtime = TorchRuntime(net, device, stages)
    info = card.get("onnx")
    if device.type != "cpu" or not info:
        return torch_runtime
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("onnxruntime is not installed: predictions run through PyTorch")
        return torch_runtime
    path = checked_companion(folder, info, ONNX_NAME, "ONNX file")
    if info.get("weights_sha256") != card.get("weights_sha256"):
        raise WeightsError(f"ONNX file {str(path)!r} was made from other weights than the card's; run python -m train.export again.")
    if tuple(info.get("stages", ())) != tuple(stages):
        raise WeightsError(
            f"ONNX file {str(path)!r} taps blocks {tuple(info.get('stages', ()))} but the out-of-distribution gate "
            f"needs {tuple(stages)}; run python -m train.export again."
        )
    try:
        runtime = OnnxRuntime(open_session(path, threads))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise WeightsError(f"ONNX file {str(path)!r} could not be loaded: {exc}") from exc
    size = int(card["image_size"])
    grey = np.random.default_rng(0).uniform(-1, 1, (2, runtime.channels, size, size)).astype(np.float32)
    (want, want_taps), (got, got_taps) = torch_runtime.run(grey), runtime.run(grey)
    if not (np.allclose(got, want, rtol=1e-4, atol=1e-3) and (want_taps is None or np.allclose(got_taps, want_taps, rtol=1e-4, atol=1e-3))):
        logger.warning("the ONNX network's outputs differ from the weights'; predictions run through PyTorch")
        return torch_runtime
    return runtime
