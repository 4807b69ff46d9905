"""Privacy: a DICOM with patient tags leaves no trace on disk, in logs or in outputs.

``read_scan`` + ``predict`` + ``explain`` on an identifiable DICOM must write nothing under
the temporary folder, log none of the tag values (at DEBUG, from any logger), warn none of
them, and return an image whose ``info`` holds none of them. A whole series carrying the tags,
uploaded to the app, leaves none of them on the page, in the series CSV, in the PDF report or in
the logs, and files named after the patient are named in neither export nor log. (The scan
CSV export is tested with the app.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import ScanError, read_scan
from core.sequence import SequenceInfo
from dicom_factory import dicom_bytes, mr_dataset
from test_app_series import downloads, fetched  # noqa: F401 (downloads: the buttons' recorder, a fixture)

PATIENT_TAGS = {
    "PatientName": "Quillfeather^Marguerite",
    "PatientID": "PID-7731-XQZ",
    "PatientBirthDate": "19620415",
    "PatientSex": "F",
    "PatientAddress": "12 Larkspur Lane, Wexbury",
    "InstitutionName": "St Oswin Infirmary",
    "ReferringPhysicianName": "Thistlewood^Ambrose",
    "AccessionNumber": "ACC99017342",
    "StudyDescription": "MRI HEAD Quillfeather follow-up",
    "OperatorsName": "Brackenridge^Ottoline",
    "StudyID": "STUDY-55821",
}
#: Strings that must appear nowhere (each tag value, and the parts of the names).
SECRETS = sorted(
    {value for key, value in PATIENT_TAGS.items() if len(value) > 2}
    | {part for value in PATIENT_TAGS.values() for part in value.split("^") if len(part) > 3}
)
LOGGERS = ("", "core", "core.scan", "core.dicom", "core.model", "pydicom", "PIL", "torch")


def make_identifiable_dicom(pixels: np.ndarray | None, frames: int | None = None, **extra) -> bytes:
    ds = mr_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deliberately malformed values below
        for keyword, value in {**PATIENT_TAGS, **extra}.items():
            setattr(ds, keyword, value)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype("<u2").tobytes()
    data = dicom_bytes(ds)
    assert PATIENT_TAGS["PatientName"].encode() in data  # the file really is identifiable
    return data


@pytest.fixture(scope="module")
def pixels(scan_paths) -> np.ndarray:
    with Image.open(scan_paths["meningioma"]) as image:
        return np.asarray(image.convert("L"), dtype=np.uint16) * 16


def _snapshot(*folders: Path) -> dict[str, tuple[int, float]]:
    listing = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = Path(root, name)
                try:
                    stat = path.stat()
                except OSError:
                    continue
                listing[str(path)] = (stat.st_size, stat.st_mtime)
    return listing


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret.lower() in text.lower()]


@contextlib.contextmanager
def watch(tmp_path: Path, monkeypatch, caplog):
    """Fails on exit if anything was written under TMPDIR or ``tmp_path``, or if a patient tag
    value shows in a log record (any logger, DEBUG up), a warning, or a new file in /tmp."""
    system_tmp = Path(tempfile.gettempdir())
    fresh_tmp = tmp_path / "tmpdir"
    fresh_tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(fresh_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert Path(tempfile.gettempdir()) == fresh_tmp
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.clear()

    before = _snapshot(tmp_path)
    system_before = {path.name for path in system_tmp.iterdir()}
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield

    assert list(fresh_tmp.iterdir()) == [], "files written under TMPDIR"
    assert _snapshot(tmp_path) == before, "files written under tmp_path"
    for path in system_tmp.iterdir():  # other processes share /tmp: only our secrets count
        if path.name in system_before or not path.is_file():
            continue
        if path.stat().st_mtime >= started and path.stat().st_size < 50_000_000:
            assert not _leaks(path.read_bytes().decode("latin-1")), f"patient data in {path}"
    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert not _leaks(logged), f"patient data logged: {_leaks(logged)}"
    warned = "\n".join(str(warning.message) for warning in caught)
    assert not _leaks(warned), f"patient data in warnings: {_leaks(warned)}"


@pytest.fixture
def watched(tmp_path, monkeypatch, caplog, tiny_model, scan_paths):
    # Warm-up on an ordinary image first: one-off import caches are not uploads.
    warm = read_scan(scan_paths["glioma"])
    tiny_model.predict(warm)
    tiny_model.explain(warm)
    with watch(tmp_path, monkeypatch, caplog):
        yield


@pytest.mark.parametrize("leak", ["log", "warning", "tempfile"])
def test_the_watch_catches_leaks(tmp_path, monkeypatch, caplog, leak):
    """The checks above can fail: each kind of leak is caught."""
    with pytest.raises(AssertionError):
        with watch(tmp_path, monkeypatch, caplog):
            if leak == "log":
                logging.getLogger("core.dicom").debug("read %s", PATIENT_TAGS["PatientID"])
            elif leak == "warning":
                warnings.warn(f"odd value {PATIENT_TAGS['PatientBirthDate']!r}")
            else:
                with tempfile.NamedTemporaryFile(delete=False) as handle:
                    handle.write(b"upload")


def test_dicom_with_patient_tags_leaves_no_trace(watched, pixels, tiny_model):
    image = read_scan(make_identifiable_dicom(pixels))
    prediction = tiny_model.predict(image)
    heatmap = tiny_model.explain(image)
    assert heatmap.shape == pixels.shape
    # Only how the grey levels were made, and the sequence the tags give: no other tag travels.
    assert set(image.info) == {"display_transform", "sequence"} and image.info["display_transform"] == "stored window"
    assert isinstance(image.info["sequence"], SequenceInfo)
    assert not _leaks(repr(image.info)) and not _leaks(repr(prediction))
    assert not _leaks(" ".join(str(getattr(image, name, "")) for name in ("filename", "format")))


def test_dicom_read_from_an_identifying_path(watched, pixels, tiny_model, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    path = folder / "Quillfeather_Marguerite_PID-7731-XQZ.dcm"
    path.write_bytes(make_identifiable_dicom(pixels))
    image = read_scan(path)
    tiny_model.explain(image, target="glioma")
    assert not _leaks(repr(image.info))
    path.unlink()
    folder.rmdir()


def test_malformed_tag_values_are_not_echoed(watched, pixels, tiny_model):
    """Invalid values (which pydicom quotes in its warnings when they are read) stay quiet."""
    data = make_identifiable_dicom(
        pixels, PatientBirthDate="1962-04-15 Quillfeather", PatientSex="Quillfeather"
    )
    image = read_scan(data)
    tiny_model.predict(image)
    assert image.info["display_transform"] == "stored window"


@pytest.mark.parametrize("case", ["no pixels", "several frames", "truncated"])
def test_refusals_do_not_quote_patient_tags(watched, pixels, case):
    if case == "no pixels":
        data = make_identifiable_dicom(None)
    elif case == "several frames":
        data = make_identifiable_dicom(np.stack([pixels, pixels]), frames=2)
    else:
        data = make_identifiable_dicom(pixels)[:-1000]
    with pytest.raises(ScanError) as info:
        read_scan(data)
    assert not _leaks(str(info.value))


# ---------------------------------------------------------------------- a whole series in the app
def _series_with_tags(slices: int = 8) -> list[bytes]:
    """A generated MR series whose every file carries the patient tags above (PatientName,
    PatientID, PatientBirthDate, AccessionNumber among them)."""
    from series_factory import phantom, series_bytes

    blobs = series_bytes(phantom(slices, 96, 96), **PATIENT_TAGS)
    assert all(PATIENT_TAGS["PatientName"].encode() in blob and PATIENT_TAGS["AccessionNumber"].encode() in blob
               for blob in blobs)
    return blobs


def _page_text(at) -> str:
    """Every element of the page as its serialised message: labels, values, captions, table
    cells, chart data."""
    parts: list[bytes] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            parts.append(proto.SerializeToString())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return b"\n".join(parts).decode("latin-1")


def pdf_text(data: bytes) -> str:
    """The PDF's bytes with every compressed stream (page contents, images) unpacked: the core
    fonts' text is there as written."""
    import re
    import zlib

    parts = [data]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.DOTALL):
        try:
            parts.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return b"\n".join(parts).decode("latin-1")


