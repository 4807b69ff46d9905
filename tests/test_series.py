"""``core.read_series``: DICOM series (shuffled, mixed, compressed, multi-frame, broken, zipped)
and NIfTI volumes in generated data, then the real development series when they are present."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import random
import time

import numpy as np
import pytest
from PIL import Image

import core.series as series_module
from core import ScanError, SequenceInfo, Series, SeriesError, read_series
from core.constants import series_dir
from dicom_factory import dicom_bytes
from series_factory import (
    SECRETS,
    compressed,
    marked_volume,
    mr_slice,
    multiframe_bytes,
    nifti_bytes,
    phantom,
    raw_zip,
    series_bytes,
    series_datasets,
    zeros_deflate,
    zip_bytes,
)


def write_files(folder, blobs, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, blob in enumerate(blobs):
        path = folder / (names[index] if names else f"IM{index:04d}.dcm")
        path.write_bytes(blob)
        paths.append(path)
    return paths


def grey(series: Series) -> np.ndarray:
    return np.stack([np.asarray(s) for s in series.slices])


def slice_means(series: Series) -> list[float]:
    return [float(np.asarray(s).mean()) for s in series.slices]


# ---------------------------------------------------------------------------- DICOM order
def test_shuffled_files_are_put_back_in_order(tmp_path):
    volume = phantom(12)
    paths = write_files(tmp_path / "drop", series_bytes(volume))
    random.Random(3).shuffle(paths)
    [series] = read_series(paths)
    assert len(series) == 12
    assert series.positions_mm == pytest.approx([-40.0 + 2 * k for k in range(12)])
    means = slice_means(series)
    assert means == sorted(means) and means[0] < means[-1]  # brightness grows with the slice
    assert series.name == "Series 7: t1_mprage_tra_Gd"
    assert series.plane == "axial" and series.format == "dicom"
    assert series.pixel_spacing == (0.9, 0.9)
    assert series.slice_step_mm == pytest.approx(2.0)
    assert series.sequence.name == "T1C" and series.sequence.source == "tags"
    assert series.problems == () and series.notes == ()
    assert all(s.mode == "L" and s.size == (64, 64) and s.info == {} for s in series.slices)


def test_a_folder_bytes_and_file_objects_read_alike(tmp_path):
    blobs = series_bytes(phantom(6))
    write_files(tmp_path / "a" / "b", blobs)
    from_folder = read_series([tmp_path])
    from_bytes = read_series(list(reversed(blobs)))
    from_files = read_series([io.BytesIO(b) for b in blobs])
    from_pairs = read_series([(f"x{k}.dcm", b) for k, b in enumerate(blobs)])
    expected = grey(from_folder[0])
    for result in (from_bytes, from_files, from_pairs):
        assert len(result) == 1 and np.array_equal(grey(result[0]), expected)
    assert from_folder[0].source == str(tmp_path)


def test_two_series_mixed_in_one_drop_come_out_apart():
    first = series_bytes(phantom(8), uid="1.2.3.1", number=4, description="AX FLAIR")
    second = series_bytes(phantom(5, seed=1), uid="1.2.3.2", number=2, description="t2_tse_tra")
    mixed = first + second
    random.Random(0).shuffle(mixed)
    a, b = read_series(mixed)
    assert (a.name, len(a), a.sequence.name) == ("Series 2: t2_tse_tra", 5, "T2")
    assert (b.name, len(b), b.sequence.name) == ("Series 4: AX FLAIR", 8, "FLAIR")


def test_one_window_for_the_whole_series_keeps_slices_related():
    volume = phantom(10)
    [series] = read_series(series_bytes(volume))
    low, high = series.window
    assert 380 <= low < 420 and 700 < high <= 400 + 40 * 9 + 30
    means = slice_means(series)
    assert means[-1] - means[0] > 20  # a per-slice stretch would make every slice look alike


def test_rescale_per_slice_and_monochrome1_as_single_file_reading():
    volume = phantom(6)
    plain = read_series(series_bytes(volume))[0]
    datasets = series_datasets((volume // 2).astype(np.uint16))
    for ds in datasets:  # stored / 2, then slope 2: the same values
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, 0.0
    rescaled = read_series([dicom_bytes(ds) for ds in datasets])[0]
    assert np.abs(grey(rescaled).astype(int) - grey(plain).astype(int)).max() <= 2
    inverted = series_datasets((4000 - volume.astype(np.int32)).astype(np.uint16))
    for ds in inverted:
        ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = read_series([dicom_bytes(ds) for ds in inverted])[0]
    assert np.abs(grey(mono1).astype(int) - grey(plain).astype(int)).mean() < 3


def test_stored_orientation_is_shown_the_radiological_way():
    """Slices stored flipped (IOP -x, -y) or transposed come out as the standard axial view."""
    volume = marked_volume(6)
    standard = read_series(series_bytes(volume))[0]
    assert np.asarray(standard.slices[0])[5, 10] == 255  # the block stays top left
    flipped = [
        dicom_bytes(mr_slice(volume[k, ::-1, ::-1].copy(), (33.0, 33.0, -40.0 + 2 * k),
                             orientation=(-1, 0, 0, 0, -1, 0), instance=k + 1))
        for k in range(6)
    ]
    transposed = [
        dicom_bytes(mr_slice(volume[k].T.copy(), (-30.0, -30.0, -40.0 + 2 * k),
                             orientation=(0, 1, 0, 1, 0, 0), spacing=(0.5, 0.9), instance=k + 1))
        for k in range(6)
    ]
    for blobs in (flipped, transposed):
        [series] = read_series(blobs)
        assert np.array_equal(grey(series), grey(standard))
    assert read_series(transposed)[0].pixel_spacing == (0.9, 0.5)


@pytest.mark.parametrize("plane, orientation, axis", [
    ("sagittal", (0, 1, 0, 0, 0, -1), 0),
    ("coronal", (1, 0, 0, 0, 0, -1), 1),
    ("axial", (1, 0, 0, 0, 1, 0), 2),
])
def test_plane_from_the_normal(plane, orientation, axis):
    blobs = []
    for k in range(5):
        position = [0.0, 0.0, 0.0]
        position[axis] = 3.0 * k
        blobs.append(dicom_bytes(mr_slice(phantom(1)[0], tuple(position), orientation=orientation, instance=k + 1)))
    [series] = read_series(blobs)
    assert series.plane == plane and len(series) == 5


# ---------------------------------------------------------------------------- DICOM encodings
def test_rle_compressed_series_decodes_to_the_same_slices():
    from pydicom.uid import RLELossless

    volume = phantom(5)
    plain = read_series(series_bytes(volume))[0]
    rle = [compressed(ds, RLELossless) for ds in series_datasets(volume)]
    assert all(b"1.2.840.10008.1.2.5" in blob[:1000] for blob in rle)
    assert np.array_equal(grey(read_series(rle)[0]), grey(plain))


def test_jpeg2000_lossless_series_decodes_to_the_same_slices():
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed")
    volume = phantom(4)
    plain = read_series(series_bytes(volume))[0]
    j2k = [compressed(ds, JPEG2000Lossless) for ds in series_datasets(volume)]
    assert np.array_equal(grey(read_series(j2k)[0]), grey(plain))


def test_real_jpeg_lossless_series_decodes():
    """pydicom has no JPEG lossless encoder: decoding is checked on the scanner's own files."""
    folder = series_dir() / "genoa" / "meningioma" / "genoa_M013"
    if not folder.is_dir():
        pytest.skip(f"series not found at {folder} (set BTMRI_SERIES)")
    files = sorted(folder.glob("*.dcm"))[:20]
    assert b"1.2.840.10008.1.2.4.70" in files[0].read_bytes()[:2000]
    [series] = read_series(files)
    assert len(series) == 20 and series.problems == ()
    assert 20 < float(np.asarray(series.slices[10]).mean()) < 200


