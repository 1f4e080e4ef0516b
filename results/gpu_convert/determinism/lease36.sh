#!/usr/bin/env bash
# Next leases' item on determinism (results/gpu_convert/README.md), one call after the carry calls (wheels, corpus,
# the teacher's five parts, the Triton cache): `bash results/gpu_convert/determinism/lease36.sh 560`. Do two runs of
# one config and seed repeat their stage-2 losses with `deterministic: true`, and how far apart are two without it?
# Stage 1 and the layer choice once (the default recipe, seed 2, as the thirty-fifth lease), then stage 2 from them
# four times on 100 steps (4,915,200 tokens: its schedule is shorter than the recipe's 1,607 steps, the same in all
# four): det-1, det-2 with `--set deterministic=true`, then plain-1, plain-2 without. Each run's losses.jsonl and
# a table of where the pairs first differ come back in $OUT/determinism.tgz.
set -uo pipefail
DEADLINE=${1:-560}
START=$SECONDS
# RUNS, TEACHER, CORPUS, CONFIG, WHEELS, TRITON_CACHE, STAGE2_TOKENS and OPTIONS (more settings for stage 1, e.g.
# `--preset smoke --set device=cpu`) can be replaced to try the script on a CPU.
RUNS=${RUNS:-runs/det36}
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}  # (empty: none)
STAGE2_TOKENS=${STAGE2_TOKENS:-4915200}
read -r -a OPTIONS <<<"${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$RUNS/out}
mkdir -p "$RUNS/logs" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
[ "$TEACHER" = embedded ] || setup || exit 1  # (the embedded teacher: a try on the CPU, nothing carried)
summarize() {  # where the pairs' stage-2 losses first differ
    python3 scripts/compare_losses.py "$RUNS" det-1,det-2 plain-1,plain-2 det-1,plain-1 \
        >"$RUNS/summary.md" && cat "$RUNS/summary.md"
}
pack() {
    summarize
    echo "[$((SECONDS - START))s] packing"
    tar czf "$OUT/determinism.tgz" -C "$RUNS" logs $(cd "$RUNS" && ls -d */stages/*/losses.jsonl summary.md 2>/dev/null)
}
run() { timed_step "$RUNS/logs" "$@" || { pack; exit 0; }; }  # a step within the deadline (gpu_setup.sh)
run stage1 "${HYPENET[@]}" stage1 --teacher "$TEACHER" --data "$CORPUS" \
    --out "$RUNS/base" --set seed=2 --set data.seed=0 "${OPTIONS[@]}" --resume
run select "${HYPENET[@]}" select --out "$RUNS/base" --resume
for name in det-1 det-2 plain-1 plain-2; do
    options=(--set stage2.tokens=$STAGE2_TOKENS)
    [ "${name%-*}" = det ] && options+=(--set deterministic=true)
    run "$name" "${HYPENET[@]}" stage2 --from "$RUNS/base" --out "$RUNS/$name" "${options[@]}" --overwrite
done
pack
