#!/usr/bin/env bash
# The stop-and-resume of tests/test_halo_deepspeed.py::test_zero3_stop_and_resume_continue_exactly, PAIRS times on 2
# gloo processes under DeepSpeed ZeRO-3 (tests/workers/deepspeed_train.py, through stressed.py), counting the runs in
# which a process aborted at exit ("terminate called without an active exception").
# Usage, from the repository root: bash results/cpu_teardown/run_worker.sh [PAIRS, default 24] [REPO, default .]
# REPO: the checkout whose src/ and tests/ run (e.g. a `git worktree` of an earlier commit).
set -u
pairs=${1:-24}
repo=$(cd "${2:-.}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
aborted_stop=0
aborted_resume=0
failed=0
for _ in $(seq "$pairs"); do
  rm -rf "$out/run"
  for mode in STOP_AT=3 RESUME=1; do
    env "$mode" OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_ZERO_STAGE=3 \
      PYTHONPATH="$repo/src:$repo/tests" python -m torch.distributed.run --standalone --nproc_per_node 2 \
      "$here/stressed.py" "$repo/tests/workers/deepspeed_train.py" "$out/run" > "$out/log" 2>&1
    code=$?
    if grep -q "terminate called" "$out/log"; then
      if [ "$mode" = RESUME=1 ]; then aborted_resume=$((aborted_resume + 1)); else aborted_stop=$((aborted_stop + 1)); fi
    elif [ "$mode" = RESUME=1 ] && [ "$code" != 0 ]; then
      failed=$((failed + 1))  # a resumed run that failed otherwise
    elif [ "$mode" = STOP_AT=3 ] && ! grep -q "stopped by signal after step 3" "$out/log"; then
      failed=$((failed + 1))  # a stopped run that did not stop as asked
    fi
  done
done
echo "$repo: aborted at exit in $aborted_stop of $pairs stopped runs and $aborted_resume of $pairs resumed runs;" \
  "$failed failed otherwise"
rm -rf "$out"
