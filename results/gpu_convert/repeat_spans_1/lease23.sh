#!/usr/bin/env bash
# The next lease's script (Next leases, item 1, in results/gpu_convert/README.md), run from the repository root as
# `bash results/gpu_convert/repeat_spans_1/lease23.sh 585`, repeated until it prints "all done". The question of
# lease22.sh, asked again with scripts/gpu_convert.sh's own branch and evaluation parts:
#   A  the default recipe with seed 2 and twice the repeated spans (data.repeat_spans=1.0), its perplexity and copy
#      eval, then the 6-sample NIAH grid on held-out haystacks, one step per length group (each fits what is left of
#      a call), merged into eval_more/hypenet-halo
#   B  from A's stage 2, stage 3 on 24M tokens (A: 6M) at A's lr 1e-4, exported and evaluated the same way, and
#      compared with A in compare_branch
# RUNS, CONVERT_OPTIONS, BRANCH and BRANCH_LABEL, when set, replace its own (default_seed1/lease24.sh: another recipe,
# the same lease; stage3_lr/lease25.sh: another branch too); so do GRID and MORE_EVAL_LENGTHS (stage2_79m/lease29.sh).
# BRANCH set and empty: no branch (stage2_8k_79m/lease30.sh).
GRID=${GRID:-"--evals niah_forced,niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"}
RUNS=${RUNS:-runs/gpu_rs1} CONVERT_OPTIONS=${CONVERT_OPTIONS:-"--set seed=2 --set data.seed=0 --set data.repeat_spans=1.0"} \
  ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  HALO_MORE_EVAL="$GRID" MORE_EVAL_LENGTHS=${MORE_EVAL_LENGTHS:-"4096,8192 16384 32768 65536"} \
  BRANCH=${BRANCH-"--set stage3.tokens=24M"} BRANCH_LABEL=${BRANCH_LABEL:-stage3-24m} \
  bash scripts/gpu_convert.sh "${1:-575}"
