#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/stage2_8k_79m/lease30.sh 585`, repeated until it prints "all done": the default recipe
# (79M stage-2 tokens, stage 3 at 1e-4) with stage 2 on the teacher's whole 8K window instead of 4K-token chunks,
# the same tokens per step (6 x 8192) and as many repeated spans per token as at 4K (data.repeat_spans=1.0: one per
# 8K chunk, as one in two 4K chunks at the default's 0.5), seed 0 on the same documents and split: against the
# twenty-ninth lease's A (stage2_79m/lease29/), the default with the same seed. Its perplexity and copy eval, then
# the 6-sample NIAH grid alone in three parts, as lease29.sh; no stage-3 branch.
RUNS=runs/gpu_l30 CONVERT_OPTIONS="--set seed=0 --set data.seed=0 --set stage2.seq_len=8192 --set stage2.batch_size=6 --set stage2.micro_batch_size=6 --set data.repeat_spans=1.0" \
  GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
  MORE_EVAL_LENGTHS="4096,8192,16384 32768 65536" \
  BRANCH="" bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
