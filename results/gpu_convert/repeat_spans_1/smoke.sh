#!/usr/bin/env bash
# Procedure check on the GPU (not a measurement): results/gpu_convert/repeat_spans_1/lease23.sh's options with tiny
# token budgets, to see the teacher's three carried parts, BRANCH and MORE_EVAL_LENGTHS work there.
# As run (its first call): export.eval_len=8192 was an error of this check (export needs more than stage 3's 16K).
GRID="--evals niah_forced,niah --niah-samples 1 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
RUNS=runs/smoke CONVERT_OPTIONS="--set seed=2 --set data.seed=0 --set data.repeat_spans=1.0 --set stage1.tokens=0.25M --set stage2.tokens=1M --set stage3.tokens=0.5M --set export.max_docs=1 --set export.eval_len=8192" \
  ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  EVAL_OPTIONS="--ppl-docs 2 --ppl-max-len 8192 --haystack-heldout --evals ppl" \
  HALO_MORE_EVAL="$GRID" MORE_EVAL_LENGTHS="4096 8192" \
  BRANCH="--set stage3.tokens=1M" BRANCH_LABEL=stage3-1m \
  bash scripts/gpu_convert.sh "${1:-575}"
