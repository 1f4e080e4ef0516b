#!/usr/bin/env bash
# The twentieth lease's script, run from the repository root as `bash results/gpu_convert/stage3/lease20.sh 585`
# (repeated until it prints "lease20 done"; its commands are in results/gpu_convert/README.md, "Twentieth lease").
# The nineteenth lease's plan (lease19.sh), whose results were lost with that session's checkout, in another order:
# both students inside the teacher's window (4K-8K) first, past it last.
#   A  the default recipe with seed 2 and stage 3's learning rate 1e-4, ten times the paper's: scripts/gpu_convert.sh,
#      with the 6-sample NIAH grid at 4K-8K as HALO_MORE_EVAL
#   B  from A's stage 2 (`hypenet stage3 --from`), stage 3 with four times the tokens (24M: 180 steps of 8 x 16K) at
#      the paper's 1e-5, exported and evaluated on the same grid
#   then the 6-sample grid at 16K-64K, A's before B's
set -u
D=${1:-575}; START=$SECONDS
export RUNS=runs/gpu_s3
left() { echo $((D - (SECONDS - START))); }
SEED="--set seed=2 --set data.seed=0"
GRID="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
RUNS=$RUNS CONVERT_OPTIONS="$SEED --set stage3.lr=1e-4" ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
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
  if [ "$(left)" -lt "$need" ]; then echo "[lease20] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease20] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT --kill-after=30 "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease20] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  mkdir -p $RUNS/extra/convert_b && cp $B/report.* $B/config.yaml $B/model/halo_export.json $RUNS/extra/convert_b/ 2>/dev/null
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_a eval_b 2>/dev/null
  tail -3 $RUNS/extra/$name.log
  [ $rc -eq 0 ] || exit 0
}
STAGE=(--teacher $RUNS/SmolLM2-135M-Instruct.Q4_1.gguf --data .carry/c/corpus.jsonl.xz --config configs/gpu-smollm2.yaml
       --out $B --resume $SEED --set stage3.lr=1e-5 --set stage3.tokens=24M)  # A's settings are the base (--from)
extra stage3_b 60 python3 -m hypenet.cli stage3 --from $RUNS/halo "${STAGE[@]}"
extra export_b 70 python3 -m hypenet.cli export "${STAGE[@]}"
DATA=(--ppl-source .carry/c/corpus.jsonl.xz --haystack .carry/c/corpus.jsonl.xz --no-progress)
extra niah6_b_4k_8k 90 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals niah_forced,niah $GRID \
  --niah-lengths 4096,8192 "${DATA[@]}" --out $RUNS/eval_b/niah6_4k_8k
extra ppl_b 60 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals ppl,copy --copy-samples 16 --ppl-docs 8 \
  --ppl-max-len 65536 --niah-lengths 4096,8192,16384,32768,65536 --haystack-heldout "${DATA[@]}" --out $RUNS/eval_b/ppl
extra niah6_a_long 250 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-lr1e-4 --evals niah_forced,niah \
  $GRID --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_a/niah6_long
extra niah6_b_long 250 python3 -m hypenet.cli eval $B/model --label stage3-24m --evals niah_forced,niah $GRID \
  --niah-lengths 16384,32768,65536 "${DATA[@]}" --out $RUNS/eval_b/niah6_long
echo "[lease20] lease20 done ($(left)s left)"
