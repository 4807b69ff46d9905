"""The prediction network served by ONNX Runtime on the CPU.

``python -m train.export`` (and ``train.finalize``) writes ``model.onnx`` beside the weights: the
same network with two outputs, the logits and the statistics the out-of-distribution gate taps
(:func:`core.ood.forward_with_taps`), and records its sha256 in the model card (``card["onnx"]``).
:func:`load_runtime` opens it with ONNX Runtime; :class:`core.model.Classifier` then runs its
predictions through it on the CPU and keeps PyTorch for Grad-CAM (which needs gradients) and
for CUDA. When the card names no ONNX file, or ``onnxruntime`` is not installed, predictions run
through PyTorch as before.

Why: on the 2-core development CPU ONNX Runtime runs the shipped network about twice as fast as
PyTorch with the batch norms folded (figures in ``benchmarks/inference.py``), with the same
probabilities within 1e-6. A batch is split across ``threads`` concurrent single-threaded runs
of one session (a session is safe to run from several threads): measured faster at batch 32
than one run with two intra-op threads. :meth:`OnnxNetwork.map` spreads the preprocessing the same
way.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .weights import WeightsError, checked_companion

__all__ = ["ONNX_NAME", "OnnxNetwork", "load_runtime"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ONNX_NAME = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "taps")


class OnnxNetwork:
    """An ONNX Runtime session computing ``(logits, taps)`` for a float32 NCHW batch.

    ``taps`` is None when the exported network has no gate stages. Calls are thread-safe.
    """

    def __init__(self, session: Any, stages: tuple[int, ...], threads: int = 1):
        self.session = session
        self.stages = tuple(stages)
        self.threads = max(1, int(threads))
        self._outputs = [o.name for o in session.get_outputs()]
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx") if self.threads > 1 else None

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self._outputs, {INPUT_NAME: array})

    def _chunks(self, n: int) -> list[slice]:
        k = min(self.threads, n) if self._pool is not None else 1
        bounds = np.linspace(0, n, max(k, 1) + 1).round().astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def map(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` over consecutive chunks of ``items``, one chunk per thread, in order (for the
        work before a run, such as preprocessing, that Pillow and NumPy do without the GIL)."""
        chunks = [items[part] for part in self._chunks(len(items))]
        # The calling thread takes the last chunk itself rather than wait idle.
        futures = [self._pool.submit(fn, chunk) for chunk in chunks[:-1]] if self._pool is not None else []
        last = fn(chunks[-1])
        return [future.result() for future in futures] + [last]

    def run(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, classes) and taps (N, features; None without gate stages) of a float32
        NCHW array, split across the threads."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        parts = self.map(self._run, array)
        logits = np.concatenate([p[0] for p in parts])
        taps = np.concatenate([p[1] for p in parts]) if len(self._outputs) > 1 else None
        return logits, taps

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, taps = self.run(batch.detach().cpu().float().numpy())
        return torch.from_numpy(logits), torch.from_numpy(taps) if taps is not None else None


def load_runtime(folder: str | Path, card: dict[str, Any], threads: int | None = None) -> OnnxNetwork | None:
    """The ONNX network named in the model card (``card["onnx"]``), refused unless its sha256
    matches; None when the card names none or ``onnxruntime`` is not installed.

    ``threads``: concurrent runs a batch is split into (default: torch's thread count).
    """
    info = card.get("onnx")
    if not info:
        return None
    path = checked_companion(folder, info, ONNX_NAME, "ONNX file")
    if info.get("weights_sha256") != card.get("weights_sha256"):
        raise WeightsError(
            f"ONNX file {str(path)!r} was exported from other weights than the card's "
            f"({str(info.get('weights_sha256'))[:12]}... vs {str(card.get('weights_sha256'))[:12]}...); "
            "run python -m train.export again."
        )
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed: predictions run through PyTorch")
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads that spin after a run would take the CPU from the Grad-CAM pass that follows.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise WeightsError(f"ONNX file {str(path)!r} could not be loaded: {exc}") from exc
    stages = tuple(int(s) for s in info.get("stages", ()))
    return OnnxNetwork(session, stages, threads if threads is not None else torch.get_num_threads())
