"""benchmarks.experiments.served_snapshot: two snapshots compared, numbers and answers apart."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.experiments.served_snapshot import compare


def _write(path, probs, flags):
    answers = [json.dumps(["a.jpg", "notumor", flags, True, False])]
    np.savez(path, probs=np.array([probs]), single=np.array([probs]), scores=np.array([0.5]),
             cams=np.zeros((1, 4, 4)), answers=np.array(answers))


def test_wording_and_kinds_are_told_apart(tmp_path):
    _write(tmp_path / "a.npz", [0.1, 0.9], ["low confidence (65.0%, below 65%)"])
    _write(tmp_path / "b.npz", [0.1, 0.9], ["low confidence (64.9%, below 65%)"])
    _write(tmp_path / "c.npz", [0.2, 0.8], ["outside the training data (score 1.2 > 1)"])
    same_kind = compare(tmp_path / "a.npz", tmp_path / "b.npz")
    assert same_kind["probs"] == 0.0 and same_kind["same_labels_flag_kinds_and_states"]
    assert not same_kind["same_labels_flags_and_states"] and same_kind["flag_wording_differs"] == 1
    other = compare(tmp_path / "a.npz", tmp_path / "c.npz")
    assert abs(other["probs"] - 0.1) < 1e-12
    assert not other["same_labels_flag_kinds_and_states"]
