#!/usr/bin/env bash
# The twenty-second lease's second try, run from the repository root as
# `bash results/gpu_convert/repeat_spans_1/lease22b.sh 585` (repeated until it prints "all done").
# The first try (lease22.sh) converted A and evaluated its perplexity, then its machine was given back before the
# NIAH grid (the student went with it); with the device time left, this runs A alone again (same command, so the
# same student up to GPU nondeterminism) with the 6-sample NIAH grid at 4K-32K as HALO_MORE_EVAL, and no B.
#   A  the default recipe with seed 2 and twice the repeated spans (data.repeat_spans=1.0)
set -u
SEED="--set seed=2 --set data.seed=0"
GRID="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
RUNS=runs/gpu_rs1 CONVERT_OPTIONS="$SEED --set data.repeat_spans=1.0" \
  ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  HALO_MORE_EVAL="--evals niah_forced,niah $GRID --niah-lengths 4096,8192,16384,32768" \
  bash scripts/gpu_convert.sh "${1:-575}"
