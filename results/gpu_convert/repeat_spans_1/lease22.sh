#!/usr/bin/env bash
# The twenty-second lease's script, run from the repository root as `bash results/gpu_convert/repeat_spans_1/lease22.sh 585`
# (repeated until it prints "lease22 done"; its commands are in results/gpu_convert/README.md, "Twenty-second lease").
# The twenty-first lease's script (stage2_8k/lease21.sh) with other options and A's long grid before B:
#   A  the default recipe with seed 2 (the twentieth lease's A) and twice the repeated spans (data.repeat_spans=1.0:
#      a span written again in every 4K-token chunk of stages 2-3 instead of every other one):
#      scripts/gpu_convert.sh, with the 6-sample NIAH grid at 4K-8K as HALO_MORE_EVAL
#   B  from A's stage 2 (`hypenet stage3 --from`, A's settings), stage 3 on 24M tokens (A: 6M) at A's lr 1e-4,
#      exported and evaluated on the same grid
#   A's 6-sample grid at 16K-64K runs before B (A is the lease's question), B's last
set -u
D=${1:-575}; START=$SECONDS
export RUNS=runs/gpu_rs1
left() { echo $((D - (SECONDS - START))); }
SEED="--set seed=2 --set data.seed=0"
GRID="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
RUNS=$RUNS CONVERT_OPTIONS="$SEED --set data.repeat_spans=1.0" \
  ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  HALO_MORE_EVAL="--evals niah_forced,niah $GRID --niah-lengths 4096,8192" \
  bash scripts/gpu_convert.sh "$D"
grep -q "all done" $RUNS/logs/summary.log || exit 0

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true PYTHONPATH=/tmp/site:$PWD/src
B=$RUNS/stage3_24m
mkdir -p $RUNS/extra $RUNS/done
extra() {  # extra NAME NEEDS_SECONDS COMMAND...: once, interrupted (SIGINT: a stage checkpoints) at the deadline
  local name=$1 need=$2; shift 2
  [ -f $RUNS/done/x_$name ] && return 0
  if [ "$(left)" -lt "$need" ]; then echo "[lease22] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease22] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT --kill-after=30 "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease22] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  mkdir -p $RUNS/extra/convert_b && cp $B/report.* $B/config.yaml $B/model/halo_export.json $RUNS/extra/convert_b/ 2>/dev/null
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_a eval_b 2>/dev/null
  tail -3 $RUNS/extra/$name.log
  [ $rc -eq 0 ] || exit 0
}
# no --config: A's saved settings are the base (--from), so A's repeated spans stay what B's stage 3 trains on
STAGE=(--teacher $RUNS/SmolLM2-135M-Instruct.Q4_1.gguf --data .carry/c/corpus.jsonl.xz --out $B --resume
       --set stage3.tokens=24M)
extra stage3_b 60 python3 -m hypenet.cli stage3 --from $RUNS/halo "${STAGE[@]}"
extra export_b 70 python3 -m hypenet.cli export "${STAGE[@]}"
DATA=(--ppl-source .carry/c/corpus.jsonl.xz --haystack .carry/c/corpus.jsonl.xz --no-progress)
extra niah6_a_long 250 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-rs1 --evals niah_forced,niah \
  $GRID --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_a/niah6_long
extra niah6_b_4k_8k 90 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals niah_forced,niah $GRID \
  --niah-lengths 4096,8192 "${DATA[@]}" --out $RUNS/eval_b/niah6_4k_8k
extra ppl_b 60 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals ppl,copy --copy-samples 16 --ppl-docs 8 \
  --ppl-max-len 65536 --niah-lengths 4096,8192,16384,32768,65536 --haystack-heldout "${DATA[@]}" --out $RUNS/eval_b/ppl
extra niah6_b_long 250 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals niah_forced,niah $GRID \
  --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_b/niah6_long
echo "[lease22] lease22 done ($(left)s left)"
