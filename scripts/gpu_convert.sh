#!/usr/bin/env bash
# The real conversion on one GPU: HALO turns the embedded SmolLM2-135M-Instruct into a HypeNet, two ablations run at
# the same budget (evenly spaced attention layers, and no attention at all), teacher (as-is and with YaRN) and
# students are evaluated side by side (perplexity per context bucket, NIAH-Single-1/2/3 from 4K to 64K), and the
# training speed of the three stages is measured at the Qwen3-1.7B -> HypeNet-2B shape.
#
#   bash scripts/gpu_convert.sh [DEADLINE_SECONDS]        (default 560)
#
# Resumable by design, for device leases of 10-minute commands: every finished step is recorded under
# runs/gpu/done/ and skipped next time, a step still running STOP_GRACE seconds (default 50) before the deadline is
# interrupted with SIGINT (a conversion checkpoints the optimizer step in flight and continues from it next time),
# killed if it has not stopped 20 s before the deadline, and the script stops there, its results packed, by the
# deadline: a device call's limit (timeout_s) above the deadline is never reached. Run the same command again until it
# prints "all done".
# After every step the results so far are packed into $OUT/gpu_convert.tgz (reports, JSON, PNG, logs; no weights);
# when the script stops, Triton's kernel cache too ($OUT/triton_cache.txz, for the next lease to carry).
# Each comparison also counts how the models' NIAH answers begin (answer_starts.md, scripts/niah_answer_starts.py).
#
# Inputs (no network there; see ../shared/GPU.md):
#   TEACHER  the teacher's GGUF (default runs/gpu/SmolLM2-135M-Instruct.Q4_1.gguf); when missing, it is reassembled
#            from its parts .carry/p1/gguf.part1, .carry/p2/gguf.part2, ... (in that order), carried by calls back to
#            back (64 MiB each), and checked against the gguf.sha256 carried beside one of them
#   CORPUS   the built-in corpus as one file (default .carry/c/corpus.jsonl.xz, carried with the wheels), made on a
#            machine that has it by `python -m hypenet.data export .carry/c/corpus.jsonl.xz`: the same documents in
#            the same order, so the same held-out split
#   TRITON_CACHE  (optional, default .carry/triton_cache.txz, which scripts/gpu_carry.py writes from git's history of
#            results/gpu_convert/triton_cache.txz) the triton_cache.txz an earlier lease sent back (xz: ~3-7 MB where
#            gzip made 12-15 MB)
#   TEACHER_EVAL  (optional) an earlier `hypenet eval` folder of the teacher, reused when its settings match (or
#            differ only in asking for fewer NIAH lengths)
#            (results/gpu_convert/eval/teacher: the teacher's 6-minute evaluation need not run again)
#   HALO_EVAL  (optional) an earlier evaluation of the HALO student (results/gpu_convert/eval/hypenet-halo), reused
#            when its settings match: then only HALO's stage 1 runs again (the ablations start from it), not its
#            selection, stages 2-3, export and evaluation, and the lease goes to the ablations
#   ABLATIONS  (optional) which ablations run, "even,none" by default: "even" or "none" runs that one alone (e.g. the
#            one a lease had no time for); 0: none of them: HALO's conversion, evaluation and comparison with the
#            teacher, then the training speed; e.g. to try a setting: CONVERT_OPTIONS="--set ..." RUNS=runs/gpu-try
#   TRAIN_SPEED  (optional) 0: leave out the training-speed benchmark at the end
#   NEEDLE_ATTENTION  (optional) 0: leave out where each student's attention finds the NIAH needle (`hypenet eval
#            --evals needle_attention`, NEEDLE_OPTIONS; ~30 s each) after its evaluation
#   HALO_MORE_EVAL  (optional) `hypenet eval` options for one more evaluation of the HALO student after the
#            comparison, into $RUNS/eval_more/hypenet-halo, e.g. "--evals niah_forced,niah --niah-samples 6
#            --niah-lengths 4096,8192,16384,32768,65536 --haystack-heldout --batch-size 16 --max-batch-tokens 524288"
#   MORE_EVAL_LENGTHS  (optional) HALO_MORE_EVAL in parts, one step each, e.g. "4096,8192 16384,32768,65536" (each
#            part's --niah-lengths; a part fits a 10-minute call where the whole grid does not), merged afterwards with
#            `hypenet merge-evals` into $RUNS/eval_more/LABEL together with the student's evaluation when that ran no
#            NIAH (e.g. EVAL_OPTIONS with --evals ppl,copy): one folder with its perplexity and its NIAH grid
#   BRANCH  (optional) `hypenet stage3` options for a second stage 3 from the HALO run's stage 2, e.g. "--set
#            stage3.tokens=24M" (`hypenet stage3 --from`: the HALO run's saved settings are the base), into
#            $RUNS/branch, exported and evaluated as the HALO student is (EVAL_OPTIONS, then HALO_MORE_EVAL), and
#            compared with it in $RUNS/compare_branch (their eval_more folders when MORE_EVAL_LENGTHS merged them);
#            BRANCH_LABEL names it (default hypenet-branch). Runs after all of the HALO student's evaluations (not with
#            HALO_EVAL: no HALO run is made then)
#   BRANCH_PAIRED  (optional) 1, with BRANCH and MORE_EVAL_LENGTHS: the branch is made right after the HALO student's
#            evaluation, then each part of MORE_EVAL_LENGTHS runs for both students before the next part (the
#            branch's EVAL_OPTIONS evaluation after them), so that a lease ending part-way has both students
#            measured at the same lengths; e.g. MORE_EVAL_LENGTHS="32768 65536 4096,8192,16384" for the long ones first
#   STAGE_EVAL  (optional) `hypenet eval` options for the HALO run's stage-2 and stage-3 models (before the export's
#            logit scaling), into $RUNS/eval_stages/stage2 and stage3: which stage moved what. Neither runs with
#            HALO_EVAL (no HALO model is made then)
#   WHEELS   (default .whl/) wheels of what the image lacks (flash-linear-attention, fla-core, gguf, transformers >= 5.24),
#            installed into /tmp/site once per machine
#   STOP_GRACE  (optional, default 50) seconds before the deadline at which a running step is interrupted: up to
#            STOP_GRACE - 20 s for it to stop, 20 s to pack the results and Triton's cache
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:-560}
STOP_GRACE=${STOP_GRACE:-50}
[ "$STOP_GRACE" -gt 20 ] 2>/dev/null \
    || { echo "STOP_GRACE=$STOP_GRACE: seconds, more than the 20 kept for packing" >&2; exit 2; }
