#!/usr/bin/env bash
# Next leases' items 1 and 2 (results/gpu_convert/README.md), one conversion serving both:
#   convert  the thirty-ninth lease's conversion again (the default recipe, seed 1, `deterministic: true`) on the
#            machine this lease gets; summary.md compares its report.json with the 39th's (REFERENCE) by
#            `scripts/compare_losses.py --reports`: every stage's logged losses, the layer choice, the export's
#            long-context loss per logit-scaling base and the base it chose. Does a whole deterministic conversion
#            repeat in another lease? (The setup log now records the GPU's UUID; the 39th's did not.)
#   grids    that student's 6-sample NIAH grid on held-out haystacks at other logit-scaling bases (GRIDS, each
#            BASE:LENGTHS, BASE a number or `export`, the export's own choice), 8000 at 64K first: in the 39th the
#            export chose 16000 and got 29 of 90 answers right at 64K, 32000 15 and no scaling 6 (same weights);
#            across the default's six runs, those whose export chose 8000 got Single-1 at 64K 81 of 90, the two that
#            chose 16000 42 of 60. Is 8000 better on one student, and what does it cost at 4K-32K?
# Run from the repository root after the carry calls (scripts/gpu_carry.py prints them) as
# `bash results/gpu_convert/determinism/lease40.sh 585`, repeated until it prints "all done" (an extra that the deadline
# stopped says "extras not finished"). Everything comes back in
# $OUT/lease40.tgz (logs, summary.md, the conversion's report and per-step losses, bases/), Triton's kernel cache in
# $OUT/triton_cache.txz.
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
# RUNS, REFERENCE, TEACHER, CORPUS, CONFIG, WHEELS, TRITON_CACHE, GRIDS, GRID_OPTIONS and OPTIONS (more settings for
# the conversion, e.g. `--set device=cpu`) can be replaced to try the script on a CPU.
# EXTRAS (none unless set; lease41.sh and lease42.sh set all three): short checks after the grids, each only when
# time is left, into $RUNS/extras (Next leases, items 6-8): `ruler` RULER's multi-key, multi-value and multi-query
# NIAH on the student and the teacher (RULER_WHO to run one of them; RULER_LENGTHS; RULER_SAMPLES per cell, 2
# unless set); `assisted`
# prompt-lookup decoding against greedy through fla (scripts/assisted_check.py); `oom` bench-train's stage 2 at
# OOM_SHAPE with the micro batch unset, which must halve it until a step fits (OOM_OPTIONS for the device and steps);
# `ppl` the student's perplexity per position bucket and copy eval at its export's base, with the settings of the
# default recipe's evaluations (8 held-out documents of 64K, 16 copy samples per length; PPL_OPTIONS to replace them);
# `copies` the student on the copies of the made-up values in its own stage-2 and stage-3 data
# (scripts/teacher_copies.py --model; COPIES_STAGES, COPIES_ROWS (200), COPIES_DEVICE (cuda)): does it begin a copy
# more often than the teacher it learnt from?
# GRIDS=" " (a space) runs no grid.
RUNS=${RUNS:-runs/gpu_d1}
REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease39/results/convert_halo/report.json}
read -r -a GRIDS <<<"${GRIDS:-8000:65536 export:65536 8000:4096,8192,16384 8000:32768 4000:65536 2000:65536}"
read -r -a GRID_ARGS <<<"${GRID_OPTIONS:---niah-samples 6 --batch-size 16 --max-batch-tokens 524288}"
CONFIG=${CONFIG-configs/gpu-smollm2.yaml}  # (empty: none)
read -r -a OPTIONS <<<"--set seed=1 --set data.seed=0 --set deterministic=true ${OPTIONS:-}"
[ -z "$CONFIG" ] || OPTIONS=(--config "$CONFIG" "${OPTIONS[@]}")
HYPENET=(python3 -m hypenet.cli)
OUT=${OUT:-$RUNS/out}
mkdir -p "$RUNS/logs" "$RUNS/bases" "$RUNS/extras" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh

