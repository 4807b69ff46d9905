"""Rebuild the classifier's weights: ``python -m train``, ``python -m train.evaluate``, ``python -m train.audit``."""
