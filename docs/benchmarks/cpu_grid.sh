#!/usr/bin/env bash
# The CPU-tier grids still missing from leaderboards/measured, one core, resumable (finished records are
# skipped by identity, killed ones resume). Run from the repository root with the venv active:
#
#   nohup bash docs/benchmarks/cpu_grid.sh > runs/cpu-grid.log 2>&1 &
#   fmssl-bench export --runs runs/cpu-grid --to leaderboards/measured && python docs/benchmarks/embed_measured.py
#
# The committed records are copied into the results root first, so they are cache hits, not reruns.
# FMSSL_FM_CACHE shares generalist embeddings and SamDSK's proposals between the records of the grid.
set -euo pipefail
: "${FMSSL_DATA:?set FMSSL_DATA to the folder holding Kvasir-SEG/ and LA/}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export FMSSL_FM_CACHE="${FMSSL_FM_CACHE:-$PWD/runs/fm-cache}"
out=runs/cpu-grid
mkdir -p "$out"
cp -rn leaderboards/measured/kvasir leaderboards/measured/la "$out"/ 2>/dev/null || true

grid() { fmssl-bench grid --out "$out" "$@"; }
# issue 11: sfr (base mean_teacher) vs mean_teacher at 5 %, 3 seeds (~1 h per record on a loaded core)
grid --methods sfr --datasets kvasir --budgets 5% --seeds 0,1,2 --protocol kvasir-cpu
# issue 10: the classic baselines, 3 seeds at one budget (~6-12 min per record)
grid --methods ua_mt,entropy_min,cct,ict,self_training,ups,dtc,ssnet,cps,bcp,acmt --datasets kvasir --budgets 5% \
    --seeds 0,1,2 --protocol kvasir-cpu
# issue 9: semisam_plus at both budgets (~1 h per record: two generalists decode every iteration)
grid --methods semisam_plus --datasets kvasir --budgets 5%,10% --seeds 0,1,2 --protocol kvasir-cpu
# issue 12: samdsk vs supervised at 10 % (first record fills the proposal cache: ~900 images x 15-20 s)
grid --methods samdsk --datasets kvasir --budgets 10% --seeds 0,1,2 --protocol kvasir-cpu