@pytest.mark.parametrize("per_frame", [True, False])
def test_multiframe_file(per_frame):
    volume = phantom(9)
    order = [8, 3, 0, 5, 1, 7, 2, 6, 4] if per_frame else None
    [series] = read_series([multiframe_bytes(volume, per_frame=per_frame, frame_order=order)])
    assert len(series) == 9
    assert series.positions_mm == pytest.approx([-40.0 + 2 * k for k in range(9)])
    means = slice_means(series)
    assert means == sorted(means)
    assert series.pixel_spacing == (0.8, 0.7)
    assert series.name == "Series 3: AX FLAIR" and series.sequence.name == "FLAIR"
    assert series.sequence.repetition_time == 9000.0 and series.sequence.echo_time == 120.0
    if not per_frame:
        assert any("frame order" in note for note in series.notes)


# ---------------------------------------------------------------------------- broken series
def test_missing_slices_are_named_with_their_positions():
    blobs = series_bytes(phantom(12))
    del blobs[5:7]  # z = -30 and -28 mm
    [series] = read_series(blobs)
    assert len(series) == 10
    assert "2 slices missing between -32.0 mm and -26.0 mm." in series.notes


def test_duplicate_positions_and_repeated_files_are_removed():
    datasets = series_datasets(phantom(6))
    again = mr_slice(phantom(6)[2], (-30.0, -30.0, -36.0), instance=40)  # a new image, same place
    blobs = [dicom_bytes(ds) for ds in datasets] + [dicom_bytes(again), dicom_bytes(datasets[0])]
    [series] = read_series(blobs)
    assert len(series) == 6
    assert "1 duplicate position removed." in series.notes
    assert "1 file given twice was read once." in series.notes


