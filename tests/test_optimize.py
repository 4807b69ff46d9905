"""core.optimize: the prediction network is rewritten for speed, never its results."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from core import CLASS_NAMES, read_scan
from core.model import build_network
from core.optimize import optimize_for_inference


def _net_with_real_statistics(seed: int = 0) -> torch.nn.Module:
    """A random efficientnet_lite0 whose batch norms are far from the identity (as after training)."""
    torch.manual_seed(seed)
    net = build_network("efficientnet_lite0")
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n) * 0.1)
            module.running_var.copy_(torch.rand(n) * 0.5 + 0.75)
            module.weight.data.copy_(torch.randn(n) * 0.1 + 1)
            module.bias.data.copy_(torch.randn(n) * 0.1)
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _batch_norms(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_batch_norms_folded_same_outputs():
    net = _net_with_real_statistics()
    before = copy.deepcopy(net.state_dict())
    fast = optimize_for_inference(net)
    assert fast is not net
    assert _batch_norms(net) > 0 and _batch_norms(fast) == 0
    # the original is left untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(3, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = net(x), fast(x)
        assert torch.allclose(torch.softmax(expected.double(), -1), torch.softmax(got.double(), -1), atol=1e-5)
        # methods used by the OOD gate still work on the rewritten network
        assert torch.allclose(
            fast.forward_head(fast.forward_features(x), pre_logits=True),
            net.forward_head(net.forward_features(x), pre_logits=True),
            atol=1e-4, rtol=1e-4,
        )


def test_needs_eval_mode():
    net = build_network("efficientnet_lite0").train()
    with pytest.raises(ValueError, match="eval mode"):
        optimize_for_inference(net)


def test_unknown_network_left_as_is():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert optimize_for_inference(net) is net


def test_wrong_rewrite_is_dropped(monkeypatch, caplog):
    import core.optimize as optimize

    def broken(conv, bn):
        fused = copy.deepcopy(conv)
        fused.weight = torch.nn.Parameter(conv.weight * 2, requires_grad=False)
        return fused

    monkeypatch.setattr(optimize, "_fold", broken)
    net = _net_with_real_statistics()
    with caplog.at_level(logging.WARNING, logger="core.optimize"):
        assert optimize_for_inference(net) is net
    assert "left as it is" in caplog.text


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_classifier_probabilities_unchanged_on_real_scans(which, request, data_root):
    """The loaded model (optimised network) equals the plain network within 1e-4 on real scans."""
    model = request.getfixturevalue("tiny_model" if which == "tiny" else "shipped_model")
    assert _batch_norms(model.network) == 0, "the prediction network is optimised"
    assert _batch_norms(model._cam_net) > 0, "the Grad-CAM copy keeps the real modules"
    paths = [sorted((data_root / "Testing" / name).glob("*.jpg"))[i] for name in CLASS_NAMES for i in (0, 7)]
    images = [read_scan(p) for p in paths]
    batch = model.preprocess(images)
    with torch.inference_mode():
        plain = torch.softmax(model._cam_net(batch).double(), -1)
        fast = torch.softmax(model.network(batch).double(), -1)
    assert (plain - fast).abs().max().item() < 1e-4
