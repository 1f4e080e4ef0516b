#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/seed2_79m/lease31.sh 585`, repeated until it prints "all done": the default recipe's
# second full-grid seed and the first pair of stage-3 learning rates measured at 32K-64K, seed 2 on the same
# documents and split,
#   A  the default recipe (stage 2 on 4K chunks, 79M tokens; stage 3 at 1e-4), its perplexity and copy eval and the
#      6-sample NIAH grid at 4K-64K in three parts, as lease29.sh
#   B  from A's stage 2, stage 3 at 1e-5, evaluated the same way as far as the lease goes
# Against the twenty-sixth lease's student (seed 2, stage 3 at 1e-5, its own stage 2).
RUNS=runs/gpu_l31 CONVERT_OPTIONS="--set seed=2 --set data.seed=0" \
  GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
  MORE_EVAL_LENGTHS="4096,8192,16384 32768 65536" \
  BRANCH="--set stage3.lr=1e-5" BRANCH_LABEL=stage3-lr1e-5 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
