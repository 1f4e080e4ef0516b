#!/usr/bin/env bash
# The thirty-third lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository
# root as `bash results/gpu_convert/lr_pair_79m/lease33.sh 585`, repeated until it prints "all done": the first pair
# of stage-3 learning rates from one stage 2 measured at 32K-64K, seed 2 on the same documents and split,
#   A  the default recipe (stage 2 on 4K chunks, 79M tokens; stage 3 at 1e-4), its perplexity and copy eval
#   B  from A's stage 2, stage 3 at 1e-5 (the paper's rate)
# then the 6-sample NIAH grid for both, one length group at a time for A and then B (BRANCH_PAIRED=1), 32K and 64K
# first: the twenty-seventh and twenty-ninth leases measured such pairs at 4K-16K only. B's perplexity and copy eval
# come after the grid.
RUNS=runs/gpu_l33 CONVERT_OPTIONS="--set seed=2 --set data.seed=0" \
  GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
  MORE_EVAL_LENGTHS="32768 65536 4096,8192,16384" BRANCH_PAIRED=1 \
  BRANCH="--set stage3.lr=1e-5" BRANCH_LABEL=stage3-lr1e-5 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