@pytest.fixture(scope="module")
def series_assets(tmp_path_factory) -> Path:
    from app_assets import make_assets

    return make_assets(tmp_path_factory.mktemp("privacy_assets"))


def _series_app(series_assets, monkeypatch, downloads, files: list[tuple[str, bytes]]):
    """The app with ``files`` uploaded, and the bytes its download buttons give (by key)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BTMRI_ASSETS", str(series_assets))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.file_uploader(key="uploads").set_value([(name, data, "application/dicom") for name, data in files])
    at.run()
    assert not at.exception
    return at, {key: fetched(downloads, key) for key in downloads}


def test_a_series_with_patient_tags_leaves_none_on_the_page_in_the_exports_or_the_logs(
    series_assets, monkeypatch, caplog, downloads
):
    for name in LOGGERS + ("app", "pages", "streamlit"):
        caplog.set_level(logging.DEBUG, logger=name)
    files = [(f"IM{k:04d}.dcm", blob) for k, blob in enumerate(_series_with_tags())]
    at, downloads = _series_app(series_assets, monkeypatch, downloads, files)
    page = _page_text(at)
    assert "t1_mprage_tra_Gd" in page  # the check reads the page: the series' own name is there
    assert not _leaks(page), f"patient data on the page: {_leaks(page)}"

    table = downloads["download_series_csv"].decode("utf-8")
    assert table.count("\n") == 1 + 1 + 8  # header, the series, its slices
    assert not _leaks(table), f"patient data in the CSV: {_leaks(table)}"
    pdf = downloads["download_series_pdf"]
    assert pdf.startswith(b"%PDF")
    text = pdf_text(pdf)
    assert "Research demonstration, not for diagnostic use" in text and "t1_mprage_tra_Gd" in text
    assert not _leaks(text), f"patient data in the PDF: {_leaks(text)}"

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert not _leaks(logged), f"patient data logged: {_leaks(logged)}"


def test_identifying_file_names_stay_out_of_the_exports_and_the_logs(series_assets, monkeypatch, caplog, downloads):
    """Files named after the patient: the page may list a file it could not use, but the CSV, the
    PDF and the logs name no file."""
    for name in LOGGERS + ("app", "pages", "streamlit"):
        caplog.set_level(logging.DEBUG, logger=name)
    files = [(f"Quillfeather_Marguerite_{k}.dcm", blob) for k, blob in enumerate(_series_with_tags(4))]
    files.append(("Quillfeather_notes.dcm", b"not a scan at all, just notes"))
    at, downloads = _series_app(series_assets, monkeypatch, downloads, files)
    assert "Quillfeather_notes.dcm" in _page_text(at)  # the file that could not be used is listed
    for label, text in (("CSV", downloads["download_series_csv"].decode("utf-8")),
                        ("PDF", pdf_text(downloads["download_series_pdf"])),
                        ("log", "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records))):
        assert "Quillfeather" not in text and "Marguerite" not in text, f"a file name in the {label}"
