#!/usr/bin/env bash
# Next leases' item 7, the teacher's half (results/gpu_convert/README.md): RULER's multi-key, multi-value and
# multi-query NIAH on the embedded teacher at 4K and 8K (its own window), 6 samples per cell, on held-out haystacks,
# as lease40.sh's `ruler` extra runs it on a student (RULER_SAMPLES=6), so that a later lease need measure only the
# student. Run from the repository root after the carry calls (scripts/gpu_carry.py prints them) as
# `bash results/gpu_convert/ruler_teacher/run.sh`; everything comes back in $OUT/ruler_teacher.tgz.
# RUNS, TEACHER, CORPUS, LENGTHS, SAMPLES and EVAL_OPTIONS (e.g. `--device cpu`) can be replaced to try it on a CPU.
set -uo pipefail
RUNS=${RUNS:-runs/gpu_rt}
OUT=${OUT:-$RUNS/out}
mkdir -p "$RUNS/logs" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source scripts/gpu_setup.sh
[ "$TEACHER" = embedded ] || setup >"$RUNS/logs/setup.log" 2>&1 || { cat "$RUNS/logs/setup.log"; exit 1; }
tail -n 3 "$RUNS/logs/setup.log" 2>/dev/null
read -r -a EVAL_OPTIONS <<<"${EVAL_OPTIONS:---batch-size 16}"
python3 -m hypenet.cli eval "$TEACHER" --label teacher --out "$RUNS/ruler_teacher" --evals niah \
    --tasks multikey_1,multikey_2,multikey_3,multivalue,multiquery --niah-lengths "${LENGTHS:-4096,8192}" \
    --niah-samples "${SAMPLES:-6}" --haystack-heldout --haystack "$CORPUS" --no-progress --resume \
    "${EVAL_OPTIONS[@]}" 2>&1 | tee "$RUNS/logs/ruler_teacher.log" | tail -n 25
tar czf "$OUT/ruler_teacher.tgz" -C "$RUNS" logs ruler_teacher
echo "packed $OUT/ruler_teacher.tgz"
