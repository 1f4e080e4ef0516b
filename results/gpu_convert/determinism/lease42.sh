#!/usr/bin/env bash
# Next leases' item 5 (results/gpu_convert/README.md): made-up numbers among the repeated spans, on seed 0.
#   convert  seed 0's deterministic conversion of the default recipe with `data.repeat_numbers=0.5` (half of the
#            chunks that repeat a span repeat a made-up 5-10 digit number with the text before it instead,
#            docs/DATA.md). Stage 1 and the layer choice do not see the chunks of stages 2-3, so summary.md (against
#            the forty-first lease's report, REFERENCE, the same student as the thirty-eighth's) should show them
#            equal and stage 2 parting from its first step.
#   grids    its 6-sample NIAH grid at the export's base (64K first, then 4K-16K and 32K), to pair answer by answer
#            with the same prompts at the same base on seed 0's default student (`python scripts/niah_paired.py`):
#            does Single-2 lose fewer copies? (In the default's six runs half of its misses begin the value and go
#            astray.) Since the forty-first lease configs/gpu-smollm2.yaml writes the smallest base within 0.1% of
#            the lowest loss, 8000 on that student, whose grid at 8000 is determinism/lease41/bases/8000_merged.
#            Then 8000 at 64K, should the export choose another base (skipped when it chose 8000).
# It runs lease40.sh with these settings (returns: $OUT/lease40.tgz and $OUT/triton_cache.txz); any of them can still
# be replaced from the environment. Run from the repository root after the carry calls as
# `bash results/gpu_convert/determinism/lease42.sh 585`, repeated until it prints "all done".
export RUNS=${RUNS:-runs/gpu_d0n}
export REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease41/halo/report.json}
export GRIDS=${GRIDS:-export:65536 export:4096,8192,16384 export:32768 8000:65536}
export OPTIONS="--set seed=0 --set data.repeat_numbers=0.5 ${OPTIONS:-}"  # after lease40.sh's `--set seed=1`: the
                                                                         # last setting of a key wins
export EXTRAS=${EXTRAS-ruler assisted oom}  # after the grids, while time is left (lease40.sh; Next leases 6-8)
exec bash "$(dirname "$0")/lease40.sh" "$@"
