"""Brain-MRI tumour classifier: the public inference API.

    from core import CLASS_NAMES, ScanError, load_model, read_scan

    model = load_model()
    image = read_scan("scan.jpg")
    prediction = model.predict(image)      # Prediction(label, confidence, probabilities)
    heatmap = model.explain(image)         # float32 array in [0, 1], same size as the image
"""

from .constants import CLASS_LABELS, CLASS_NAMES
from .model import Classifier, Prediction, load_model
from .scan import ScanError, read_scan
from .weights import WeightsError

__all__ = [
    "CLASS_LABELS",
    "CLASS_NAMES",
    "Classifier",
    "Prediction",
    "ScanError",
    "WeightsError",
    "load_model",
    "read_scan",
]
