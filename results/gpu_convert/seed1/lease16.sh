#!/usr/bin/env bash
# The sixteenth lease's script, run from the repository root as `bash results/gpu_convert/seed1/lease16.sh 580`
# (its commands are in results/gpu_convert/README.md, "Sixteenth lease"). The default recipe again with another
# training seed and the same held-out split (seed=1, data.seed=0: docs/DATA.md), evaluated as the fifteenth lease's
# student, plus NIAH with the answer given (--evals niah_forced) for the student and the teacher.
set -u
D=${1:-565}; START=$SECONDS
export RUNS=runs/gpu_seed1
left() { echo $((D - (SECONDS - START))); }
RUNS=$RUNS CONVERT_OPTIONS="--set seed=1 --set data.seed=0" ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  bash scripts/gpu_convert.sh "$D"
grep -q "all done" $RUNS/logs/summary.log || exit 0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD/src
mkdir -p $RUNS/extra $RUNS/done
extra() {  # extra NAME NEEDS_SECONDS COMMAND...
  local name=$1 need=$2; shift 2
  [ -f $RUNS/done/x_$name ] && return 0
  if [ "$(left)" -lt "$need" ]; then echo "[lease16] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease16] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease16] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_6_samples 2>/dev/null
  tail -3 $RUNS/extra/$name.log
}
GRID=(--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack .carry/c/corpus.jsonl.xz --haystack-heldout
      --batch-size 16 --max-batch-tokens 524288 --no-progress)
# the teacher's short step first: it used the time left after the conversion in the lease's fourth call
extra forced_teacher 100 python3 -m hypenet.cli eval $RUNS/SmolLM2-135M-Instruct.Q4_1.gguf --label teacher \
  --evals niah_forced "${GRID[@]}" --niah-lengths 4096,8192 --out $RUNS/eval_6_samples/teacher
extra niah6 420 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-seed1 --evals niah_forced,niah "${GRID[@]}" \
  --out $RUNS/eval_6_samples/hypenet-seed1
echo "[lease16] extras done ($(left)s left)"
