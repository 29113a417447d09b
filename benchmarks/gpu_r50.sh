#!/usr/bin/env bash
# ResNet-50 scale on one GPU: R50-FPN at 512-800 pixels (training shorter side 512-800, longest side
# 800; the real sets' images, at most 512 px, are upscaled), maskinit's r50-fpn preset against stock
# Detectron2's scratch-GN recipe at equal budget (ITERS iterations at batch BATCH), every run side by
# side on the one GPU, each killed after LIMIT seconds, so the whole script fits in 8 minutes.
#
# Usage: OUT=/some/dir bash benchmarks/gpu_r50.sh
#   env: DATA (folder of rice_leaf/, coco128/; default $MASKINIT_BENCH_DATA or ../shared/data),
#        SETS ("rice_leaf coco128"), SEEDS ("0"), LRS ("0.02 0.04"), ARMS (maskinit runs: "preset adamw@2e-4
#        sgd@0.02", see r50.py --maskinit-arms), ITERS (400), BATCH (4),
#        LIMIT (400 s per run), WORKERS (2 loader processes per run), PY (.venv/bin/python)
# Writes $OUT/r50-SET-800px.{json,md,png}, $OUT/runs/ (each run's log, config, metrics), $OUT/SET.log,
# $OUT/nvidia-smi.csv. Runs side by side: |SETS| x |SEEDS| x (|LRS| + |ARMS|), 10 by default.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-r50}
DATA=${DATA:-${MASKINIT_BENCH_DATA:-../shared/data}}
SETS=${SETS:-"rice_leaf coco128"}
SEEDS=${SEEDS:-"0"}
LRS=${LRS:-"0.02 0.04"}
ARMS=${ARMS:-"preset adamw@2e-4 sgd@0.02"}
ITERS=${ITERS:-400}
BATCH=${BATCH:-4}
LIMIT=${LIMIT:-400}
WORKERS=${WORKERS:-2}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
start=$(date +%s)

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv -l 10 > "$OUT/nvidia-smi.csv" 2>&1 &
smi=$!

pids=()
for set in $SETS; do
    if [ ! -f "$DATA/$set/train.json" ]; then
        echo "$set skipped: $DATA/$set/train.json not found (set DATA)"
        continue
    fi
    # shellcheck disable=SC2086
    "$PY" benchmarks/r50.py --data "$set=$DATA/$set" --device cuda --size 800 --train-sizes 512 576 640 704 768 800 \
        --iters "$ITERS" --batch "$BATCH" --seeds $SEEDS --lrs $LRS --maskinit-arms $ARMS --jobs 64 --workers "$WORKERS" \
        --run-timeout "$LIMIT" --runs-dir "$OUT/runs" --results-dir "$OUT" > "$OUT/$set.log" 2>&1 &
    pids+=($!)
    echo "$set: pid $!"
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
kill "$smi" 2>/dev/null
wait "$smi" 2>/dev/null
"$PY" benchmarks/plots.py --results-dir "$OUT" > /dev/null 2>&1 || true
cat "$OUT"/r50-*.md 2>/dev/null
echo "gpu_r50.sh: $(( $(date +%s) - start )) s, exit $status"
exit $status
