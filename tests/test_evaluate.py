"""train.evaluate: the leak-free matcher and the command line on an external folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthetic import make_external_folder

@pytest.fixture(scope="module")
def external_folder(tmp_path_factory) -> Path:
    return make_external_folder(tmp_path_factory.mktemp("external"))


def test_leak_free_mask_matches_the_audit_names_inside_the_kaggle_folder(tmp_path):
    from train.evaluate import leak_free_mask

    root = tmp_path / "kaggle"
    paths = [root / "Testing" / "glioma" / "a.jpg", root / "Testing" / "glioma" / "b.jpg",
             root / "Training" / "glioma" / "a.jpg", tmp_path / "elsewhere" / "Testing" / "glioma" / "a.jpg"]
    names = {"Testing/glioma/a.jpg", "Training/glioma/a.jpg"}
    assert leak_free_mask(paths, root, names).tolist() == [True, False, True, False]
    assert leak_free_mask(paths, root, None).tolist() == [False] * 4


def test_cli_evaluates_an_external_folder(external_folder, tiny_weights, tmp_path, capsys):
    from train.evaluate import get_args_parser, main

    out = tmp_path / "external.json"
    main(get_args_parser().parse_args(["--external", str(external_folder), "--weights", str(tiny_weights),
                                       "--data-dir", str(tmp_path / "none"), "--output", str(out)]))
    stored = json.loads(out.read_text())
    assert stored["n_images"] == 7 and "hospital_a" in stored["sources"]
    assert "reference" not in stored  # no Testing folder given

