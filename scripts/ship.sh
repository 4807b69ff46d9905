#!/usr/bin/env bash
# Ship a training run: `bash scripts/ship.sh runs/NAME` makes the run's int8 graph (and its
# fidelity check, stored in benchmarks/fidelity.json) unless it has one, copies its artifacts
# into assets/, then rebuilds every report stored from them: scans from other sources, the
# pointing game and the README's results section.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash scripts/ship.sh RUN_FOLDER}
EXTERNAL=${BTMRI_EXTERNAL:-../shared/datasets/external-dev}  # as train.quantize and the tests
PY=.venv/bin/python
export PYTHONPATH=.
for f in model.safetensors model_card.json history.json evaluation.json ood.safetensors model.onnx; do
    [ -f "$RUN/$f" ] || { echo "$RUN/$f is missing: run python -m train.finalize on the run first" >&2; exit 1; }
done
[ -f "$RUN/model.int8.onnx" ] || $PY -m train.quantize --weights "$RUN/model.safetensors" --report benchmarks/fidelity.json
cp "$RUN"/{model.safetensors,model_card.json,history.json,evaluation.json,ood.safetensors,model.onnx,model.int8.onnx} assets/
$PY -m train.evaluate --external "$EXTERNAL" --output assets/external.json > /dev/null
$PY -m train.pointing --merge-into assets/evaluation.json > /dev/null
$PY -m train.report --update-readme