pack() {  # what comes back: everything but the weights; the Triton cache when kernels were compiled since the last
    local halo=$RUNS/halo
    if [ -f "$halo/report.json" ]; then
        python3 scripts/compare_losses.py --reports "$REFERENCE,$halo/report.json" >"$RUNS/summary.md" 2>&1
        cat "$RUNS/summary.md"
    fi
    tar czf "$OUT/lease40.tgz" -C "$RUNS" logs bases extras $(cd "$RUNS" && ls -d summary.md halo/report.* halo/config.yaml \
        halo/model/halo_export.json halo/stages/*/losses.jsonl halo/stages/select/done.json 2>/dev/null)
    if [ ! -f "$RUNS/triton_packed" ] || [ -n "$(find "$HOME/.triton/cache" -newer "$RUNS/triton_packed" -print -quit 2>/dev/null)" ]; then
        pack_triton_cache "$OUT" && touch "$RUNS/triton_packed"
    fi
}
export_base() {  # the logit-scaling base the export wrote, as GRIDS name bases (8000)
    python3 -c "import json, sys; a = json.load(open(sys.argv[1])).get('logit_scaling_base'); print(f'{a:g}' if a else 'off')" \
        "$RUNS/halo/model/halo_export.json"
}
run() { timed_step "$RUNS/logs" "$@" || { pack; exit 0; }; }  # a step within the deadline, or pack and stop

[ "$TEACHER" = embedded ] || setup >"$RUNS/logs/setup.log" 2>&1 || { cat "$RUNS/logs/setup.log"; exit 1; }
if [ ! -f "$RUNS/halo/stages/export/done.json" ]; then  # (report.json alone is not enough: a stage run alone, as
    # select_resume/run.sh's `hypenet select`, writes the report of the stages done so far)
    run convert "${HYPENET[@]}" convert --teacher "$TEACHER" --data "$CORPUS" --out "$RUNS/halo" "${OPTIONS[@]}" --resume
    [ -f "$RUNS/halo/stages/export/done.json" ] || { echo "conversion not finished; run the same command again"; pack; exit 0; }
fi
for grid in "${GRIDS[@]}"; do
    base=${grid%%:*} lengths=${grid#*:}
    dir=$RUNS/bases/${base}_${lengths//,/_}
    [ -f "$dir/results.json" ] && continue
    if [ "$base" = "$(export_base)" ] && [[ " ${GRIDS[*]} " == *" export:$lengths "* ]]; then
        echo "grid $grid: the export's base, measured by grid export:$lengths"; continue
    fi
    if [ "$base" = export ]; then chosen=(); label="export's base"; else chosen=(--logit-scaling-base "$base"); label="base $base"; fi
    run "grid-${base}_${lengths//,/_}" "${HYPENET[@]}" eval "$RUNS/halo/model" "${chosen[@]}" --label "$label" --out "$dir" \
        --resume --evals niah --niah-lengths "$lengths" --haystack-heldout --haystack "$CORPUS" "${GRID_ARGS[@]}" \
        --no-progress
    [ -f "$dir/results.json" ] || { echo "grid $grid not finished; run the same command again"; pack; exit 0; }
done
read -r -a RULER_ARGS <<<"--evals niah --tasks multikey_1,multikey_2,multikey_3,multivalue,multiquery --niah-lengths \
${RULER_LENGTHS:-4096,8192} --niah-samples ${RULER_SAMPLES:-2} --haystack-heldout --haystack $CORPUS --batch-size 16 \
--no-progress --resume"
unfinished=()  # the extras whose step ended without its result (stopped by the deadline, or failed: see its log)
expect() { [ -f "$1" ] || unfinished+=("$2"); }
for extra in ${EXTRAS:-}; do
    case $extra in
    ruler)
        for who in ${RULER_WHO:-student teacher}; do
            dir=$RUNS/extras/ruler_$who model=$RUNS/halo/model
            [ "$who" = teacher ] && model=$TEACHER
            [ -f "$dir/results.json" ] && continue
            run "ruler-$who" "${HYPENET[@]}" eval "$model" --label "$who" --out "$dir" "${RULER_ARGS[@]}"
            expect "$dir/results.json" "ruler-$who"
        done ;;
    assisted)
        [ -f "$RUNS/extras/assisted_check.json" ] || run assisted python3 scripts/assisted_check.py "$TEACHER" \
            "$RUNS/halo/model" --source "$CORPUS" ${ASSISTED_OPTIONS:---device cuda --length 4096} --out "$RUNS/extras/assisted_check.json"
        expect "$RUNS/extras/assisted_check.json" assisted ;;
    oom)
        [ -f "$RUNS/extras/oom/train_speed.json" ] || run oom "${HYPENET[@]}" bench-train "${OOM_SHAPE:-hypenet-2b}" \
            --stages stage2 --set stage2.micro_batch_size=null ${OOM_OPTIONS:---steps 3} --out "$RUNS/extras/oom"
        expect "$RUNS/extras/oom/train_speed.json" oom ;;
    ppl)
        read -r -a PPL_ARGS <<<"${PPL_OPTIONS:---ppl-docs 8 --ppl-max-len 65536 --niah-lengths 4096,8192,16384,32768,65536 --copy-samples 16 --batch-size 16 --max-batch-tokens 524288}"
        [ -f "$RUNS/extras/ppl_student/results.json" ] || run ppl-student "${HYPENET[@]}" eval "$RUNS/halo/model" \
            --label student --out "$RUNS/extras/ppl_student" --evals ppl,copy --ppl-source "$CORPUS" --haystack "$CORPUS" \
            --haystack-heldout "${PPL_ARGS[@]}" --no-progress --resume
        expect "$RUNS/extras/ppl_student/results.json" ppl-student ;;
    copies)
        for stage in ${COPIES_STAGES:-stage2 stage3}; do
            [ -f "$RUNS/extras/copies_student_$stage.md" ] || run "copies-$stage" python3 scripts/teacher_copies.py \
                "${OPTIONS[@]}" --teacher "$TEACHER" --data "$CORPUS" --stage "$stage" --model "$RUNS/halo/model" \
                --device "${COPIES_DEVICE:-cuda}" --rows "${COPIES_ROWS:-200}" --out "$RUNS/extras/copies_student_$stage.md"
            expect "$RUNS/extras/copies_student_$stage.md" "copies-$stage"
        done ;;
    *) echo "EXTRAS: unknown check '$extra' (ruler, assisted, oom, ppl, copies)"; exit 2 ;;
    esac
done
pack
if [ ${#unfinished[@]} -gt 0 ]; then  # not "all done": a stopped extra resumes (--resume) in the next call
    echo "[$((SECONDS - START))s] extras not finished: ${unfinished[*]} (logs/NAME.log says why); run the same command again"
else
    echo "[$((SECONDS - START))s] all done"
fi
