#!/usr/bin/env bash
# The fifteenth lease's script, run from the repository root as `bash results/gpu_convert/repeat_spans/lease15.sh 580`
# (it ran as `bash lease15.sh`, from the root; its commands are in results/gpu_convert/README.md, "Fifteenth lease").
set -u
D=${1:-565}; START=$SECONDS
export RUNS=runs/gpu_repeat
left() { echo $((D - (SECONDS - START))); }
RUNS=$RUNS CONVERT_OPTIONS="--set data.repeat_spans=0.5" ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  bash scripts/gpu_convert.sh "$D"
grep -q "all done" $RUNS/logs/summary.log || exit 0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD/src
mkdir -p $RUNS/extra $RUNS/done
extra() {  # extra NAME NEEDS_SECONDS COMMAND...
  local name=$1 need=$2; shift 2
  [ -f $RUNS/done/x_$name ] && return 0
  if [ "$(left)" -lt "$need" ]; then echo "[lease15] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease15] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease15] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_6_samples copy_eval 2>/dev/null
  tail -3 $RUNS/extra/$name.log
}
extra niah6 300 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-repeat --evals niah \
  --niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack .carry/c/corpus.jsonl.xz --haystack-heldout \
  --batch-size 16 --max-batch-tokens 524288 --no-progress --out $RUNS/eval_6_samples/hypenet-repeat
extra copy_teacher 90 python3 -m hypenet.cli eval $RUNS/SmolLM2-135M-Instruct.Q4_1.gguf --label teacher --evals copy \
  --copy-lengths 4096,8192,16384,32768,65536 --copy-samples 16 --ppl-source .carry/c/corpus.jsonl.xz --no-progress \
  --out $RUNS/copy_eval/teacher
[ -d /tmp/site-ds ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-ds .whl-ds/*.whl
extra zero3 300 env PYTHONPATH=/tmp/site-ds:$PYTHONPATH python3 -m accelerate.commands.launch \
  --config_file configs/accelerate-zero3.yaml --num_processes 1 scripts/gpu_smoke.py --out /tmp/zero3
echo "[lease15] extras done ($(left)s left)"
