#!/usr/bin/env bash
# Ship a training run: `bash scripts/ship.sh runs/NAME` copies its artifacts into assets/, keeps
# the sequence recogniser already shipped (it does not depend on the classifier; retrain it with
# python -m train.sequence fit --output assets), counts the new classifier's training scans per
# class and sequence, fits the series rule on validation series, then rebuilds every report
# stored from them: scans and series from other sources, the pointing game and the README's
# results section.
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
RECOGNISER=$($PY -c 'import json; print(json.dumps(json.load(open("assets/model_card.json")).get("sequence")))')
cp "$RUN"/{model.safetensors,model_card.json,history.json,evaluation.json,ood.safetensors,model.onnx} assets/
if [ "$RECOGNISER" != "null" ]; then
    RECOGNISER="$RECOGNISER" $PY -c 'import json, os; p = "assets/model_card.json"; c = json.load(open(p))
c["sequence"] = json.loads(os.environ["RECOGNISER"]); open(p, "w").write(json.dumps(c, indent=2) + "\n")'
    $PY -m train.sequence table --assets assets
fi
$PY -m train.series --weights assets/model.safetensors
$PY -m train.evaluate --external "$EXTERNAL" --output assets/external.json > /dev/null
$PY -m train.evaluate --series "$SERIES" --output assets/series.json > /dev/null
$PY -m train.pointing --merge-into assets/evaluation.json > /dev/null
$PY -m train.report --update-readme
