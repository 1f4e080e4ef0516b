#!/usr/bin/env bash
# Counts the runs of gloo_exit.py (2 processes) in which a process aborted at exit, for each teardown MODE.
# Usage, from the repository root: bash results/cpu_teardown/run.sh [RUNS per mode, default 16]
set -u
runs=${1:-16}
here=$(dirname "$0")
log=$(mktemp)
for mode in left-up destroyed hypenet; do
  aborted=0
  failed=0
  for _ in $(seq "$runs"); do
    MODE=$mode OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 "$here/gloo_exit.py" \
      > "$log" 2>&1
    code=$?
    if grep -q "terminate called" "$log"; then
      aborted=$((aborted + 1))
    elif [ "$code" != 0 ]; then
      failed=$((failed + 1))  # e.g. hypenet not importable (MODE=hypenet): not counted as a clean exit
    fi
  done
  echo "$mode: aborted in $aborted of $runs runs; $failed failed otherwise"
done
rm -f "$log"
