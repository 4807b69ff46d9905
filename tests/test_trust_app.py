"""The scan review page withholds the prediction for a real non-MRI upload (no monkeypatching):
with the fixture model (image checks) and, when assets/ holds one, the shipped model and gate;
and the page's CSV export says why."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import review as app_review
from app_assets import make_assets
from train.non_mri import non_mri_images, photo_files
from core import CLASS_LABELS
from core.constants import ASSETS_DIR
from core.ood import OOD_NAME
from app.review import NOT_BRAIN_MRI_TEXT, analyse_scan, results_csv
from core.results import NOT_BRAIN_MRI_FLAG
from core.rules import NOT_BRAIN_MRI

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
TIMEOUT = 120

ASSET_KINDS = ["fixture"] + (["shipped"] if (ASSETS_DIR / OOD_NAME).is_file() else [])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=ASSET_KINDS)
def assets(request, tmp_path_factory) -> Path:
    return make_assets(tmp_path_factory.mktemp("trust_assets")) if request.param == "fixture" else ASSETS_DIR


def _uploads(assets: Path) -> list[tuple[str, bytes]]:
    photo = next(p for p in photo_files() if p.name == "grace_hopper.jpg")
    files = [("photo.jpg", photo.read_bytes())]
    if assets == ASSETS_DIR:  # the feature gate (not the image checks) must catch a grey document
        document = next(image for kind, image in non_mri_images() if kind == "document")
        files.append(("document.png", _png(document)))
    return files


def test_page_withholds_the_prediction_for_non_mri(assets, monkeypatch):
    monkeypatch.setenv("BTMRI_ASSETS", str(assets))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    files = _uploads(assets)
    at.file_uploader(key="uploads").set_value([(n, d, "application/octet-stream") for n, d in files])
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["Predicted class"]) == [NOT_BRAIN_MRI_TEXT] * len(files)
    assert all(flags.startswith("not recognised as a brain MRI") for flags in table["Flags / message"])
    for index, (_, data) in enumerate(files):
        at.selectbox(key="review_index").set_value(index)
        at.run()
        assert any("not recognised as a brain MRI" in w.value for w in at.warning)
        assert not [m for m in at.metric if m.label == "Predicted class"] and not at.get("plotly_chart")
        at.toggle(key=f"reveal_{app_review.digest_of(data)}").set_value(True)
        at.run()
        assert not at.exception
        assert [m.value for m in at.metric if m.label == "Predicted class"][0] in set(CLASS_LABELS.values())
        assert any("Unreliable" in e.value for e in at.error)
        assert any("Review advised: not recognised as a brain MRI" in w.value for w in at.warning)


def test_csv_export_carries_the_gate_and_flags(tiny_model):
    """A blank upload: the export withholds the label and gives the reason, as a sentence and
    as its kind."""
    analysis = analyse_scan(tiny_model, _png(Image.new("L", (128, 128), 0)))
    rows = list(csv.DictReader(io.StringIO(results_csv([("blank.png", analysis)]).decode())))
    assert rows[0]["status"] == "not_brain_mri" and rows[0]["is_brain_mri"] == "false"
    assert rows[0]["label"] == "" and rows[0]["flags"].startswith(NOT_BRAIN_MRI_FLAG) and "blank" in rows[0]["flags"]
    assert rows[0]["flag_kinds"] == NOT_BRAIN_MRI
