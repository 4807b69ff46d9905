"""Balanced sampling (train.sampling): class shares, the square-root rule, named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import CLASS_NAMES
from train.data import Sample
from train.sampling import describe, sample_weights


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(Path(f"{label}_{i}.png"), label) for label, n in counts.items() for i in range(n)]


def test_none_draws_every_scan_alike():
    samples = _samples({0: 30, 1: 10, 2: 5, 3: 55})
    weights = sample_weights(samples, "none")
    assert np.allclose(weights, 1 / len(samples))


def test_class_balance_gives_each_class_an_equal_share():
    samples = _samples({0: 30, 1: 10, 2: 5, 3: 55})
    weights = sample_weights(samples, "class")
    labels = np.array([s.label for s in samples])
    shares = [weights[labels == c].sum() for c in range(4)]
    assert np.allclose(shares, 0.25)
    # within a class, uniform
    assert np.allclose(weights[labels == 3], weights[labels == 3][0])


def test_appearance_balance_follows_the_square_root_of_group_sizes():
    # class 0: group a holds 100 scans, group b 4; class 1: one group
    samples = _samples({0: 104, 1: 20})
    groups = ["a"] * 100 + ["b"] * 4 + ["c"] * 20
    weights = sample_weights(samples, "appearance", groups)
    share_a, share_b = weights[:100].sum(), weights[100:104].sum()
    assert share_a + share_b == pytest.approx(0.5)
    assert share_a / share_b == pytest.approx(np.sqrt(100 / 4))
    # a scan of the rare group is drawn more often than one of the common group
    assert weights[100] > weights[0]
    rows = describe(samples, weights, groups)
    assert [(r["class"], r["group"], r["scans"]) for r in rows] == [
        (CLASS_NAMES[0], "a", 100), (CLASS_NAMES[0], "b", 4), (CLASS_NAMES[1], "c", 20)
    ]
    assert sum(r["draw_share"] for r in rows) == pytest.approx(1.0)


def test_bad_modes_and_groups_are_named():
    samples = _samples({0: 3})
    with pytest.raises(ValueError, match="'sequence' is not one of"):
        sample_weights(samples, "sequence")
    with pytest.raises(ValueError, match="one group per scan"):
        sample_weights(samples, "appearance", ["a"])
