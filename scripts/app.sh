#!/usr/bin/env bash
# Install (into .venv) and start the app: `bash scripts/app.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
exec .venv/bin/streamlit run streamlit_app.py "$@"
