import sys

from .train import cli

cli(sys.argv[1:])
