#!/usr/bin/env bash
# The forty-fifth lease: Next leases' item 9, then the conversion it starts carried through to a student and paired
# at 64K (results/gpu_convert/README.md).
#   select   results/gpu_convert/select_resume/run.sh: seed 1's deterministic conversion stopped by SIGTERM once 12
#            layers of the selection are scored, `hypenet select --resume`, its compare.json against the fortieth
#            lease's selection (SELECT_REFERENCE); skipped once compare.json is there.
#   convert  lease40.sh on the same folder: the conversion resumed from stage 2, its summary.md against the
#            forty-third lease's report (REPORT_REFERENCE; an H100, as the device offers now). On the same kind of
#            card its stage 2 should repeat the forty-third's to the last digit: a deterministic conversion repeated
#            across a stopped and resumed selection.
#   grids    base 8000 at 64K, then 4000 at 64K (GRIDS), 6 samples per cell: the one-student pair of bases on seed 1
#            that the forty-third lease lacked (were stage 2 repeated, its grid at 4000 would pair too); then the
#            `assisted` check (EXTRAS; Next leases, item 6), while time is left.
# Run from the repository root after the carry calls (scripts/gpu_carry.py prints them) as
# `bash results/gpu_convert/determinism/lease45.sh 585`, repeated until it prints "all done". Returns
# $OUT/select_resume.tgz, $OUT/lease40.tgz and $OUT/triton_cache.txz. Every variable of the two scripts can be
# replaced from the environment to try it on a CPU.
set -uo pipefail
DEADLINE=${1:-585}
START=$SECONDS
HERE=$(dirname "$0")
export RUNS=${RUNS:-runs/sel}
if [ ! -f "$RUNS/compare.json" ]; then
    REFERENCE=${SELECT_REFERENCE:-results/gpu_convert/determinism/lease40/halo/stages/select/done.json} \
        bash "$HERE/../select_resume/run.sh" "$DEADLINE"
    [ -f "$RUNS/compare.json" ] || { echo "selection not compared yet; run the same command again"; exit 0; }
fi
left=$((DEADLINE - (SECONDS - START)))
export GRIDS=${GRIDS:-8000:65536 4000:65536} EXTRAS=${EXTRAS-assisted}
REFERENCE=${REPORT_REFERENCE:-$HERE/lease43/halo/report.json} exec bash "$HERE/lease40.sh" "$left"
