#!/usr/bin/env bash
# Ship a training run: `bash scripts/ship.sh runs/NAME` copies its artifacts into assets/, fits
# the sequence recogniser on the new classifier's features (a probe on what its gate taps: about
# 2 min), counts the classifier's training scans per class and sequence, fits the series rule on
# validation series, then rebuilds every report stored from them: scans and series from other
# sources, the pointing game and the README's results section.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash scripts/ship.sh RUN_FOLDER}
EXTERNAL=${BTMRI_EXTERNAL:-../shared/datasets/external-dev}
SERIES=${BTMRI_SERIES:-../shared/datasets/external-dev-series}
PY=.venv/bin/python
export PYTHONPATH=.
for f in model.safetensors model_card.json history.json evaluation.json ood.safetensors model.onnx; do
    [ -f "$RUN/$f" ] || { echo "$RUN/$f is missing: run python -m train.finalize on the run first" >&2; exit 1; }
done
cp "$RUN"/{model.safetensors,model_card.json,history.json,evaluation.json,ood.safetensors,model.onnx} assets/
$PY -m train.sequence fit --assets assets
$PY -m train.sequence table --assets assets
$PY -m train.series --weights assets/model.safetensors
$PY -m train.evaluate --external "$EXTERNAL" --output assets/external.json > /dev/null
$PY -m train.evaluate --series "$SERIES" --output assets/series.json > /dev/null
$PY -m train.pointing --merge-into assets/evaluation.json > /dev/null
$PY -m train.report --update-readme
