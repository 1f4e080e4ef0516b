#!/usr/bin/env bash
# The thirty-third lease's second script, run from the repository root as
# `bash results/gpu_convert/teacher_yarn_6/lease33b.sh 560` after the carry calls (wheels, corpus, the teacher's five
# parts): the teacher with YaRN on the students' NIAH grid, 6 samples per cell on held-out haystacks, 4K-64K (the
# committed YaRN grid has 2 samples per cell), one length group per part, longest first, each within the deadline.
# What is done comes back in $OUT/teacher_yarn_6.tgz; merged on the CPU afterwards with `hypenet merge-evals`.
set -uo pipefail
DEADLINE=${1:-560}
START=$SECONDS
RUNS=runs/gpu_t33b
TEACHER=$RUNS/SmolLM2-135M-Instruct.Q4_1.gguf
CORPUS=.carry/c/corpus.jsonl.xz
mkdir -p "$RUNS/parts" "$OUT"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -d /tmp/site/fla ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ ! -e "$TEACHER" ]; then
    cat .carry/p1/gguf.part1 .carry/p2/gguf.part2 .carry/p3/gguf.part3 .carry/p4/gguf.part4 .carry/p5/gguf.part5 >"$TEACHER"
    echo "$(cat .carry/p5/gguf.sha256)  $TEACHER" | sha256sum --check - || { rm -f "$TEACHER"; exit 1; }
fi
for lengths in 65536 32768 16384 4096,8192; do
    left=$((DEADLINE - (SECONDS - START) - 20))
    [ "$left" -gt 30 ] || { echo "deadline: stopping before $lengths"; break; }
    echo "[$((SECONDS - START))s] NIAH at $lengths ($left s left)"
    timeout --signal=INT --kill-after=10 "$left" python3 -m hypenet.cli eval "$TEACHER" --label teacher-yarn --yarn \
        --evals niah --niah-lengths "$lengths" --niah-samples 6 --haystack-heldout --batch-size 16 \
        --max-batch-tokens 524288 --haystack "$CORPUS" --ppl-source "$CORPUS" --no-progress --resume \
        --out "$RUNS/parts/teacher-yarn-${lengths//,/-}" >"$RUNS/parts/log-${lengths//,/-}.txt" 2>&1 \
        || echo "  stopped: exit $?"
    tail -3 "$RUNS/parts/log-${lengths//,/-}.txt"
done
echo "[$((SECONDS - START))s] packing"
tar czf "$OUT/teacher_yarn_6.tgz" -C "$RUNS" parts
