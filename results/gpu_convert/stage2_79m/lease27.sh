#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage2_79m/lease27.sh 585`, repeated until it prints "all done": the default recipe
# (stage 2 on 79M tokens since the twenty-sixth lease) with a second training seed, seed 1, same documents and split:
#   A  the conversion, its perplexity and copy eval, and the 6-sample NIAH grid (references: the twenty-sixth
#      lease's seed 2 at 79M, 231 of 450 answers right; the sixteenth lease's seed 1 at 48M, 221 of 450)
#   B  from A's stage 2, stage 3 at 1e-4, as far as the lease goes (as in lease26.sh, which did not reach it)
# repeat_spans_1/lease23.sh with RUNS, CONVERT_OPTIONS, BRANCH and BRANCH_LABEL overridden.
RUNS=runs/gpu_l27 CONVERT_OPTIONS="--set seed=1 --set data.seed=0" \
  BRANCH="--set stage3.lr=1e-4" BRANCH_LABEL=stage3-lr1e-4 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
