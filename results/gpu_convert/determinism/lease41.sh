#!/usr/bin/env bash
# Next leases' item 2 (results/gpu_convert/README.md): the fortieth lease's question on a second student.
#   convert  seed 0's deterministic conversion of the default recipe again: the thirty-eighth lease's student (its
#            export chose base 16000 and got 28 of 90 NIAH answers right at 64K). summary.md compares the report with
#            the thirty-eighth's (REFERENCE); the fortieth lease showed a deterministic conversion repeating in
#            another lease to the last digit, so a match means this is that student.
#   grids    its 6-sample NIAH grid at base 8000 (64K, then 4K-16K and 32K) and 4000 (64K), to pair answer by answer
#            with the thirty-eighth's grid at 16000 (`python scripts/niah_paired.py`), and at the export's base (64K):
#            the control, should the conversion not repeat the thirty-eighth's (code changed between them). In the fortieth lease, on seed
#            1's student, 8000 got 38 of 90 right at 64K against 16000's 29 (McNemar p = 0.022), no fewer at 4K-32K.
# It runs lease40.sh with these settings (so its returns are $OUT/lease40.tgz and $OUT/triton_cache.txz); any of them
# can still be replaced from the environment. Run from the repository root after the carry calls as
# `bash results/gpu_convert/determinism/lease41.sh 585`, repeated until it prints "all done".
export RUNS=${RUNS:-runs/gpu_d0}
export REFERENCE=${REFERENCE:-results/gpu_convert/determinism/lease38/results/convert_halo/report.json}
export GRIDS=${GRIDS:-8000:65536 export:65536 4000:65536 8000:4096,8192,16384 8000:32768 2000:65536}
#   probe    the export also measures the far-copy loss at every base it tries (`export.copy_probe=16`: 16 spans of 32
#            tokens per held-out document, copied from >= 16K tokens back; it only reports, the choice stays the
#            lowest loss): does it rank 2000-16000 as their NIAH grids at 64K do? (~45 s more of the export)
export OPTIONS="--set seed=0 --set export.copy_probe=16 ${OPTIONS:-}"  # after lease40.sh's `--set seed=1`: the last
                                                                      # setting of a key wins
export EXTRAS=${EXTRAS-ruler assisted oom}  # after the grids, while time is left (lease40.sh; Next leases 6-8)
exec bash "$(dirname "$0")/lease40.sh" "$@"