START=$SECONDS
RUNS=${RUNS:-runs/gpu}
# TEACHER, CORPUS, WHEELS and TRITON_CACHE take their defaults there; setup: wheels, teacher, corpus, Triton cache
source "$(dirname "${BASH_SOURCE[0]}")/gpu_setup.sh"
OUT=${OUT:-$RUNS/out}
# CONFIG, EVAL_OPTIONS and SPEED_OPTIONS can be replaced (tests/test_gpu_convert_script.py runs this on a CPU);
# CONVERT_OPTIONS are added to every conversion, e.g. "--set stage1.align_attention=true" (RUNS: a new folder then).
CONFIG=${CONFIG:-configs/gpu-smollm2.yaml}
read -r -a CONVERT_ARGS <<<"${CONVERT_OPTIONS:-}"
read -r -a EVAL_ARGS <<<"${EVAL_OPTIONS:---niah-lengths 4096,8192,16384,32768,65536 --niah-samples 2 --batch-size 16 --max-batch-tokens 524288 --ppl-docs 8 --ppl-max-len 65536}"
DATA_ARGS=(--ppl-source "$CORPUS" --haystack "$CORPUS" --no-progress)  # what every evaluation reads, and how
EVAL_ARGS+=("${DATA_ARGS[@]}")
read -r -a NEEDLE_ARGS <<<"${NEEDLE_OPTIONS:---tasks single_1,single_2 --niah-lengths 4096,32768 --haystack-heldout}"
NEEDLE_ARGS+=(--haystack "$CORPUS" --no-progress)
read -r -a SPEED_ARGS <<<"${SPEED_OPTIONS:-}"
read -r -a BRANCH_ARGS <<<"${BRANCH:-}"
case "${ABLATIONS:-1}" in
    1) ABLATION_RUNS=(even none) ;;
    0) ABLATION_RUNS=() ;;
    *) read -r -a ABLATION_RUNS <<<"${ABLATIONS//,/ }" ;;
