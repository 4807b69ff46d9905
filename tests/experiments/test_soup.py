"""benchmarks.experiments.soup: averaging networks' weights and recomputing their batch norms."""

from __future__ import annotations

import pytest
import torch

from benchmarks.experiments.soup import average_states, greedy_order, recompute_batch_norm
from core.model import build_network


def test_soup_averages_floating_tensors_and_keeps_the_first_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}
    soup = average_states([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 4.0])) and soup["w"].dtype == torch.float32
    assert int(soup["bn.num_batches_tracked"]) == 5
    with pytest.raises(ValueError, match="other tensors"):
        average_states([a, {"v": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(1)}])
    with pytest.raises(ValueError, match="'w' is \\(3,\\)"):
        average_states([a, {"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(1)}])
    with pytest.raises(ValueError, match="at least one"):
        average_states([])


def test_soup_of_one_network_is_that_network():
    torch.manual_seed(0)
    net = build_network("efficientnet_lite0").eval()
    copy = build_network("efficientnet_lite0")
    copy.load_state_dict(average_states([net.state_dict(), net.state_dict()]))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(copy.eval()(x), net(x), atol=1e-6)


def test_soup_greedy_order_goes_from_the_best_validation_accuracy_down():
    assert greedy_order([0.90, 0.93, 0.90, 0.95]) == [3, 1, 0, 2]


def test_soup_recomputes_batch_norm_statistics_on_the_given_batches():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net[1].running_mean.fill_(-7.0)
    batches = [(torch.full((4, 1, 3, 3), 2.0), torch.zeros(4)), (torch.full((4, 1, 3, 3), 4.0), torch.zeros(4)),
               (torch.full((4, 1, 3, 3), 100.0), torch.zeros(4))]
    recompute_batch_norm(net, iter(batches), batches=2)  # the third batch must not count
    assert torch.allclose(net[1].running_mean, torch.tensor([3.0, 3.0]))
    assert not net.training
