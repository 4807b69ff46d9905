"""The one home for the constants shared by ``core``, ``train`` and the app."""

from __future__ import annotations

import os
from pathlib import Path

#: The four classes, in the order of the model's outputs.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")

#: Human-readable names for display.
CLASS_LABELS: dict[str, str] = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "notumor": "No tumour",
    "pituitary": "Pituitary tumour",
}

#: Folder names of older releases of the Kaggle dataset, mapped to ``CLASS_NAMES``.
LEGACY_CLASS_FOLDERS: dict[str, str] = {
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "no_tumor": "notumor",
    "pituitary_tumor": "pituitary",
}

#: Default architecture (a timm model name) and input size: the shipped recipe's.
DEFAULT_ARCH = "efficientnet_lite1"
DEFAULT_IMAGE_SIZE = 192

#: Input normalisation of the pre-trained EfficientNet-Lite weights: (x - 0.5) / 0.5, as in
#: TensorFlow's EfficientNet-Lite. Measured on two natural images (matplotlib's and
#: scikit-learn's samples): these values give the expected ImageNet classes (academic gown,
#: daisy), torchvision's ImageNet mean and std do not (lampshade for the daisy).
INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "model_card.json"
HISTORY_NAME = "history.json"
EVALUATION_NAME = "evaluation.json"
AUDIT_NAME = "audit.json"
EXTERNAL_NAME = "external.json"
#: ``python -m train.compare``: the architecture comparison.
COMPARISON_NAME = "comparison.json"
#: ``python -m train.evaluate --series``: whole series from other sources.
SERIES_NAME = "series.json"


def assets_dir() -> Path:
    """The folder of the shipped model and its metrics: ``$BTMRI_ASSETS`` or ``assets/``."""
    return Path(os.environ.get("BTMRI_ASSETS", ASSETS_DIR))


def default_weights() -> Path:
    return assets_dir() / WEIGHTS_NAME

#: Where the development copy of the dataset lives; ``BTMRI_DATA`` overrides it.
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "datasets" / "brain-tumor-mri"


def data_dir() -> Path:
    """The dataset folder: ``$BTMRI_DATA`` or the shared development copy."""
    return Path(os.environ.get("BTMRI_DATA", DEFAULT_DATA_DIR))


#: Scans from other sources (``SOURCE/CLASS/FILE``), for validation and reporting only: never
#: trained on, never used to fit a threshold or a temperature. ``BTMRI_EXTERNAL`` overrides it.
DEFAULT_EXTERNAL_DIR = PROJECT_ROOT.parent / "shared" / "datasets" / "external-dev"

#: Extra training data (TCGA-LGG gliomas and tumour-free slices of the same patients);
#: ``BTMRI_EXTRA`` overrides it.
DEFAULT_EXTRA_DIR = PROJECT_ROOT.parent / "shared" / "datasets" / "extra-train" / "tcga-lgg"

#: The class folder of lesions of types the model never learned, in an external folder.
OTHER_LESION_CLASS = "other"


def external_dir() -> Path:
    """The external development set: ``$BTMRI_EXTERNAL`` or the shared copy."""
    return Path(os.environ.get("BTMRI_EXTERNAL", DEFAULT_EXTERNAL_DIR))


def extra_dir() -> Path:
    """The extra training source: ``$BTMRI_EXTRA`` or the shared copy."""
    return Path(os.environ.get("BTMRI_EXTRA", DEFAULT_EXTRA_DIR))


