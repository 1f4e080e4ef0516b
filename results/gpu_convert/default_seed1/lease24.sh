#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/default_seed1/lease24.sh 585`, repeated until it prints "all done": the twenty-third
# lease's A/B (repeat_spans_1/lease23.sh: NIAH grid in parts, then a stage 3 on 24M tokens from A's stage 2) with
#   A  the default recipe (configs/gpu-smollm2.yaml, a repeated span in half the chunks) and training seed 1 on the
#      same documents and split: the default's second seed
RUNS=runs/gpu_d1 CONVERT_OPTIONS="--set seed=1 --set data.seed=0" bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