esac
for run in "${ABLATION_RUNS[@]}"; do
    case "$run" in even | none) ;; *) echo "ABLATIONS=$ABLATIONS: each ablation is even or none (or 0 for none of them)" >&2
        exit 2 ;;
    esac
done
mkdir -p "$RUNS/done" "$RUNS/logs" "$OUT"
export RUNS TEACHER CORPUS WHEELS OUT CONFIG TRITON_CACHE TEACHER_EVAL HALO_EVAL
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
HYPENET=(python3 -m hypenet.cli)

say() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*" | tee -a "$RUNS/logs/summary.log"; }

pack() {  # pack [final]: the results so far, without weights, into $OUT (at most 8 files come back from there);
    # `final` (the script is about to stop) adds Triton's kernel cache, which takes ~14 s to pack
    local keep=$RUNS/results run dir
    rm -rf "$keep" && mkdir -p "$keep"
    for run in halo branch even none; do
        [ -d "$RUNS/$run" ] || continue
        mkdir -p "$keep/convert_$run"
        cp "$RUNS/$run"/report.* "$RUNS/$run"/*.png "$RUNS/$run/config.yaml" "$keep/convert_$run/" 2>/dev/null
        cp "$RUNS/$run/model/halo_export.json" "$keep/convert_$run/" 2>/dev/null
    done
    for dir in eval eval_more eval_parts eval_stages needle_attention compare compare_branch ablation train_speed; do
        [ -d "$RUNS/$dir" ] && cp -r "$RUNS/$dir" "$keep/"
    done
    tar czf "$OUT/gpu_convert.tgz" -C "$RUNS" results logs
    [ "${1:-}" != final ] || pack_triton_cache "$OUT"
}

# step NAME COMMAND...: run once (skipped when runs/gpu/done/NAME exists), interrupted at the deadline.
step() {
    local name=$1; shift
    [ -f "$RUNS/done/$name" ] && return 0
    local left=$((DEADLINE - (SECONDS - START)))
    local run_for=$((left - STOP_GRACE))  # the rest: to stop it (SIGINT, then SIGKILL) and pack, 20 s of it packing
    if [ "$run_for" -lt 30 ]; then
        say "deadline: stopping before $name; run the same command again to continue"
        pack final; exit 0
    fi
    say "start $name (${left}s left)"
    local began=$SECONDS
    # timeout runs programs, not functions: a child bash gets this script's functions and arrays first.
    timeout --signal=INT --kill-after=$((STOP_GRACE - 20)) "$run_for" bash -c "$(declare -f setup convert branch \
        share_stage1 evaluate reuse_or_evaluate evaluate_more merge_more needles compare_runs)
        $(declare -p HYPENET EVAL_ARGS DATA_ARGS CONVERT_ARGS NEEDLE_ARGS BRANCH_ARGS)"$'\n''"$@"' step "$@" >>"$RUNS/logs/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        echo $((SECONDS - began)) >"$RUNS/done/$name"
        say "done  $name in $((SECONDS - began))s"
        pack
        return 0
    fi
    tail -n 25 "$RUNS/logs/$name.log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then  # timeout's SIGINT, or its SIGKILL after it
        say "deadline: $name interrupted after $((SECONDS - began))s, exit $rc$(stop_reason "$rc" $((STOP_GRACE - 20)));" \
            "run the same command again to continue it"
        pack final; exit 0
    fi
    say "FAILED $name (exit $rc), log: $RUNS/logs/$name.log"
    pack final; exit 1
}

convert() {  # convert COMMAND RUN [--set ...]: HALO (`convert`, or one stage) into runs/gpu/RUN, continuing whatever is there
    local command=$1 run=$2; shift 2
    "${HYPENET[@]}" "$command" --teacher "$TEACHER" --data "$CORPUS" --config "$CONFIG" --out "$RUNS/$run" --resume \
        "${CONVERT_ARGS[@]}" "$@"
}

branch() {  # branch COMMAND [options]: one stage of BRANCH (`stage3 --from ...`, then `export`) in runs/gpu/branch; no
    # --config: the HALO run's saved settings, copied by --from, are the base, changed only by BRANCH
    local command=$1; shift
    "${HYPENET[@]}" "$command" --teacher "$TEACHER" --data "$CORPUS" --out "$RUNS/branch" --resume "${BRANCH_ARGS[@]}" "$@"
}

share_stage1() {  # the ablations start from the HALO run's stage 1 (it trains every layer, whatever is selected)
    local run=$1
    [ -f "$RUNS/$run/stages/stage1/done.json" ] && return 0
    mkdir -p "$RUNS/$run/stages"
    cp -r "$RUNS/halo/stages/stage1" "$RUNS/$run/stages/" && cp "$RUNS/halo/config.yaml" "$RUNS/$run/"
}

reuse_or_evaluate() {  # reuse_or_evaluate LABEL MODEL SAVED [more eval options]: copy SAVED, an earlier evaluation
    # with the same settings (its NIAH lengths may be more: all of them are kept), or (SAVED empty) evaluate MODEL
    local label=$1 model=$2 saved=$3; shift 3
    [ -n "$saved" ] || { evaluate "$label" "$model" "$@"; return; }
    python3 - "$saved/results.json" "${EVAL_ARGS[@]}" "$@" <<'PY' || return 1
import json, sys
from hypenet.cli import build_parser
saved = json.load(open(sys.argv[1]))["settings"]
now = vars(build_parser().parse_args(["eval", "model", *sys.argv[2:]]))
keys = ["niah_lengths", "niah_depths", "niah_samples", "tasks", "chat_template", "ppl_max_len", "ppl_docs",
        "ppl_heldout_fraction", "ppl_score_len", "seed", "yarn", "haystack_heldout"]
before = {"haystack_heldout": False}  # what evaluations made before the option existed did
different = [k for k in keys if saved.get(k, before.get(k)) != now.get(k)]
fewer = different == ["niah_lengths"] and set(now["niah_lengths"]) <= set(saved["niah_lengths"] or [])
if different and not fewer:
    sys.exit(f"{sys.argv[1]} was run with other settings ({different}); leave it out to evaluate again")
print(f"reusing {sys.argv[1]}: " + ("same settings" if not fewer else
      f"same settings, NIAH at {saved['niah_lengths']} (these runs ask for {now['niah_lengths']})"))
PY
    mkdir -p "$RUNS/eval" && rm -rf "$RUNS/eval/$label" && cp -r "$saved" "$RUNS/eval/$label"
}

evaluate() {  # evaluate LABEL MODEL [more eval options]; a step interrupted part-way continues (--resume)
    local label=$1 model=$2; shift 2
    "${HYPENET[@]}" eval "$model" --label "$label" --out "$RUNS/eval/$label" --resume "${EVAL_ARGS[@]}" "$@"
}

compare_runs() {  # compare_runs OUT LABELS EVAL...: the side-by-side report, then how each one's NIAH answers begin
    local out=$1 labels=$2 samples=() dir; shift 2
    "${HYPENET[@]}" compare "$@" --labels "$labels" --out "$out" || return 1
    for dir in "$@"; do [ -f "$dir/niah_samples.jsonl" ] && samples+=("$dir/niah_samples.jsonl"); done
    [ "${#samples[@]}" -eq 0 ] || python3 scripts/niah_answer_starts.py "${samples[@]}" --out "$out/answer_starts.md"
}

evaluate_more() {  # evaluate_more OUT LABEL MODEL OPTIONS: an evaluation of its own (HALO_MORE_EVAL, STAGE_EVAL)
    local out=$1 label=$2 model=$3 options=()
    read -r -a options <<<"$4"
    "${HYPENET[@]}" eval "$model" --label "$label" --out "$out" --resume "${options[@]}" "${DATA_ARGS[@]}"
}

merge_more() {  # merge_more LABEL PART...: MORE_EVAL_LENGTHS' parts into eval_more/LABEL, with LABEL's evaluation
    # when it ran no NIAH (merge-evals takes one NIAH grid: the parts')
    local label=$1 evaluation=(); shift
    python3 -c 'import json, sys; sys.exit(bool({"niah", "niah_forced"} & set(json.load(open(sys.argv[1]))["evals"])))' \
        "$RUNS/eval/$label/results.json" && evaluation=("$RUNS/eval/$label")
    rm -rf "$RUNS/eval_more/$label"
    "${HYPENET[@]}" merge-evals "${evaluation[@]}" "$@" --label "$label" --out "$RUNS/eval_more/$label"
}

more_part() {  # more_part NAME LABEL MODEL I LENGTHS: part I of MORE_EVAL_LENGTHS (NIAH at LENGTHS), a step of its own
    step "eval_more_$1_$4" evaluate_more "$RUNS/eval_parts/$2-$4" "$2" "$3" "$HALO_MORE_EVAL --niah-lengths $5"
}

more_merge() {  # more_merge NAME LABEL: LABEL's parts of MORE_EVAL_LENGTHS merged into eval_more/LABEL
    local parts=() i count
    count=$(wc -w <<<"$MORE_EVAL_LENGTHS")
    for ((i = 1; i <= count; i++)); do parts+=("$RUNS/eval_parts/$2-$i"); done
    step "merge_more_$1" merge_more "$2" "${parts[@]}"
}

more_steps() {  # more_steps NAME LABEL MODEL: HALO_MORE_EVAL of MODEL, as one step or one per MORE_EVAL_LENGTHS part
    local name=$1 label=$2 model=$3 lengths i=0
    if [ -z "${MORE_EVAL_LENGTHS:-}" ]; then
        step "eval_more_$name" evaluate_more "$RUNS/eval_more/$label" "$label" "$model" "$HALO_MORE_EVAL"
        return
    fi
    for lengths in $MORE_EVAL_LENGTHS; do
        i=$((i + 1)) && more_part "$name" "$label" "$model" "$i" "$lengths"
    done
    more_merge "$name" "$label"
}

needles() {  # needles LABEL MODEL: the share of each attention layer's last-token attention on the NIAH needle
    local label=$1 model=$2
    "${HYPENET[@]}" eval "$model" --label "$label" --evals needle_attention --out "$RUNS/needle_attention/$label" \
        "${NEEDLE_ARGS[@]}"
}

say "gpu_convert: deadline ${DEADLINE}s"
step setup setup
if [ -n "${HALO_EVAL:-}" ]; then
    step stage1_halo convert stage1 halo  # what the ablations share; the rest of HALO was run and evaluated before
else
    step convert_halo convert convert halo
fi
step eval_teacher reuse_or_evaluate teacher "$TEACHER" "${TEACHER_EVAL:-}" --yarn
step eval_halo reuse_or_evaluate hypenet-halo "$RUNS/halo/model" "${HALO_EVAL:-}"
[ "${NEEDLE_ATTENTION:-1}" = 0 ] || [ -n "${HALO_EVAL:-}" ] || step needles_halo needles hypenet-halo "$RUNS/halo/model"
step compare compare_runs "$RUNS/compare" teacher,hypenet-halo "$RUNS/eval/teacher" "$RUNS/eval/hypenet-halo"
PAIRED=0  # BRANCH_PAIRED=1: each part of the grid for both students before the next part
if [ "${BRANCH_PAIRED:-0}" = 1 ] && [ -n "${BRANCH:-}" ] && [ -n "${HALO_MORE_EVAL:-}" ] && [ -n "${MORE_EVAL_LENGTHS:-}" ] \
    && [ -z "${HALO_EVAL:-}" ]; then PAIRED=1; fi
if [ -n "${HALO_MORE_EVAL:-}" ] && [ -z "${HALO_EVAL:-}" ] && [ "$PAIRED" = 0 ]; then  # (HALO_EVAL: no HALO model here)
    more_steps halo hypenet-halo "$RUNS/halo/model"
fi
if [ -n "${STAGE_EVAL:-}" ] && [ -z "${HALO_EVAL:-}" ]; then  # the models before the export: they lack its logit scaling
    for stage in stage2 stage3; do
        step "eval_$stage" evaluate_more "$RUNS/eval_stages/$stage" "$stage" "$RUNS/halo/stages/$stage/model" "$STAGE_EVAL"
    done
fi
if [ -n "${BRANCH:-}" ] && [ -z "${HALO_EVAL:-}" ]; then  # another stage 3 from HALO's stage 2
    label=${BRANCH_LABEL:-hypenet-branch}
    step stage3_branch branch stage3 --from "$RUNS/halo"
    step export_branch branch export
    if [ "$PAIRED" = 1 ]; then  # a lease that ends part-way leaves the lengths it reached measured for both
        i=0
        for lengths in $MORE_EVAL_LENGTHS; do
            i=$((i + 1))
            more_part halo hypenet-halo "$RUNS/halo/model" "$i" "$lengths"
            more_part branch "$label" "$RUNS/branch/model" "$i" "$lengths"
        done
        step eval_branch evaluate "$label" "$RUNS/branch/model"
        more_merge halo hypenet-halo
        more_merge branch "$label"
    else
        step eval_branch evaluate "$label" "$RUNS/branch/model"
        [ -z "${HALO_MORE_EVAL:-}" ] || more_steps branch "$label" "$RUNS/branch/model"
    fi
    evaluations=eval  # the fullest evaluation of each: the merged one, when there is one
    if [ -n "${HALO_MORE_EVAL:-}" ] && [ -n "${MORE_EVAL_LENGTHS:-}" ]; then evaluations=eval_more; fi
    step compare_branch compare_runs "$RUNS/compare_branch" "hypenet-halo,$label" "$RUNS/$evaluations/hypenet-halo" \
        "$RUNS/$evaluations/$label"
fi
for run in "${ABLATION_RUNS[@]}"; do  # the same budget from the same stage 1, attention placed otherwise
    step "share_stage1_$run" share_stage1 "$run"
    step "convert_$run" convert convert "$run" --set "select.strategy=$run"
    step "eval_$run" evaluate "hypenet-$run" "$RUNS/$run/model"
    # the all-RNN student has no attention layer to look with
    [ "${NEEDLE_ATTENTION:-1}" = 0 ] || [ "$run" = none ] || step "needles_$run" needles "hypenet-$run" "$RUNS/$run/model"
done
if [ "${#ABLATION_RUNS[@]}" -gt 0 ]; then
    labels=teacher,halo && evals=("$RUNS/eval/teacher" "$RUNS/eval/hypenet-halo")
    for run in "${ABLATION_RUNS[@]}"; do labels+=",$run" && evals+=("$RUNS/eval/hypenet-$run"); done
    step ablation compare_runs "$RUNS/ablation" "$labels" "${evals[@]}"
fi
if [ "${TRAIN_SPEED:-1}" != 0 ]; then
    step train_speed python3 -m hypenet.bench.train --out "$RUNS/train_speed" "${SPEED_ARGS[@]}"
fi
pack final
if [ "${#ABLATION_RUNS[@]}" -eq 0 ]; then
    say "all done (ABLATIONS=0: HALO, its evaluation$([ "${TRAIN_SPEED:-1}" = 0 ] || echo ' and the training speed')):" \
        "results in $OUT/gpu_convert.tgz"
else
    say "all done: results in $OUT/gpu_convert.tgz"
fi