#: Input limits for ``read_scan``.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000  # 40 megapixels: far above any MRI slice, far below a decompression bomb
MIN_SIDE = 32  # pixels; smaller images cannot be a brain MRI slice
#: Larger images are downscaled on reading (the model sees 192 px; the viewer needs no more).
MAX_SIDE = 2048
#: Reading refuses an image whose longer side is over 10 times the shorter: a strip, not one
#: slice (core.pixels.check_dimensions). Not to be confused with MRI_MAX_ASPECT below.
READ_MAX_ASPECT = 10.0
#: The image checks call an image "not a brain MRI" above this ratio of longer to shorter side:
#: no MRI slice is stored that elongated (core.ood.ImageLimits).
MRI_MAX_ASPECT = 2.5
#: ... and below this spread of grey levels (a fraction of 0-255): blank or near-constant.
MRI_MIN_STD = 0.04
#: ... and above this mean spread between colour channels (a fraction of 0-255): coloured.
MRI_MAX_COLOUR = 0.04
#: Calibrated confidence under which a prediction is flagged when the model card fitted none
#: (weights trained with ``--no-finalize``; ``python -m train`` fits one on validation).
UNFITTED_LOW_CONFIDENCE = 0.7
#: The negative answer. Missing a tumour costs most, so a "no tumour" answer must clear a floor
#: of its own on the answer cosine to be shown without a flag (``core.rules``).
NEGATIVE_CLASS = "notumor"
#: The wording of a "no tumour" answer under that floor.
WEAK_NEGATIVE_FLAG = "not confident enough to rule out a tumour"
SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm")

#: Whole series (``core.read_series``). The external development series (``SOURCE/CLASS/CASE``:
#: NIfTI volumes and DICOM folders), for validation only; ``BTMRI_SERIES`` overrides it.
DEFAULT_SERIES_DIR = PROJECT_ROOT.parent / "shared" / "datasets" / "external-dev-series"


def series_dir() -> Path:
    """The external development series: ``$BTMRI_SERIES`` or the shared copy."""
    return Path(os.environ.get("BTMRI_SERIES", DEFAULT_SERIES_DIR))


#: The planes a series is cut in; the first is the default for a near-isotropic NIfTI volume.
SERIES_PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: Slices (all series of one read together) above which ``read_series`` refuses the input.
MAX_SERIES_SLICES = 1000
#: Pixels (all slices of one read together) above which ``read_series`` refuses the input, checked
#: on the headers before any decoding: a 300-slice 512 x 512 series (79 million) fits, and the
#: decoded data stays under about 300 MB (2 bytes a pixel while decoding, 1 byte once in 8 bits).
MAX_SERIES_VOXELS = 100_000_000
#: Files (folder contents and zip members together) above which ``read_series`` refuses the input.
MAX_SERIES_FILES = 5000
#: Bytes read into memory from one input: a zip's members in all (their declared sizes are
#: checked before extracting), one file, or one decompressed ``.nii.gz``.
MAX_SERIES_BYTES = 512 * 2**20
#: One grey window per series: these percentiles of the head voxels of the whole volume ...
SERIES_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: ... where the head is the voxels above this fraction of the volume's 99th percentile (both
#: measured from the volume's minimum), so that the air around the head does not set the window.
SERIES_HEAD_FRACTION = 0.05
#: A step between neighbouring slices over this multiple of the median step is a gap (slices
#: missing), named in the series' notes.
SERIES_GAP_FACTOR = 1.5
#: Sequence names a series can be given (``core.sequence.SequenceInfo.name``).
#: "T1w": T1-weighted, with or without contrast (the image recogniser's answer when it cannot tell).
SEQUENCE_NAMES: tuple[str, ...] = ("T1", "T1C", "T1w", "T2", "FLAIR", "other", "unknown")
#: The sequences the image recogniser tells apart (its outputs, in order).
RECOGNISED_SEQUENCES: tuple[str, ...] = ("T1", "T1C", "T2", "FLAIR")
#: The sequences a user may choose for a scan (the page's selector, ``python -m core --sequence``).
USER_SEQUENCES: tuple[str, ...] = ("T1", "T1C", "T1w", "T2", "FLAIR", "other")
#: Where a sequence name came from: the DICOM tags, the file name (NIfTI), the image, the user.
SEQUENCE_SOURCES: tuple[str, ...] = ("tags", "name", "image", "user", "unknown")
