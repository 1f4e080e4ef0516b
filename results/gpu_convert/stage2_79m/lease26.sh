#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage2_79m/lease26.sh 585`, repeated until it prints "all done": stage 2 on the paper's
# budget scaled to this teacher (0.59 tokens per teacher parameter: 79M tokens instead of 48M, ~1,600 steps of
# 12 x 4096), with everything else the default recipe (stage 3 at 1e-5 since the twenty-fifth lease), seed 2:
#   A  the conversion, its perplexity and copy eval, and the 6-sample NIAH grid (reference: the seventeenth lease's
#      seed 2 with 48M, 181 of 450 answers right)
#   B  from A's stage 2, stage 3 at 1e-4, as far as the lease goes (a second pair for the stage-3 learning rate)
# repeat_spans_1/lease23.sh with RUNS, CONVERT_OPTIONS, BRANCH and BRANCH_LABEL overridden.
RUNS=runs/gpu_l26 CONVERT_OPTIONS="--set seed=2 --set data.seed=0 --set stage2.tokens=79M" \
  BRANCH="--set stage3.lr=1e-4" BRANCH_LABEL=stage3-lr1e-4 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
