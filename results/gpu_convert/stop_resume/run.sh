#!/usr/bin/env bash
# Does a conversion stopped by `timeout --signal=INT --kill-after=10` keep the checkpoint of its last step on the GPU?
# Three leases' deadline stops in stage 2 resumed 72-99 steps back, from the periodic checkpoint (results/gpu_convert/
# README.md, "Forty-fifth lease"). On the device machine, after the carry calls, from the repository root:
# `bash results/gpu_convert/stop_resume/run.sh 585`, sent again until it prints "all done" or the lease ends.
# Runs `hypenet convert --resume` (seed 1's deterministic conversion) again and again under timeout: the first run for
# FIRST seconds (stage 1, the layer choice, stage 2's start), each later one for MIN + 0..SPREAD seconds. After each
# it writes to stops.jsonl the stage that was training, its last logged step and the checkpoints left: the stop kept
# its step when the one checkpoint is that step. Each run's log (progress bars dropped) is in logs/run-K.log.
# Everything but weights comes back in $OUT/stop_resume.tgz. RUNS, TEACHER, CORPUS, CONFIG, OPTIONS, FIRST, MIN and
# SPREAD can be replaced to try it on a CPU (TEACHER=embedded CORPUS=builtin CONFIG= OPTIONS="--preset smoke ...").
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
RUNS=${RUNS:-runs/stops}
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}
FIRST=${FIRST:-240} MIN=${MIN:-45} SPREAD=${SPREAD:-40}
read -r -a OPTIONS <<<"--set seed=1 --set data.seed=0 --set deterministic=true ${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$RUNS/out}
HALO=$RUNS/halo
mkdir -p "$RUNS/logs" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
pack() {
    tar czf "$OUT/stop_resume.tgz" -C "$RUNS" logs $(cd "$RUNS" && ls -d stops.jsonl halo/stages/*/losses.jsonl \
        halo/stages/*/done.json 2>/dev/null)
}
trap pack EXIT
if [ "$TEACHER" != embedded ] && [ ! -f "$RUNS/logs/setup.done" ]; then
    setup >>"$RUNS/logs/setup.log" 2>&1 || { cat "$RUNS/logs/setup.log"; exit 1; }
    touch "$RUNS/logs/setup.done"
fi
record() {  # record K SECONDS EXIT: the stage that trained last, its last logged step, the checkpoints left
    python3 - "$HALO" "$@" >>"$RUNS/stops.jsonl" <<'PY'
import json, sys
from pathlib import Path
halo, k, seconds, code = Path(sys.argv[1]), *map(int, sys.argv[2:5])
logs = sorted((halo / "stages").glob("*/losses.jsonl"), key=lambda p: p.stat().st_mtime)
row = {"run": k, "seconds": seconds, "exit": code, "stage": None}
if logs:
    stage = logs[-1].parent
    steps = [r["step"] for r in map(json.loads, logs[-1].read_text().splitlines()) if "loss" in r]
    left = sorted(p.name for p in (stage / "checkpoints").glob("step-*")) if (stage / "checkpoints").is_dir() else []
    row.update(stage=stage.name, done=(stage / "done.json").is_file(), last_step=steps[-1] if steps else 0,
               checkpoints=left)
    row["kept"] = row["done"] or left == [f"step-{row['last_step']:08d}"]
print(json.dumps(row))
PY
}
k=$(ls "$RUNS"/logs/run-*.log 2>/dev/null | wc -l)
while [ ! -f "$HALO/stages/export/done.json" ]; do
    left=$((DEADLINE - (SECONDS - START) - 25))
    if [ "$k" -eq 0 ]; then run_for=$FIRST; else run_for=$((MIN + RANDOM % (SPREAD + 1))); fi
    [ "$run_for" -le "$left" ] || { echo "[$((SECONDS - START))s] deadline: $run_for s do not fit; send it again"; exit 0; }
    k=$((k + 1))
    echo "[$((SECONDS - START))s] run $k: $run_for s"
    timeout --signal=INT --kill-after=10 "$run_for" "${HYPENET[@]}" convert --teacher "$TEACHER" --data "$CORPUS" \
        --out "$HALO" "${OPTIONS[@]}" --resume >"$RUNS/raw.log" 2>&1
    code=$?
    # progress bars dropped (a log line written after a bar begins on the bar's line: the bar is cut off it)
    tr '\r' '\n' <"$RUNS/raw.log" | sed -E 's/^.*(step\/s|s\/step|it\/s|s\/it)[^]]*\] *//' | grep -v '^[[:space:]]*$' \
        >"$RUNS/logs/run-$k.log"
    record "$k" "$run_for" "$code"
    tail -1 "$RUNS/stops.jsonl"
    grep -E "received|one stop|stopped by signal|resuming from|Traceback|Error" "$RUNS/logs/run-$k.log" | cut -c1-300
done
echo "[$((SECONDS - START))s] all done"
