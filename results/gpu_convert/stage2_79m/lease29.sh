#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage2_79m/lease29.sh 585`, repeated until it prints "all done": lease28.sh's question
# (the twenty-eighth lease lost its machine, then its time, before any evaluation), asked so that both students'
# grids fit one lease: seed 0, same documents and split,
#   A  the default recipe with stage 3 at 1e-4, its perplexity and copy eval and the 6-sample NIAH grid at 4K-64K
#   B  from A's stage 2, stage 3 at the default's 1e-5, evaluated the same way
# The grid is NIAH alone, without the answer-given diagnostic (niah_forced: about half of each part's time in the
# twenty-seventh lease), in three parts instead of four (each part's process costs ~14 s before it evaluates).
RUNS=runs/gpu_l29 CONVERT_OPTIONS="--set seed=0 --set data.seed=0 --set stage3.lr=1e-4" \
  GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
  MORE_EVAL_LENGTHS="4096,8192,16384 32768 65536" \
  BRANCH="--set stage3.lr=1e-5" BRANCH_LABEL=stage3-lr1e-5 bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
