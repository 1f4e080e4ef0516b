#!/usr/bin/env bash
# A layer selection stopped part-way on the GPU goes on from the layers it scored, and the conversion's estimate
# (which now counts the selection) set against a whole conversion's times. On the device machine, after the carry
# calls (scripts/gpu_carry.py prints them), from the repository root: `bash results/gpu_convert/select_resume/run.sh 585`.
#   1. `hypenet convert` of seed 1's deterministic conversion (the fortieth and forty-fourth leases' stage 1 and layer
#      choice, equal to the last digit in both), stopped by SIGTERM once STOP_AT layers of the selection are scored
#      (stages/select/scored_layers.json); its log holds the estimate's lines from stage 1 on.
#   2. `hypenet select --resume`: it must say it resumes at layer STOP_AT and score the rest alone.
#   3. compare.json: the resumed selection's layers, scores, recall and commonsense against the fortieth lease's
#      (REFERENCE), float for float. REFERENCE=own (with a shorter stage 1, e.g. OPTIONS="--set stage1.tokens=256K"
#      when device time is short) runs an uninterrupted `hypenet select --from` the same stage 1 and compares with it.
# Everything but weights comes back in $OUT/select_resume.tgz, Triton's compiled kernels in $OUT/triton_cache.txz.
# RUNS, REFERENCE, TEACHER, CORPUS, CONFIG, OPTIONS and STOP_AT can be replaced to try it on a CPU (TEACHER=embedded
# CORPUS=builtin CONFIG= OPTIONS="--preset smoke ...").
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
RUNS=${RUNS:-runs/sel}
REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease40/halo/stages/select/done.json}
STOP_AT=${STOP_AT:-12}
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}
read -r -a OPTIONS <<<"--set seed=1 --set data.seed=0 --set deterministic=true ${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$RUNS/out}
HALO=$RUNS/halo PARTIAL=$RUNS/halo/stages/select/scored_layers.json
mkdir -p "$RUNS/logs" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
pack() {
    tar czf "$OUT/select_resume.tgz" -C "$RUNS" logs $(cd "$RUNS" && ls -d compare.json halo/config.yaml \
        halo/stages/*/done.json halo/stages/*/losses.jsonl halo/stages/*/wall_time.json ref/stages/select/done.json \
        2>/dev/null)
}
trap pack EXIT
[ "$TEACHER" = embedded ] || setup >"$RUNS/logs/setup.log" 2>&1 || { cat "$RUNS/logs/setup.log"; exit 1; }
ARGS=(--teacher "$TEACHER" --data "$CORPUS" --out "$HALO" "${OPTIONS[@]}" --resume)

if [ ! -f "$HALO/stages/select/done.json" ]; then
    echo "[$((SECONDS - START))s] convert, stopped at layer $STOP_AT of the selection"
    "${HYPENET[@]}" convert "${ARGS[@]}" >"$RUNS/logs/convert_stopped.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        scored=$(python3 -c "import json, sys; print(len(json.load(open(sys.argv[1]))['recall']))" "$PARTIAL" 2>/dev/null)
        if [ "${scored:-0}" -ge "$STOP_AT" ]; then kill -TERM "$pid"; echo "  SIGTERM with $scored layers scored"; break; fi
        if [ $((SECONDS - START)) -gt $((DEADLINE - 120)) ]; then kill -INT "$pid"; echo "  deadline: stopped"; break; fi
        sleep 0.2
    done
    wait "$pid"; echo "  convert exit $?"
    # stage 1's and the selection's compiled kernels, for results/gpu_convert/triton_cache.txz (gpu_setup.sh, ~14 s)
    pack_triton_cache "$OUT"
    grep -E "conversion: about|layer selection: (interrupted|resuming)|interrupted" "$RUNS/logs/convert_stopped.log" | cut -c1-400
    [ -f "$PARTIAL" ] || { echo "no scored layers were kept: run the same command again"; exit 0; }
    echo "[$((SECONDS - START))s] select --resume"
    timeout --signal=INT $((DEADLINE - (SECONDS - START) - 20)) "${HYPENET[@]}" select "${ARGS[@]}" \
        >"$RUNS/logs/select_resumed.log" 2>&1
    echo "  select exit $?"
    grep -E "layer selection: |HALO keeps" "$RUNS/logs/select_resumed.log" | cut -c1-400
fi
if [ "$REFERENCE" = own ]; then  # an uninterrupted selection on the same stage 1, in another folder
    REFERENCE=$RUNS/ref/stages/select/done.json
    if [ ! -f "$REFERENCE" ]; then
        echo "[$((SECONDS - START))s] select --from, uninterrupted"
        timeout --signal=INT $((DEADLINE - (SECONDS - START) - 20)) "${HYPENET[@]}" select --teacher "$TEACHER" \
            --data "$CORPUS" --out "$RUNS/ref" "${OPTIONS[@]}" --from "$HALO" >"$RUNS/logs/select_reference.log" 2>&1
        echo "  select exit $?"
    fi
fi
python3 - "$HALO/stages/select/done.json" "$REFERENCE" "$RUNS/compare.json" "$PARTIAL" <<'PY'
import json, os, sys
done, reference = (json.load(open(p)) for p in sys.argv[1:3])
keys = ("attention_layers", "scores", "recall", "commonsense", "baseline")
result = {k: done.get(k) == reference.get(k) for k in keys}
result["partial_file_left"] = os.path.exists(sys.argv[4])
print(json.dumps(result))
json.dump(result, open(sys.argv[3], "w"), indent=1)
PY
echo "[$((SECONDS - START))s] all done"