def test_repeated_positions_fall_back_to_slice_location():
    """Some exports write the first position into every file (as the real genoa series does)."""
    datasets = series_datasets(phantom(8))
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [-30.0, -30.0, -40.0]
        ds.SliceLocation = -40.0 + 2 * k
    random.Random(1).shuffle(datasets)
    [series] = read_series([dicom_bytes(ds) for ds in datasets])
    assert len(series) == 8 and slice_means(series) == sorted(slice_means(series))
    assert any("SliceLocation" in note for note in series.notes)


def test_no_positions_at_all_orders_by_instance_number():
    datasets = series_datasets(phantom(5))
    for ds in datasets:
        del ds.ImagePositionPatient
    random.Random(2).shuffle(datasets)
    [series] = read_series([dicom_bytes(ds) for ds in datasets])
    assert slice_means(series) == sorted(slice_means(series))
    assert any("instance number" in note for note in series.notes)


def test_mixed_sizes_inside_one_uid_are_split():
    blobs = series_bytes(phantom(4, 64, 64)) + series_bytes(phantom(3, 96, 80), origin=0.0)
    a, b = read_series(blobs)
    assert {(len(a), a.slices[0].size), (len(b), b.slices[0].size)} == {(4, (64, 64)), (3, (80, 96))}
    assert a.name.startswith("Series 7: t1_mprage_tra_Gd (part 1 of 2")


def test_a_corrupt_file_is_named_and_the_rest_is_read(tmp_path):
    blobs = series_bytes(phantom(8))
    blobs[3] = blobs[3][: len(blobs[3]) - 3000]  # pixel data cut short
    paths = write_files(tmp_path, blobs + [b"\x00" * 50 + b"not an image at all" * 10])
    [series] = read_series(paths)
    assert len(series) == 7
    problems = dict(series.problems)
    assert set(problems) == {"IM0003.dcm", "IM0008.dcm"}
    assert "damaged" in problems["IM0003.dcm"] and "Not a DICOM" in problems["IM0008.dcm"]
    assert "1 slice missing between -36.0 mm and -32.0 mm." in series.notes


def test_a_ct_series_is_refused_by_its_modality():
    ct = series_bytes(phantom(4), modality="CT", uid="1.2.9", number=2, description="HEAD CT")
    with pytest.raises(SeriesError) as info:
        read_series(ct)
    assert "CT series (4 files), not MR" in str(info.value)
    assert len(info.value.problems) == 1
    [mr] = read_series(ct + series_bytes(phantom(5)))
    assert len(mr) == 5 and "CT series" in mr.problems[0][1]
    secondary = series_bytes(phantom(2), modality="OT", uid="1.2.10")
    with pytest.raises(SeriesError, match=r"secondary capture \(OT\)"):
        read_series(secondary)


