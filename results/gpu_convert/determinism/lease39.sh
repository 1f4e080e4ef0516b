#!/usr/bin/env bash
# Next leases' item 2 (results/gpu_convert/README.md):
#   check  do deterministic runs repeat on another machine? Stage 1 and the layer choice with `--set
#          deterministic=true` (seed 0, the default recipe), then stage 2 from them on the recipe's full schedule for
#          CHECK_SECONDS (default 100, its load and first step included), stopped by SIGINT; every logged number is
#          compared with the thirty-eighth lease's (REFERENCE: its ref's stage 1 and layer choice, its conversion's
#          stage 2) in summary.md
#   then   the default's conversion with seed 1 and `deterministic: true` (scripts/gpu_convert.sh through
#          repeat_spans_1/lease23.sh, no branch), its perplexity and copy eval, and the 6-sample NIAH grid on held-out
#          haystacks, 32K and 64K first: seed 1 measured to 64K with the default recipe (the twenty-seventh lease's B,
#          the only such run of seed 1, stopped at 16K)
#   last   with the grid merged and time left in the call (140 s each), that student's 64K grid again at other
#          logit-scaling bases (BASES, default "off 32000": `hypenet eval --logit-scaling-base`), each beside the
#          export's own choice: how much HyPE's scaling and its base decide retrieval at 8x the teacher's window
# Run from the repository root after the carry calls (scripts/gpu_carry.py prints them) as
# `bash results/gpu_convert/determinism/lease39.sh 585`, repeated until it prints "all done". The check's logs,
# losses, layer choice and summary.md come back in $OUT/determinism.tgz, the conversion's in $OUT/gpu_convert.tgz.
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
# CHECK, RUNS, REFERENCE, TEACHER, CORPUS, CONFIG, WHEELS, TRITON_CACHE, CHECK_SECONDS and OPTIONS (more settings for
# the check's stages, e.g. `--set device=cpu`) can be replaced to try the script on a CPU.
CHECK=${CHECK:-runs/det39}
RUNS=${RUNS:-runs/gpu_d1}
REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease38}
CHECK_SECONDS=${CHECK_SECONDS:-100}
read -r -a BASES <<<"${BASES:-off 32000}"
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}  # (empty: none)
read -r -a OPTIONS <<<"--set seed=0 --set data.seed=0 --set deterministic=true ${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$CHECK/out}
mkdir -p "$CHECK/logs" "$OUT" "$RUNS"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
# compare_losses.py reads RUNS/NAME/stages/STAGE: the reference's and this machine's stages side by side
side() {  # side NAME STAGE1_AND_SELECT_RUN STAGE2_RUN
    mkdir -p "$CHECK/compare/$1/stages"
    for stage in stage1 select; do ln -sfn "$(realpath -m "$2/stages/$stage")" "$CHECK/compare/$1/stages/$stage"; done
    ln -sfn "$(realpath -m "$3/stages/stage2")" "$CHECK/compare/$1/stages/stage2"
}
pack() {
    side reference "$REFERENCE/ref" "$REFERENCE/replay/conversion"
    side here "$CHECK/ref" "$CHECK/stage2"
    for stage in stage1 select stage2; do
        echo "$stage, the thirty-eighth lease's (REFERENCE) vs this machine's:"
        python3 scripts/compare_losses.py "$CHECK/compare" reference,here --stage "$stage"; echo
    done >"$CHECK/summary.md" 2>&1
    cat "$CHECK/summary.md"
    tar czf "$OUT/determinism.tgz" -C "$CHECK" logs summary.md \
        $(cd "$CHECK" && ls -d {ref,stage2}/stages/*/losses.jsonl ref/stages/*/done.json bases 2>/dev/null)
}
run() { timed_step "$CHECK/logs" "$@" || { pack; exit 0; }; }  # a step of the check within the deadline
if [ ! -f "$CHECK/checked" ]; then
    [ "$TEACHER" = embedded ] || setup || exit 1  # (the embedded teacher: a try on the CPU, nothing carried)
    run stage1 "${HYPENET[@]}" stage1 --teacher "$TEACHER" --data "$CORPUS" --out "$CHECK/ref" "${OPTIONS[@]}" --resume
    run select "${HYPENET[@]}" select --out "$CHECK/ref" --resume
    [ -f "$CHECK/ref/stages/select/done.json" ] || { echo "check not finished; run the same command again"; pack; exit 0; }
    echo "[$((SECONDS - START))s] stage2 for ${CHECK_SECONDS}s"
    timeout --signal=INT --kill-after=10 "$CHECK_SECONDS" "${HYPENET[@]}" stage2 --from "$CHECK/ref" \
        --out "$CHECK/stage2" --set deterministic=true --overwrite >"$CHECK/logs/stage2.log" 2>&1
    tail -2 "$CHECK/logs/stage2.log"
    touch "$CHECK/checked"
    pack
fi
left=$((DEADLINE - (SECONDS - START) - 10))
[ -f "$RUNS/done/merge_more_halo" ] || RUNS=$RUNS TEACHER=$TEACHER CORPUS=$CORPUS WHEELS=$WHEELS TRITON_CACHE=$TRITON_CACHE \
    CONVERT_OPTIONS="--set seed=1 --set data.seed=0 --set deterministic=true" BRANCH= \
    GRID="--evals niah --niah-samples 6 --haystack-heldout --batch-size 16 --max-batch-tokens 524288" \
    MORE_EVAL_LENGTHS="32768 65536 4096,8192,16384" bash results/gpu_convert/repeat_spans_1/lease23.sh "$left"
if [ -f "$RUNS/done/merge_more_halo" ]; then  # the grid is merged: 64K at other bases while a call has time
    for base in "${BASES[@]}"; do
        [ -f "$CHECK/bases/$base/results.json" ] && continue
        [ $((DEADLINE - (SECONDS - START))) -ge 140 ] || { echo "no time left for base $base"; break; }
        run "base-$base" "${HYPENET[@]}" eval "$RUNS/halo/model" --logit-scaling-base "$base" --label "base $base" \
            --out "$CHECK/bases/$base" --resume --evals niah --niah-samples 6 --niah-lengths 65536 --haystack-heldout \
            --haystack "$CORPUS" --batch-size 16 --max-batch-tokens 524288 --no-progress
    done
fi
pack
