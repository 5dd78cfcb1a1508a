#!/usr/bin/env bash
# The CPU-tier grids still missing from leaderboards/measured, one core per invocation, resumable
# (finished records are skipped by identity, killed ones resume). Run from the repository root with
# the venv active; name the queues to run, in order (default: all). Two cores: two invocations; a
# record one holds is left for the end by the other, so the same queues in both share the work, and
# the shared FMSSL_FM_CACHE splits what their records have in common (SamDSK's proposals, generalist
# embeddings: an image one process is computing is waited for by the other, never computed twice):
#
#   nohup bash docs/benchmarks/cpu_grid.sh samdsk semisam_plus > runs/cpu-grid-1.log 2>&1 &
#   nohup bash docs/benchmarks/cpu_grid.sh samdsk semisam_plus > runs/cpu-grid-2.log 2>&1 &
#   fmssl-bench export --runs runs/cpu-grid --to leaderboards/measured && python docs/benchmarks/embed_measured.py
#
# The committed records are copied into the results root first, so they are cache hits, not reruns.
# FMSSL_FM_CACHE shares generalist embeddings and SamDSK's proposals between the records of the grid
# (costs below: one thread on a 2-core VM with the other core busy).
set -euo pipefail
: "${FMSSL_DATA:?set FMSSL_DATA to the folder holding Kvasir-SEG/ and LA/}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export FMSSL_FM_CACHE="${FMSSL_FM_CACHE:-$PWD/runs/fm-cache}"
out=runs/cpu-grid
mkdir -p "$out"
cp -rn leaderboards/measured/kvasir leaderboards/measured/la "$out"/ 2>/dev/null || true

grid() { fmssl-bench grid --out "$out" "$@"; }
queue() {
  case "$1" in
    # issue 11: sfr (base mean_teacher) vs mean_teacher at 5 % (~40-60 min per record)
    sfr) grid --methods sfr --datasets kvasir --budgets 5% --seeds 0,1,2 --protocol kvasir-cpu ;;
    # issue 10: the classic baselines, 3 seeds at one budget (~5-12 min per record)
    baselines) grid --methods ua_mt,entropy_min,cct,ict,self_training,ups,dtc,ssnet,cps,bcp,acmt --datasets kvasir \
                 --budgets 5% --seeds 0,1,2 --protocol kvasir-cpu ;;
    # issue 9: semisam_plus at both budgets (two generalists' mask decoders run on 4 unlabeled images every
    # iteration, ~0.14-0.23 s per prompt: ~45 min per record once the image embeddings are in FMSSL_FM_CACHE,
    # ~2.3 h while they are still being computed)
    semisam_plus) grid --methods semisam_plus --datasets kvasir --budgets 5%,10% --seeds 0,1,2 --protocol kvasir-cpu ;;
    # issue 12: samdsk vs supervised at 10 % (the proposals of ~900 images, 10-17 s each, fill the cache once;
    # 85 % of that is SAM's mask decoder, once per grid point; two invocations split the images; then ~15 min per record)
    samdsk) grid --methods samdsk --datasets kvasir --budgets 10% --seeds 0,1,2 --protocol kvasir-cpu ;;
    # issue 13: ifdl vs supervised on la-cpu at 8 labeled (pre-train + 2 rounds of MC dropout, LiteMedSAM
    # propagation over 22 unlabeled volumes and 300 re-training iterations)
    ifdl) grid --methods ifdl --datasets la --budgets 8 --seeds 0,1,2 --protocol la-cpu ;;
    *) echo "unknown queue $1 (expected sfr, baselines, semisam_plus, samdsk, ifdl)" >&2; exit 2 ;;
  esac
}
for q in "${@:-sfr baselines semisam_plus samdsk ifdl}"; do
  for name in $q; do queue "$name"; done
done
