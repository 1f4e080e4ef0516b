#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage3_lr/lease25.sh 585`, repeated until it prints "all done": stage 3's learning rate
# compared on one stage 2 (stage 2 is not deterministic on the GPU, so two conversions never share one):
#   A  the default recipe (stage 3 at 1e-4) with training seed 1, as in the twenty-fourth lease, with its 6-sample grid
#   B  from A's stage 2, stage 3 at the paper's 1e-5 (6M tokens, as A), exported and evaluated the same way
# repeat_spans_1/lease23.sh with RUNS, CONVERT_OPTIONS, BRANCH and BRANCH_LABEL overridden.
RUNS=runs/gpu_l25 CONVERT_OPTIONS="--set seed=1 --set data.seed=0" BRANCH="--set stage3.lr=1e-5" \
  BRANCH_LABEL=stage3-lr1e-5 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
