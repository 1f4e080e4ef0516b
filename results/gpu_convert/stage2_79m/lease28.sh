#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage2_79m/lease28.sh 585`, repeated until it prints "all done": stage 3's learning rate
# again, now on the default's 79M-token stage 2, with a third training seed (seed 0, same documents and split):
#   A  the default recipe with stage 3 at 1e-4, its perplexity and copy eval and the 6-sample NIAH grid at 4K-64K (the
#      twenty-seventh lease measured 1e-4 from a 79M stage 2 at 4K-16K only)
#   B  from A's stage 2, stage 3 at the default's 1e-5, evaluated the same way as far as the lease goes
# repeat_spans_1/lease23.sh with RUNS, CONVERT_OPTIONS, BRANCH and BRANCH_LABEL overridden.
RUNS=runs/gpu_l28 CONVERT_OPTIONS="--set seed=0 --set data.seed=0 --set stage3.lr=1e-4" \
  BRANCH="--set stage3.lr=1e-5" BRANCH_LABEL=stage3-lr1e-5 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
