"""Studies behind design choices, kept runnable; their results are in ``docs/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: Any, output: Path | None) -> None:
    """An experiment's result as indented JSON: printed, or written to ``output``."""
    text = json.dumps(result, indent=1)
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
