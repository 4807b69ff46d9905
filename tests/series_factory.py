"""Generated MR series for the series tests: DICOM files (single- and multi-frame, compressed),
NIfTI volumes and hand-made zip archives, built in memory. No scan is committed."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib

import numpy as np

from dicom_factory import dicom_bytes, mr_dataset

#: Recognisable values for the patient tags; none may come out of the reader.
PATIENT_TAGS = {
    "PatientName": "Quillfeather^Marguerite",
    "PatientID": "PID-7731-XQZ",
    "PatientBirthDate": "19620415",
    "AccessionNumber": "ACC99017342",
    "StudyDate": "20190304",
}
SECRETS = sorted(
    set(PATIENT_TAGS.values()) | {p for v in PATIENT_TAGS.values() for p in v.split("^") if len(p) > 3}
)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def phantom(slices: int = 12, rows: int = 64, cols: int = 64, seed: int = 0) -> np.ndarray:
    """A head-like volume (slices, rows, cols) of uint16: an ellipse on black air, brighter in
    each later slice (so the order can be read from the grey levels), with some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    head = ((y - rows / 2) / (rows * 0.4)) ** 2 + ((x - cols / 2) / (cols * 0.35)) ** 2 < 1
    volume = np.zeros((slices, rows, cols), dtype=np.float64)
    for k in range(slices):
        volume[k][head] = 400 + 40 * k + rng.normal(0, 5, head.sum())
    return np.clip(volume, 0, 65535).astype(np.uint16)


def marked_volume(slices: int = 10, rows: int = 64, cols: int = 64) -> np.ndarray:
    """A phantom with a bright block at the first row and column corner of every slice (so a flip
    or a transposition shows)."""
    volume = phantom(slices, rows, cols)
    volume[:, 2:10, 4:20] = 3000
    return volume


def mr_slice(
    pixels: np.ndarray,
    position: tuple[float, float, float],
    *,
    orientation: tuple[float, ...] = AXIAL,
    spacing: tuple[float, float] = (0.9, 0.9),
    uid: str = "1.2.826.0.1.3680043.8.498.1",
    number: int | None = 7,
    description: str | None = "t1_mprage_tra_Gd",
    instance: int | None = 1,
    modality: str = "MR",
    patient: bool = True,
    **extra,
):
    """A single-frame MR dataset (uncompressed, 16 bits) with geometry and patient tags."""
    ds = mr_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if patient:
            for keyword, value in PATIENT_TAGS.items():
                setattr(ds, keyword, value)
        ds.Modality = modality
        ds.SeriesInstanceUID = uid
        if number is not None:
            ds.SeriesNumber = number
        if description is not None:
            ds.SeriesDescription = description
        if instance is not None:
            ds.InstanceNumber = instance
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = 1.0
        ds.RepetitionTime, ds.EchoTime = 8.0, 3.0
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = extra.get("PhotometricInterpretation", "MONOCHROME2")
    signed = pixels.dtype.kind == "i"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    return ds


def series_datasets(volume: np.ndarray, *, step: float = 2.0, origin: float = -40.0, **kwargs) -> list:
    """One axial dataset per slice of ``volume``, slice k at z = origin + k * step."""
    return [
        mr_slice(volume[k], (-30.0, -30.0, origin + k * step), instance=k + 1, **kwargs)
        for k in range(len(volume))
    ]


def series_bytes(volume: np.ndarray, **kwargs) -> list[bytes]:
    return [dicom_bytes(ds) for ds in series_datasets(volume, **kwargs)]


def compressed(ds, syntax) -> bytes:
    """``ds`` compressed with pydicom's encoders (RLE natively, JPEG 2000 through pylibjpeg)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(syntax)
    return dicom_bytes(ds)


def multiframe_bytes(volume: np.ndarray, *, step: float = 2.0, per_frame: bool = True,
                     frame_order: list[int] | None = None, **tags) -> bytes:
    """An enhanced MR file holding ``volume``; frame i holds slice ``frame_order[i]``.

    ``per_frame``: each frame carries its PlanePositionSequence; otherwise only the shared
    functional groups hold the geometry (position, spacing) and the frames are in slice order.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    order = list(range(len(volume))) if frame_order is None else frame_order
    ds = mr_dataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPClassUID = EnhancedMRImageStorage
    for keyword, value in {**PATIENT_TAGS, **tags}.items():
        setattr(ds, keyword, value)
    ds.SeriesInstanceUID = tags.get("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.9")
    ds.SeriesNumber = tags.get("SeriesNumber", 3)
    ds.SeriesDescription = tags.get("SeriesDescription", "AX FLAIR")
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0

    def item(**sequences) -> Dataset:
        group = Dataset()
        for name, values in sequences.items():
            inner = Dataset()
            for keyword, value in values.items():
                setattr(inner, keyword, value)
            setattr(group, name, Sequence([inner]))
        return group

    shared = item(
        PlaneOrientationSequence={"ImageOrientationPatient": list(AXIAL)},
        PixelMeasuresSequence={"PixelSpacing": [0.8, 0.7], "SliceThickness": step,
                               "SpacingBetweenSlices": step},
        MRTimingAndRelatedParametersSequence={"RepetitionTime": 9000.0},
        MREchoSequence={"EffectiveEchoTime": 120.0},
    )
    if not per_frame:
        shared.PlanePositionSequence = item(P={"ImagePositionPatient": [-30.0, -30.0, -40.0]}).P
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if per_frame:
        ds.PerFrameFunctionalGroupsSequence = Sequence([
            item(PlanePositionSequence={"ImagePositionPatient": [-30.0, -30.0, -40.0 + k * step]})
            for k in order
        ])
    ds.PixelData = volume[order].astype("<u2").tobytes()
    return dicom_bytes(ds)


def nifti_bytes(volume: np.ndarray, affine: np.ndarray, gz: bool = True) -> bytes:
    """``volume`` (x, y, z[, t] voxel axes) with ``affine`` as a NIfTI-1 file's bytes."""
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1) if gz else data


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def raw_zip(name: str, stream: bytes, declared_size: int, crc: int = 0) -> bytes:
    """A one-member zip whose headers declare ``declared_size`` unpacked bytes for the raw
    deflate ``stream`` (no check of the claim: that is the point)."""
    encoded = name.encode()
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), declared_size, len(encoded), 0
    ) + encoded
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(stream), declared_size,
        len(encoded), 0, 0, 0, 0, 0, 0,
    ) + encoded
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(stream), 0
    )
    return local + stream + central + end


def zeros_deflate(total: int, chunk: int = 16 * 2**20) -> bytes:
    """A raw deflate stream of ``total`` zero bytes, made from one compressed chunk repeated (a
    full flush makes the pieces independent), so a 2 GB bomb is built in a fraction of a second."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    return piece * (total // chunk) + last
