"""core.optimize: the prediction network is rewritten for speed, never its results."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from core import CLASS_NAMES, read_scan
from core.model import build_network
from core.optimize import optimize_for_inference
from core.cam import paste_heatmap
from core.preprocess import head_box, input_array
from core.runtime import TorchRuntime


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


@pytest.fixture(params=["tiny", "shipped"])
def model_and_plain(request):
    """A loaded model and the plain network of its weights."""
    from core.constants import default_weights
    from core.weights import load_weights

    model = request.getfixturevalue("tiny_model" if request.param == "tiny" else "shipped_model")
    weights = request.getfixturevalue("tiny_weights") if request.param == "tiny" else default_weights()
    state, card = load_weights(weights)
    net = build_network(card["arch"], num_classes=len(CLASS_NAMES))
    net.load_state_dict(state)
    return model, net.eval()


def _real_scans(data_root):
    paths = [sorted((data_root / "Testing" / name).glob("*.jpg"))[i] for name in CLASS_NAMES for i in (0, 7)]
    return [read_scan(p) for p in paths]


def _input(model, images) -> torch.Tensor:
    """The three-channel network input of ``images``, as the model's card prepares it."""
    return torch.from_numpy(input_array(images, model.image_size, model.card["mean"], model.card["std"], model.crop_head))


def test_classifier_logits_unchanged_on_real_scans(model_and_plain, data_root):
    """What serves predictions (the folded network in PyTorch, or the ONNX graph) equals the
    plain network within 1e-4 in probability on real scans."""
    model, plain_net = model_and_plain
    assert _batch_norms(model.network) == 0, "the prediction network is optimised"
    batch = _input(model, _real_scans(data_root))
    with torch.inference_mode():
        plain = torch.softmax(plain_net(batch).double(), -1)
    served = torch.softmax(torch.from_numpy(model.runtime.run(batch.numpy())[0]), -1)
    folded = torch.softmax(torch.from_numpy(TorchRuntime(model.network).run(batch.numpy())[0]), -1)
    assert (plain - served).abs().max().item() < 1e-4 and (plain - folded).abs().max().item() < 1e-4


@pytest.mark.slow
def test_gradcam_on_folded_copy_equals_plain_network(model_and_plain, data_root):
    """Grad-CAM on the folded copy gives the heatmap of the plain network (within 1e-3)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, plain_net = model_and_plain
    assert _batch_norms(model.cam.net) == 0, "the Grad-CAM copy is folded too"
    for image in _real_scans(data_root)[::3]:
        for target in (None, "meningioma"):
            batch = _input(model, [image])
            if target is None:
                with torch.inference_mode():
                    index = int(plain_net(batch).argmax())
            else:
                index = CLASS_NAMES.index(target)
            with GradCAM(model=plain_net, target_layers=[plain_net.bn2]) as cam:
                expected = cam(input_tensor=batch, targets=[ClassifierOutputTarget(index)])[0]
            # Weights trained with the head crop: the heatmap covers the head's box (and fades
            # out just beyond it, core.cam.paste_heatmap).
            left, top, right, bottom = box = head_box(image) if model.crop_head else (0, 0, *image.size)
            inside = np.asarray(Image.fromarray(expected, mode="F").resize((right - left, bottom - top), Image.Resampling.BILINEAR))
            expected = paste_heatmap(np.clip(inside, 0, 1), box, image.size, model.cam.cells(model.image_size))
            got = model.explain(image, target=target)
            assert got.shape == expected.shape
            assert abs(got - np.clip(expected, 0, 1)).max() < 1e-3