def test_nothing_readable_is_one_plain_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SeriesError) as info:
        read_series([tmp_path])
    assert str(info.value).startswith("No MR series could be read")
    assert info.value.problems == (("notes.txt", "Not a DICOM or NIfTI file."),)
    (tmp_path / "empty").mkdir()
    for nothing in ([tmp_path / "empty"], []):
        with pytest.raises(SeriesError, match="No files were found"):
            read_series(nothing)
    with pytest.raises(ScanError, match="No file or folder"):
        read_series([tmp_path / "missing"])


# ---------------------------------------------------------------------------- zip
def test_zip_with_nested_folders_and_other_files(tmp_path):
    blobs = series_bytes(phantom(6))
    members = {f"study/series 7/IM{k}.dcm": b for k, b in enumerate(blobs)}
    members |= {
        "study/README.txt": b"exported by a viewer",
        "__MACOSX/study/._IM0.dcm": b"apple double",
        "study/.DS_Store": b"junk",
        "study/inner.zip": zip_bytes({"x.dcm": blobs[0]}),
    }
    archive = zip_bytes(members)
    [series] = read_series([("export.zip", archive)])
    assert len(series) == 6 and series.source == "export.zip"
    assert dict(series.problems) == {
        "study/README.txt": "Not a DICOM or NIfTI file.",
        "study/inner.zip": "A zip inside a zip is not opened.",
    }
    path = tmp_path / "export.zip"
    path.write_bytes(archive)
    assert np.array_equal(grey(read_series([path])[0]), grey(series))
    assert np.array_equal(grey(read_series([archive])[0]), grey(series))  # bytes, no name


def test_zip_bomb_fails_fast():
    archive = raw_zip("bomb.dcm", zeros_deflate(2 * 2**30), declared_size=2 * 2**30)
    assert len(archive) < 4 * 2**20
    start = time.perf_counter()
    with pytest.raises(ScanError, match="unpacks to 2048 MB"):
        read_series([("bomb.zip", archive)])
    assert time.perf_counter() - start < 0.5


def test_zip_member_longer_than_it_declares_is_cut_short():
    archive = raw_zip("liar.dcm", zeros_deflate(2 * 2**30), declared_size=1000)
    start = time.perf_counter()
    with pytest.raises(SeriesError) as info:
        read_series([archive])
    assert time.perf_counter() - start < 0.5
    assert info.value.problems == (("liar.dcm", "The file could not be unpacked from the zip archive."),)


def test_limits_refuse_before_decoding(monkeypatch):
    blobs = series_bytes(phantom(6))
    monkeypatch.setattr(series_module, "MAX_SERIES_SLICES", 5)
    with pytest.raises(ScanError, match="more than 5 slices"):
        read_series(blobs)
    monkeypatch.setattr(series_module, "MAX_SERIES_SLICES", 1000)
    monkeypatch.setattr(series_module, "MAX_SERIES_VOXELS", 5 * 64 * 64)
    with pytest.raises(ScanError, match="million pixels"):
        read_series(blobs)
    monkeypatch.setattr(series_module, "MAX_SERIES_FILES", 3)
    with pytest.raises(ScanError, match="more than 3 files"):
        read_series([zip_bytes({f"{k}.dcm": b for k, b in enumerate(blobs)})])


def test_a_file_declaring_a_billion_frames_fails_fast():
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(multiframe_bytes(phantom(2))))
    ds.NumberOfFrames = 10**9
    start = time.perf_counter()
    with pytest.raises(ScanError, match="1000000000 frames"):
        read_series([dicom_bytes(ds)])
    assert time.perf_counter() - start < 0.5


