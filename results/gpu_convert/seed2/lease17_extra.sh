#!/usr/bin/env bash
# The seventeenth lease's last call, after lease17.sh had finished (the same machine, runs/gpu_seed2 still there):
# the teacher with the needle's answer form given, and teacher and seed-2 student on NIAH at 4K-8K with prompts in
# the teacher's chat template (a diagnostic of the prompt format; the headline NIAH stays plain text, as RULER's).
set -u
R=runs/gpu_seed2; T=$R/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD/src
G=(--niah-lengths 4096,8192 --niah-samples 6 --haystack .carry/c/corpus.jsonl.xz --haystack-heldout --batch-size 16
   --max-batch-tokens 524288 --no-progress)
mkdir -p $R/extra2
run() { local name=$1 s=$2; shift 2; local b=$SECONDS
  timeout --signal=INT "$s" python3 -m hypenet.cli eval "$@" >$R/extra2/$name.log 2>&1
  echo "[extra2] $name exit $? in $((SECONDS - b))s" | tee -a $R/extra2/summary.log
  tar czf "$OUT/extra2.tgz" -C $R extra2 forced_colon chat_template 2>/dev/null; }
run colon_teacher 60 $T --label teacher --evals niah_forced --forced-answer ': {value}' --tasks single_2,single_3 \
  "${G[@]}" --out $R/forced_colon/teacher
run chat_student 110 $R/halo/model --label hypenet-seed2-chat --evals niah --chat-template "${G[@]}" \
  --out $R/chat_template/hypenet-seed2
run chat_teacher 110 $T --label teacher-chat --evals niah --chat-template "${G[@]}" --out $R/chat_template/teacher
