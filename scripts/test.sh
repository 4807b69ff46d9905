#!/usr/bin/env bash
# Install (into .venv) and run the whole test suite: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
export BTMRI_DATA="${BTMRI_DATA:-$(cd .. && pwd)/shared/datasets/brain-tumor-mri}"
exec .venv/bin/python -m pytest "$@"
