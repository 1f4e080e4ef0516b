#!/usr/bin/env bash
# `select.strategy=needle` on the device machine: the GPU recipe's data and teacher (bf16 on CUDA), the layer selection
# alone (`hypenet select`, no stage 1), with the recipe's own probe settings (64 prompts of 2,048 tokens) and with
# 10 prompts of 4,096 tokens; each selection's done.json and log come back in $OUT. Run from the repository root after
# the carry calls that scripts/gpu_carry.py prints (this is the last one): `bash results/needle_attention/needle_strategy/gpu.sh`.
set -uo pipefail
RUNS=${RUNS:-runs/needle_strategy}
mkdir -p "$RUNS/logs" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
setup >"$RUNS/logs/setup.log" 2>&1 || { cat "$RUNS/logs/setup.log"; exit 1; }
tail -3 "$RUNS/logs/setup.log"
for spec in 64:2048 10:4096; do
    samples=${spec%:*} context=${spec#*:}
    name=gpu_seed0_${context}x${samples}
    SECONDS=0
    python3 -m hypenet.cli select --config configs/gpu-smollm2.yaml --teacher "$TEACHER" --data "$CORPUS" \
        --out "$RUNS/$name" --set select.strategy=needle --set select.recall_samples="$samples" \
        --set select.recall_context="$context" >"$RUNS/logs/$name.log" 2>&1
    echo "$name: exit $? in ${SECONDS}s"
    cp "$RUNS/$name/stages/select/done.json" "$OUT/$name.json" 2>/dev/null
    grep -a "finds the needle most" "$RUNS/logs/$name.log"
    xz -9c "$RUNS/logs/$name.log" >"$OUT/$name.log.xz"
done
cp "$RUNS/logs/setup.log" "$OUT/setup.log"
