#!/usr/bin/env bash
# Next leases' item 2 (results/gpu_convert/README.md): all of the training documents' wrapped paragraphs joined
# (data.unwrap_paragraphs=1; the default joins half), on the default recipe otherwise, seed 2 on the same documents
# and split as the thirty-second, thirty-fifth (A) and thirty-sixth leases' runs of the default (201, 220 and 243 of
# 450 NIAH answers right): one draw of the change, read against that spread. Run from the repository root after the
# carry calls as `bash results/gpu_convert/unwrap1_79m/lease37.sh 585`, repeated until it prints "all done": the
# conversion, its perplexity and copy eval, then the 6-sample NIAH grid on held-out haystacks one length group per
# step (32K and 64K first), merged into eval_more/hypenet-halo. No branch.
RUNS=runs/gpu_u1 CONVERT_OPTIONS="--set seed=2 --set data.seed=0 --set data.unwrap_paragraphs=1" BRANCH= \
  GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
  MORE_EVAL_LENGTHS="32768 65536 4096,8192,16384" bash results/gpu_convert/repeat_spans_1/lease23.sh "$@"
