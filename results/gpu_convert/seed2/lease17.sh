#!/usr/bin/env bash
# The seventeenth lease's script, run from the repository root as `bash results/gpu_convert/seed2/lease17.sh 575`
# (its commands are in results/gpu_convert/README.md, "Seventeenth lease"). The default recipe with a third training
# seed and the same held-out split (seed=2, data.seed=0: docs/DATA.md), evaluated as the sixteenth lease's student;
# then where Single-3's first answer token goes: the stage-2 and stage-3 models (no logit scaling) and the export,
# NIAH with the answer given in both forms (' {value}' and ': {value}') and generated, at 4K-8K.
set -u
D=${1:-575}; START=$SECONDS
export RUNS=runs/gpu_seed2
left() { echo $((D - (SECONDS - START))); }
RUNS=$RUNS CONVERT_OPTIONS="--set seed=2 --set data.seed=0" ABLATIONS=0 TRAIN_SPEED=0 NEEDLE_ATTENTION=0 \
  TEACHER_EVAL=results/gpu_convert/manual_layers_heldout/eval/teacher-yarn \
  EVAL_OPTIONS="--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536 --haystack-heldout --evals ppl,copy --copy-samples 16" \
  bash scripts/gpu_convert.sh "$D"
grep -q "all done" $RUNS/logs/summary.log || exit 0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD/src
mkdir -p $RUNS/extra $RUNS/done
extra() {  # extra NAME NEEDS_SECONDS COMMAND...
  local name=$1 need=$2; shift 2
  [ -f $RUNS/done/x_$name ] && return 0
  if [ "$(left)" -lt "$need" ]; then echo "[lease17] $(left)s left: $name (needs ~${need}s) waits for the next call"; exit 0; fi
  echo "[lease17] start $name ($(left)s left)"; local b=$SECONDS
  timeout --signal=INT "$(left)" "$@" >$RUNS/extra/$name.log 2>&1; local rc=$?
  echo "[lease17] $name exit $rc in $((SECONDS - b))s" | tee -a $RUNS/extra/summary.log
  [ $rc -eq 0 ] && echo $((SECONDS - b)) >$RUNS/done/x_$name
  tar czf "$OUT/extra.tgz" -C $RUNS extra eval_6_samples forced_colon 2>/dev/null
  tail -3 $RUNS/extra/$name.log
}
GRID=(--niah-lengths 4096,8192,16384,32768,65536 --niah-samples 6 --haystack .carry/c/corpus.jsonl.xz --haystack-heldout
      --batch-size 16 --max-batch-tokens 524288 --no-progress)
extra niah6 420 python3 -m hypenet.cli eval $RUNS/halo/model --label hypenet-seed2 --evals niah_forced,niah "${GRID[@]}" \
  --out $RUNS/eval_6_samples/hypenet-seed2
# the models before the export: it adds only HyPE's logit scaling (halo_export.json), which they lack
for stage in stage2 stage3; do
  cp $RUNS/halo/model/tokenizer* $RUNS/halo/stages/$stage/model/
  extra "$stage" 150 python3 -m hypenet.cli eval $RUNS/halo/stages/$stage/model --label "$stage-seed2" \
    --evals niah_forced,niah --tasks single_2,single_3 "${GRID[@]}" --niah-lengths 4096,8192 \
    --out $RUNS/eval_6_samples/$stage-seed2
done
# the needle's own answer form, a colon first, as the teacher writes it
for model in halo/model halo/stages/stage3/model halo/stages/stage2/model; do
  name=$(basename "$(dirname "$model")"); [ "$model" = halo/model ] && name=export
  extra "colon_$name" 90 python3 -m hypenet.cli eval $RUNS/$model --label "$name-seed2" --evals niah_forced \
    --forced-answer ': {value}' --tasks single_2,single_3 "${GRID[@]}" --niah-lengths 4096,8192 \
    --out $RUNS/forced_colon/$name-seed2
done
echo "[lease17] extras done ($(left)s left)"
