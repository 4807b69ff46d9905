"""``python -m benchmarks``: the inference benchmark (see :mod:`benchmarks.inference`)."""

import sys

from .inference import cli

if __name__ == "__main__":
    sys.exit(cli())
