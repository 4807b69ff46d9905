"""Benchmarks of the shipped model, rerunnable between commits.

``python -m benchmarks`` (the same as ``python -m benchmarks.inference``): speed and memory of the
inference API on real scans, written to ``benchmarks/results.json``.
"""
