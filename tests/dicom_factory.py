"""A minimal single-frame MR DICOM dataset for tests, built in memory with pydicom."""

from __future__ import annotations

import io
import warnings


def mr_dataset():
    """A pydicom Dataset with file meta, SOP class/instance and modality MR, and no pixels yet."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    return ds


def dicom_bytes(ds) -> bytes:
    """The dataset as a DICOM file (with preamble), warnings about odd values silenced."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
