"""Studies behind design choices, kept runnable; their results are in ``docs/``."""
