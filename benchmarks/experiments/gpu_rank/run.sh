#!/bin/bash
# On the GPU machine, from the repository root, with data/gpu carried (prep.py):
#   bash benchmarks/experiments/gpu_rank/run.sh JOBS_FILE
# Trains every line of JOBS_FILE ("NAME extra-args...") at once with the shipped recipe
# (python -m train's defaults; Kaggle + tcga-lgg, --epochs 8, --no-finalize), then scores them into $OUT.
set -u
JOBS=$1; R=${RUNS:-/tmp/rank}; mkdir -p "$R"
(cd data/gpu && python3 -c "import zipfile; zipfile.ZipFile('blob.zip').extractall('.')")
export PYTHONPATH=$PWD/data/gpu/pkgs:$PWD PYTHONUNBUFFERED=1
run_one() {
  name=$1; shift; start=$(date +%s)
  timeout "${PER_RUN:-420}" python3 -m train --data-dir data/gpu/btmri --extra-data data/gpu/tcga-lgg \
    --output "$R/$name" --epochs 8 --no-finalize --no-test --no-progress \
    --workers "${WORKERS:-1}" "$@" > "$R/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - start ))s" | tee -a "$R/summary.txt"
}
export -f run_one; export R
xargs -P "$(wc -l < "$JOBS")" -L 1 bash -c 'run_one "$@"' _ < "$JOBS"
python3 -m benchmarks.experiments.gpu_rank.score "$R" "${OUT:-/tmp/rank_out}"
