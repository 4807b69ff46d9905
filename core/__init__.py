"""Brain-MRI tumour classifier: the public inference API.

    from core import flag_text, load_model, read_scan

    model = load_model()
    image = read_scan("scan.jpg")
    prediction = model.predict(image)      # Prediction(label, confidence, probabilities, flags, ...)
    reasons = [flag_text(f) for f in prediction.flags]
    heatmap = model.explain(image)         # float32 array in [0, 1], same size as the image

    for series in read_series(["dicom_folder/", "volume.nii.gz"]):   # ordered 8-bit slices
        predictions = model.predict_batch(series.slices)
"""

from .constants import CLASS_LABELS, CLASS_NAMES
from .model import Classifier, Prediction, load_model
from .results import flag_text
from .rules import FLAG_KINDS, Flag
from .scan import ScanError, read_scan
from .sequence import SequenceInfo
from .series import Series, SeriesError, read_series
from .weights import WeightsError

__all__ = [
    "CLASS_LABELS",
    "CLASS_NAMES",
    "FLAG_KINDS",
    "Classifier",
    "Flag",
    "Prediction",
    "ScanError",
    "SequenceInfo",
    "Series",
    "SeriesError",
    "WeightsError",
    "flag_text",
    "load_model",
    "read_scan",
    "read_series",
]