def test_gzip_bomb_as_nifti_fails_fast(monkeypatch):
    import gzip

    monkeypatch.setattr(series_module, "MAX_SERIES_BYTES", 2**20)
    bomb = gzip.compress(bytes(64 * 2**20), compresslevel=1)
    start = time.perf_counter()
    with pytest.raises(ScanError, match="unpacks to more than 1 MB"):
        read_series([("volume.nii.gz", bomb)])
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------- privacy
def test_no_patient_tag_leaves_the_reader(caplog, tmp_path):
    blobs = series_bytes(phantom(6))
    blobs[2] = blobs[2][:-2000]
    blobs += series_bytes(phantom(2), modality="CT", uid="1.2.9")
    assert SECRETS[0].encode() in blobs[0]  # the files really are identifiable
    caplog.set_level(logging.DEBUG)
    for name in ("core", "core.series", "core.dicom", "pydicom"):
        caplog.set_level(logging.DEBUG, logger=name)
    results = read_series(write_files(tmp_path, blobs)) + read_series([multiframe_bytes(phantom(3))])
    with pytest.raises(SeriesError) as info:
        read_series(blobs[-2:])
    texts = [repr(s) for s in results] + [str(info.value), repr(info.value.problems)]
    for series in results:
        texts += [str(getattr(series, f.name)) for f in dataclasses.fields(series)]
        texts += [repr(image.info) for image in series.slices]
    texts += [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    blob = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in blob


# ---------------------------------------------------------------------------- NIfTI
def _canonical_volume(shape=(40, 48, 36)) -> np.ndarray:
    """A RAS volume (x right, y anterior, z superior) with a bright block in the right, anterior,
    superior corner."""
    volume = np.zeros(shape, dtype=np.int16)
    x, y, z = np.indices(shape)
    ellipse = ((x - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.4)) ** 2
    volume[ellipse < 1] = 300
    volume[-8:-2, -8:-2, -8:-2] = 2000
    return volume


@pytest.mark.parametrize("plane, zooms", [
    ("axial", (0.9, 0.9, 5.0)),
    ("coronal", (0.9, 4.0, 0.9)),
    ("sagittal", (3.0, 0.9, 0.9)),
])
@pytest.mark.parametrize("stored", ["RAS", "LSP"])
def test_nifti_cut_across_the_thickest_voxels_radiologically(plane, zooms, stored):
    volume = _canonical_volume()
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -10.0
    if stored == "LSP":  # stored with x flipped and y, z swapped (as the tiantan volumes)
        volume = volume[::-1].transpose(0, 2, 1)[:, :, ::-1].copy()
        affine = affine @ np.array([[-1, 0, 0, 39], [0, 0, -1, 35], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    [series] = read_series([(f"sub-01_{plane}_t2w.nii.gz", nifti_bytes(volume, affine))])
    assert series.plane == plane and series.format == "nifti"
    thick = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    assert len(series) == _canonical_volume().shape[thick]
    assert series.slice_step_mm == pytest.approx(zooms[thick])
    assert series.name == f"sub-01_{plane}_t2w"
    assert series.sequence == SequenceInfo(name="T2", source="name")
    # Near the last slice (right, anterior or superior) the block shows in the top-left corner:
    # anterior or superior at the top, the patient's right (or the face) on the left.
    near_end = np.asarray(series.slices[-4])
    assert near_end[:2, :2].max() == 0 and near_end[3:7, 3:7].min() == 255
    assert np.asarray(series.slices[3]).max() < 255


def test_nifti_and_dicom_of_one_volume_give_the_same_slices():
    volume = marked_volume(6)  # (slices, rows, cols) in DICOM order: rows to posterior, cols to left
    [dicom] = read_series(series_bytes(volume, step=2.0, spacing=(0.9, 0.9)))
    # The same voxels as a RAS NIfTI: x = -column, y = -row, z = slice.
    ras = volume.transpose(2, 1, 0)[::-1, ::-1, :].copy()
    affine = np.array([[0.9, 0, 0, 30 - 63 * 0.9], [0, 0.9, 0, 30 - 63 * 0.9], [0, 0, 2.0, -40], [0, 0, 0, 1]])
    [nifti] = read_series([("volume.nii", nifti_bytes(ras, affine, gz=False))])
    assert np.array_equal(grey(nifti), grey(dicom))
    assert nifti.positions_mm == pytest.approx(dicom.positions_mm)
    assert nifti.pixel_spacing == dicom.pixel_spacing == (0.9, 0.9)


def test_4d_nifti_reads_the_first_volume():
    first = _canonical_volume()
    volume = np.stack([first, first[::-1] // 2], axis=-1)
    [series] = read_series([("bold.nii.gz", nifti_bytes(volume, np.diag([1.0, 1.0, 3.0, 1.0])))])
    assert "4-D file: first volume used." in series.notes
    [alone] = read_series([("first.nii.gz", nifti_bytes(first, np.diag([1.0, 1.0, 3.0, 1.0])))])
    assert np.array_equal(grey(series), grey(alone))


def test_isotropic_nifti_is_cut_in_the_asked_plane(tmp_path):
    path = tmp_path / "iso_gd.nii.gz"
    path.write_bytes(nifti_bytes(_canonical_volume(), np.eye(4)))
    for plane, count in (("axial", 36), ("coronal", 48), ("sagittal", 40)):
        [series] = read_series([path], plane=plane)
        assert (series.plane, len(series)) == (plane, count)
        assert series.sequence.name == "T1C" and series.source == str(path)
    with pytest.raises(ValueError, match="'oblique'"):
        read_series([path], plane="oblique")


def test_damaged_nifti_is_a_problem():
    good = ("t1.nii.gz", nifti_bytes(_canonical_volume(), np.diag([1.0, 1.0, 4.0, 1.0])))
    [series] = read_series([good, ("broken.nii", b"\x5c\x01" + bytes(400))])
    assert series.problems == (("broken.nii", "The NIfTI file is damaged and could not be read."),)


# ---------------------------------------------------------------------------- the dataclass
def _series(**change) -> Series:
    values = dict(
        name="Series 1", slices=(Image.new("L", (40, 40)),) * 2, positions_mm=(0.0, 1.0),
        pixel_spacing=(1.0, 1.0), plane="axial", sequence=SequenceInfo(), source="x",
        format="dicom", window=(0.0, 1.0),
    )
    return Series(**{**values, **change})


@pytest.mark.parametrize("change, words", [
    ({"plane": "oblique"}, "'oblique'"),
    ({"slices": ()}, "at least one slice"),
    ({"slices": (Image.new("RGB", (40, 40)),) * 2}, "'RGB'"),
    ({"positions_mm": (1.0, 0.0)}, "(1.0, 0.0)"),
    ({"positions_mm": (0.0,)}, "1 positions for 2 slices"),
    ({"pixel_spacing": (0.0, 1.0)}, "(0.0, 1.0)"),
    ({"format": "png"}, "'png'"),
    ({"window": (5.0, 5.0)}, "(5.0, 5.0)"),
    ({"sequence": "T1"}, "str"),
    ({"name": ""}, "''"),
])
def test_series_validates_its_fields(change, words):
    with pytest.raises(ValueError) as info:
        _series(**change)
    assert words in str(info.value)


def test_series_is_frozen_and_sized():
    series = _series(positions_mm=[0, 2.5], problems=[("a.dcm", "Not a DICOM or NIfTI file.")])
    assert len(series) == 2 and series.positions_mm == (0.0, 2.5) and series.problems[0] == ("a.dcm", "Not a DICOM or NIfTI file.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        series.plane = "coronal"


# ---------------------------------------------------------------------------- real series
def test_every_real_series_reads_with_its_plane():
    root = series_dir()
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"series not found at {root} (set BTMRI_SERIES)")
    with open(root / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 17
    for row in rows:
        [series] = read_series([root / row["path"]])
        expected = "axial" if row["plane"] == "volume" else row["plane"]  # isotropic: the default
        assert series.plane == expected, row["path"]
        assert len(series) >= 11 and series.problems == (), row["path"]
        assert series.format == row["format"]
        middle = np.asarray(series.slices[len(series) // 2])
        assert 10 < middle.mean() < 200 and middle.std() > 20, row["path"]


def test_slices_feed_predict_batch(tiny_model):
    [series] = read_series(series_bytes(phantom(5)))
    predictions = tiny_model.predict_batch(series.slices)
    assert len(predictions) == 5
