#!/usr/bin/env bash
# Next leases' item 2 (results/gpu_convert/README.md): does `deterministic: true` repeat a whole conversion from its
# start, stage 1 and the layer choice included, and what does the default recipe give on seed 0 a second time?
#   ref   stage 1 and the layer choice with `--set deterministic=true` (seed 0, the default recipe)
#   then  scripts/gpu_convert.sh's conversion of the same config (its stage 1 and layer choice run again, on the same
#         machine), its perplexity and copy eval, and the 6-sample NIAH grid on held-out haystacks, 32K and 64K
#         first; no branch. Seed 0's only other run of the default recipe is the twenty-ninth lease's A.
# Its losses are the reference a later lease on another machine can run again: deterministic runs that agree repeat
# every logged loss, so the first steps of a stage 2 stopped early compare with this one's.
# Run from the repository root after the carry calls (scripts/gpu_carry.py prints them) as
# `bash results/gpu_convert/determinism/lease38.sh 585`, repeated until it prints "all done". ref's logs, losses, layer
# choice and summary.md (scripts/compare_losses.py: ref against the conversion) come back in $OUT/determinism.tgz,
# the conversion's returns in $OUT/gpu_convert.tgz.
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
# REF, RUNS, TEACHER, CORPUS, CONFIG, WHEELS, TRITON_CACHE and OPTIONS (more settings for ref's stages, e.g.
# `--preset smoke --set device=cpu`) can be replaced to try the script on a CPU.
REF=${REF:-runs/det38}
RUNS=${RUNS:-runs/gpu_d0}
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}  # (empty: none)
SETTINGS="--set seed=0 --set data.seed=0 --set deterministic=true"
read -r -a OPTIONS <<<"$SETTINGS ${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$REF/out}
mkdir -p "$REF/logs" "$OUT" "$RUNS"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
pack() {  # ref against the conversion, as far as both have run
    ln -sfn "$(realpath -m "$RUNS/halo")" "$REF/conversion"
    { echo "stage 1, ref vs the conversion's:"; python3 scripts/compare_losses.py "$REF" ref,conversion --stage stage1
      echo; echo "layer choice:"; python3 scripts/compare_losses.py "$REF" ref,conversion --stage select
    } >"$REF/summary.md" 2>&1
    cat "$REF/summary.md"
    tar czf "$OUT/determinism.tgz" -C "$REF" logs summary.md \
        $(cd "$REF" && ls -d ref/stages/*/losses.jsonl ref/stages/*/done.json 2>/dev/null)
}
run() { timed_step "$REF/logs" "$@" || { pack; exit 0; }; }  # a step of ref within the deadline (gpu_setup.sh)
# Stage 1 has never run with `deterministic: true` on the GPU: should one of its ops have no deterministic
# implementation there (the HaloError that names it, in logs/ref-stage1.log), the lease goes on without it and
# converts seed 0 once more as the default does.
undeterministic() { grep -qs "has no deterministic implementation" "$REF/logs/ref-stage1.log"; }
if [ ! -f "$REF/ref/stages/select/done.json" ] && ! undeterministic; then
    [ "$TEACHER" = embedded ] || setup || exit 1  # (the embedded teacher: a try on the CPU, nothing carried)
    run ref-stage1 "${HYPENET[@]}" stage1 --teacher "$TEACHER" --data "$CORPUS" --out "$REF/ref" "${OPTIONS[@]}" \
        --resume
    undeterministic || run ref-select "${HYPENET[@]}" select --out "$REF/ref" --resume
    [ -f "$REF/ref/stages/select/done.json" ] || undeterministic \
        || { echo "ref not finished; run the same command again"; pack; exit 0; }
fi
if undeterministic; then
    echo "stage 1 has an op without a deterministic implementation here (logs/ref-stage1.log): converting without it"
    SETTINGS="--set seed=0 --set data.seed=0"
fi
left=$((DEADLINE - (SECONDS - START) - 10))
RUNS=$RUNS TEACHER=$TEACHER CORPUS=$CORPUS WHEELS=$WHEELS TRITON_CACHE=$TRITON_CACHE CONVERT_OPTIONS="$SETTINGS" \
    BRANCH= GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
    MORE_EVAL_LENGTHS="32768 65536 4096,8192,16384" bash results/gpu_convert/repeat_spans_1/lease23.sh "$left"
pack
