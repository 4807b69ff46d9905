"""Inference-only rewrites of the prediction network (the Grad-CAM copy in ``core.cam`` is
made from the rewritten network; its target layer keeps its place).

:func:`optimize_for_inference` folds each batch norm into the convolution before it: the
network then runs one convolution where it ran a convolution and a normalisation. The rewrite
is checked on a random input against the original network, and dropped (with a warning) when
the outputs differ, so a model that it does not understand is served as it is. Its speed and
the options measured and not kept: ``docs/performance.md``.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

__all__ = ["fuse_batchnorm", "optimize_for_inference"]

logger = logging.getLogger(__name__)

#: (convolution, batch norm) attribute pairs, by the class name of the module that holds them.
#: timm's EfficientNet family (EfficientNet, EfficientNet-Lite, MobileNetV3 and their blocks).
_FUSIBLE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "MobileNetV3": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "ConvBnAct": (("conv", "bn1"),),
    "ConvNormAct": (("conv", "bn"),),
}

#: Largest absolute difference in logits accepted between the rewritten and the original
#: network on the self-check (float32 rounding of the folded weights stays far below it).
_CHECK_ATOL = 1e-3


def optimize_for_inference(net: nn.Module, image_size: int | None = None) -> nn.Module:
    """An equivalent, faster network for inference (eval mode, no gradients).

    Returns ``net`` itself when nothing could be rewritten, or when the rewritten network's
    outputs differ from the original's on a random input (logged as a warning).
    """
    if net.training:
        raise ValueError("optimize_for_inference needs a network in eval mode; call net.eval() first.")
    fused, count = _fused_copy(net)
    if count == 0:
        logger.info("no batch norm to fold in %s; network left as it is", type(net).__name__)
        return net
    if not _same_outputs(net, fused, image_size):
        logger.warning("folding batch norms changed %s's outputs; network left as it is", type(net).__name__)
        return net
    logger.info("folded %d batch norms into their convolutions", count)
    return fused


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """Fold batch norms into the preceding convolutions, in place (eval mode only); returns ``net``."""
    _fuse_in_place(net)
    return net


def _fused_copy(net: nn.Module) -> tuple[nn.Module, int]:
    fused = copy.deepcopy(net)
    count = _fuse_in_place(fused)
    return fused, count


def _fuse_in_place(net: nn.Module) -> int:
    count = 0
    for module in list(net.modules()):
        for conv_name, bn_name in _FUSIBLE_PAIRS.get(type(module).__name__, ()):
            conv = getattr(module, conv_name, None)
            bn = getattr(module, bn_name, None)
            if not _fusible(conv, bn):
                continue
            setattr(module, conv_name, _fold(conv, bn))
            setattr(module, bn_name, _after_norm(bn))
            count += 1
    return count


def _fusible(conv: object, bn: object) -> bool:
    return (
        type(conv) is nn.Conv2d  # not timm's padding-same or mixed convolutions
        and isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` (running statistics), in float64 then rounded."""
    fused = copy.deepcopy(conv)
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    dtype = conv.weight.dtype
    fused.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return fused


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What follows the normalisation: timm's BatchNormAct2d also holds dropout and activation."""
    tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    tail = [m for m in tail if not isinstance(m, nn.Identity)]
    if not tail:
        return nn.Identity()
    return tail[0] if len(tail) == 1 else nn.Sequential(*tail)


def _same_outputs(original: nn.Module, rewritten: nn.Module, image_size: int | None) -> bool:
    param = next(original.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    size = image_size or 64
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=generator).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            a, b = original(x).float(), rewritten(x).float()
    except Exception:  # the rewrite broke the forward pass
        logger.exception("the rewritten network failed on a test input")
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=_CHECK_ATOL))
