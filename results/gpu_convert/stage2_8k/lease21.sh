#!/usr/bin/env bash
# The twenty-first lease's script, run from the repository root as `bash results/gpu_convert/stage2_8k/lease21.sh 585`
# (repeated until it prints "lease21 done"; its commands are in results/gpu_convert/README.md, "Twenty-first lease").
#   A  the default recipe with seed 2 (the twentieth lease's A) and stage 2 on chunks of 8K tokens, the teacher's
#      whole window (6 x 8192 per step, the same 49,152 tokens per step and 976 steps) instead of 4K:
#      scripts/gpu_convert.sh, with the 6-sample NIAH grid at 4K-8K as HALO_MORE_EVAL
#   B  from A's stage 2 (`hypenet stage3 --from`, A's settings), stage 3 at lr 3e-4 (A: 1e-4), exported and evaluated
#      on the same grid
#   then the 6-sample grid at 16K-64K, A's before B's
set -u
D=${1:-575}; START=$SECONDS
export RUNS=runs/gpu_s2_8k
left() { echo $((D - (SECONDS - START))); }
SEED="--set seed=2 --set data.seed=0"
GRID="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
RUNS=$RUNS CONVERT_OPTIONS="$SEED --set stage2.seq_len=8192 --set stage2.batch_size=6 --set stage2.micro_batch_size=6" \
  ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  HALO_MORE_EVAL="--evals niah_forced,niah $GRID --niah-lengths 4096,8192" \
  bash scripts/gpu_convert.sh "$D"
grep -q "all done" $RUNS/logs/summary.log || exit 0

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true PYTHONPATH=/tmp/site:$PWD/src
B=$RUNS/stage3_3e-4
mkdir -p $RUNS/extra $RUNS/done
extra() {  # extra NAME NEEDS_SECONDS COMMAND...: once, interrupted (SIGINT: a stage checkpoints) at the deadline
  local name=$1 need=$2; shift 2
  [ -f $RUNS/done/x_$name ] && return 0
  if [ "$(left)" -lt "$need" ]; then echo "[lease21] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease21] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT --kill-after=30 "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease21] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  mkdir -p $RUNS/extra/convert_b && cp $B/report.* $B/config.yaml $B/model/halo_export.json $RUNS/extra/convert_b/ 2>/dev/null
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_a eval_b 2>/dev/null
  tail -3 $RUNS/extra/$name.log
  [ $rc -eq 0 ] || exit 0
}
# no --config: A's saved settings are the base (--from), so stage 2's 8K chunks stay what B's stage 3 starts from
STAGE=(--teacher $RUNS/SmolLM2-135M-Instruct.Q4_1.gguf --data .carry/c/corpus.jsonl.xz --out $B --resume
       --set stage3.lr=3e-4)
extra stage3_b 60 python3 -m hypenet.cli stage3 --from $RUNS/halo "${STAGE[@]}"
extra export_b 70 python3 -m hypenet.cli export "${STAGE[@]}"
DATA=(--ppl-source .carry/c/corpus.jsonl.xz --haystack .carry/c/corpus.jsonl.xz --no-progress)
extra niah6_b_4k_8k 90 python3 -m hypenet.cli eval $B/model --label stage3-3e-4 --evals niah_forced,niah $GRID \
  --niah-lengths 4096,8192 "${DATA[@]}" --out $RUNS/eval_b/niah6_4k_8k
extra ppl_b 60 python3 -m hypenet.cli eval $B/model --label stage3-3e-4 --evals ppl,copy --copy-samples 16 --ppl-docs 8 \
  --ppl-max-len 65536 --niah-lengths 4096,8192,16384,32768,65536 --haystack-heldout "${DATA[@]}" --out $RUNS/eval_b/ppl
extra niah6_a_long 250 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-s2-8k --evals niah_forced,niah \
  $GRID --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_a/niah6_long
extra niah6_b_long 250 python3 -m hypenet.cli eval $B/model --label stage3-3e-4 --evals niah_forced,niah $GRID \
  --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_b/niah6_long
echo "[lease21] lease21 done ($(left)s left)"
