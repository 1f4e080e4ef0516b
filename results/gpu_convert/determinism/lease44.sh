#!/usr/bin/env bash
# Next leases' item 5, the second seed (results/gpu_convert/README.md): made-up numbers among the repeated spans on
# seed 1, with the grids at the base its default student was measured at.
#   convert  seed 1's deterministic conversion with `data.repeat_numbers=0.5`; summary.md against the fortieth
#            lease's report (REFERENCE, seed 1's default student): stage 1 and the layer choice should be equal (they
#            were across an H100 and an H200 on seed 0), stage 2 part from its first step.
#   grids    its 6-sample NIAH grid at base 8000 (64K first, then 4K-16K and 32K), to pair prompt by prompt with the
#            fortieth lease's grids of seed 1's default student at 8000 (determinism/lease40/bases/8000_merged) by
#            `python scripts/niah_paired.py`, and with `--and` seed 0's pair (the forty-second run again: 96 against
#            77 of 150 at 2 samples per cell, but at bases 4000 against 8000 below 64K). Then the export's base at
#            64K, should it choose another (when it chooses 8000, lease40.sh measures 8000:65536 as export:65536, last).
# It runs lease40.sh with these settings (returns: $OUT/lease40.tgz and $OUT/triton_cache.txz); any of them can still
# be replaced from the environment. Run from the repository root after the carry calls as
# `bash results/gpu_convert/determinism/lease44.sh 585`, repeated until it prints "all done".
export RUNS=${RUNS:-runs/gpu_d1n}
export REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease40/halo/report.json}
export GRIDS=${GRIDS:-8000:65536 8000:4096,8192,16384 8000:32768 export:65536}
export OPTIONS="--set data.repeat_numbers=0.5 ${OPTIONS:-}"  # after lease40.sh's `--set seed=1`
export EXTRAS=${EXTRAS-ruler assisted}  # after the grids, while time is left (lease40.sh; Next leases 6-7)
exec bash "$(dirname "$0")/lease40.sh" "$@"
