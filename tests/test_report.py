"""The README's results section is generated from assets/ and must match it exactly."""

from __future__ import annotations

import json

import pytest

from core.constants import ASSETS_DIR, EVALUATION_NAME, MODEL_CARD_NAME, PROJECT_ROOT
from core.weights import sha256_file
from train.data import class_counts, find_samples
from train.report import END, START, render, update_readme

needs_assets = pytest.mark.skipif(
    not (ASSETS_DIR / EVALUATION_NAME).is_file(), reason="no stored evaluation in assets/ yet"
)


@needs_assets
def test_readme_results_match_assets():
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0].strip("\n")
    assert section == render(ASSETS_DIR), "README results are stale: run python -m train.report --update-readme"


@needs_assets
def test_committed_artifacts_are_consistent(data_root):
    """Model card sha256 matches the weights; stored metrics match the Testing folder layout."""
    card = json.loads((ASSETS_DIR / MODEL_CARD_NAME).read_text())
    assert card["weights_sha256"] == sha256_file(ASSETS_DIR / card["weights_file"])
    evaluation = json.loads((ASSETS_DIR / EVALUATION_NAME).read_text())
    counts = class_counts(find_samples(data_root / "Testing"))
    assert evaluation["class_names"] == card["class_names"]
    assert evaluation["counts"] == counts
    testing = evaluation["evaluations"]["testing"]
    assert testing["support"] == counts
    assert sum(map(sum, testing["confusion_matrix"])) == sum(counts.values()) == testing["n_images"]
    assert card["data"]["test_counts"] == counts


def test_update_readme_replaces_only_the_section(tmp_path, monkeypatch):
    from app_assets import make_assets

    assets = make_assets(tmp_path / "assets")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    assert update_readme(readme, assets)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old table" not in text and render(assets) in text
    assert not update_readme(readme, assets)  # idempotent


def test_training_line_gives_the_whole_run_when_stored(tmp_path):
    from app_assets import make_assets

    assets = make_assets(tmp_path / "assets")
    card_path = assets / MODEL_CARD_NAME
    card = json.loads(card_path.read_text())
    loop = card["training"]["wall_time_s"] / 60
    assert f"{loop:.1f} min for the training loop (" in render(assets)
    card["training"]["total_wall_time_s"] = card["training"]["wall_time_s"] + 600.0
    card_path.write_text(json.dumps(card))
    assert f"{loop:.1f} min for the training loop, {loop + 10:.1f} min in all with calibration" in render(assets)


def test_architecture_table_comes_from_the_stored_comparison(tmp_path):
    from app_assets import make_assets

    from core.constants import COMPARISON_NAME

    assets = make_assets(tmp_path / "assets")
    comparison = json.loads((assets / COMPARISON_NAME).read_text())
    text = render(assets)
    assert "python -m train.compare" in text
    for entry in comparison["architectures"]:
        assert f"{100 * entry['testing']['accuracy']:.2f} %" in text
    assert "(reduced: " in text and "EfficientNet-Lite0 (shipped)" in text
    (assets / COMPARISON_NAME).unlink()
    assert "python -m train.compare" not in render(assets)


def test_training_line_names_the_head_crop_and_the_t2_like_images(tmp_path):
    from app_assets import make_assets

    assets = make_assets(tmp_path / "assets")
    card_path = assets / MODEL_CARD_NAME
    card = json.loads(card_path.read_text())
    assert "cropped to its head" not in render(assets) and "T2-like" not in render(assets)
    card["crop_head"] = True
    card["training"]["config"]["synth_t2"] = 0.5
    card_path.write_text(json.dumps(card))
    assert "each scan cropped to its head, T2-like images on 50% of the extra sources' FLAIR draws" in render(assets)


@needs_assets
def test_stored_reports_belong_to_the_shipped_weights():
    """Every stored report that names weights names the shipped ones: a new model needs its
    external report and its pointing game run again (python -m train.pointing --merge-into)."""
    card = json.loads((ASSETS_DIR / MODEL_CARD_NAME).read_text())
    evaluation = json.loads((ASSETS_DIR / EVALUATION_NAME).read_text())
    assert evaluation["pointing_game"]["weights_sha256"] == card["weights_sha256"]
    external = ASSETS_DIR / "external.json"
    if external.is_file():
        assert json.loads(external.read_text())["weights_sha256"] == card["weights_sha256"]


def test_the_series_report_says_where_the_sequence_came_from(tiny_model, monkeypatch):
    """The PDF's sequence line: the DICOM tags, the image with the recogniser's confidence, or
    the user's choice with what was read before it."""
    from dataclasses import replace

    from app import report
    from core import read_series
    from core.sequence import SequenceInfo, user_sequence
    from series_factory import phantom, series_bytes

    lines: list[tuple[str, str]] = []
    original = report._Report.line_of

    def recording(self, label, value):
        lines.append((label, value))
        return original(self, label, value)

    monkeypatch.setattr(report._Report, "line_of", recording)
    [series] = read_series([(f"IM{k}.dcm", data) for k, data in enumerate(series_bytes(phantom(4, 64, 64)))])
    as_read = tiny_model.predict_series(series)
    chosen = tiny_model.predict_series(series, sequence=user_sequence("FLAIR"))
    from_image = replace(as_read, sequence=SequenceInfo("T2", "image", confidence=0.876))
    for prediction, read in ((as_read, None), (from_image, None), (chosen, as_read.sequence)):
        assert report.series_report_pdf(prediction, {}, {}, [], read_sequence=read).startswith(b"%PDF")
    assert [value for label, value in lines if label == "Sequence"] == [
        "T1C (DICOM tags)", "T2 (from the image, 88 %)", "FLAIR (your choice; read as T1C, DICOM tags)",
    ]
