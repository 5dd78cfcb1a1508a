#!/usr/bin/env bash
# The LA paper protocols on a GPU in one command: mean_teacher under `la` (UA-MT / SFR, 112x112x80)
# and semisam under its own paper protocol `semisam-la` (128^3, 1 + 3 batches, LCC 26), 4 labeled
# cases, seed 0; the complete records are exported (small files only) to leaderboards/measured/gpu/
# and the leaderboard of that folder is printed. Each record's provenance.json names the device
# (GPU model, memory, CUDA). Rerunning resumes / reuses finished records.
#
#   scripts/gpu_la_paper.sh                      # the paper protocols as written (6000 iterations)
#   scripts/gpu_la_paper.sh --iterations 300     # a shorter check (the override enters the identity:
#                                                # its rows say "not comparable: override iterations=300")
#   scripts/gpu_la_paper.sh --iterations 2 --dataset synthetic-3d --to /tmp/gpu   # CPU check of the script
#   scripts/gpu_la_paper.sh --dry-run            # print the commands only
#
# Time: not measured yet on a GPU (none was lent while this was written). The paper protocols train
# 6000 iterations each; semisam also runs the generalist on every slice of 3 unlabeled 128^3
# patches per iteration, so a full-length semisam run takes far longer than mean_teacher's. Give
# --iterations to fit a fixed GPU budget, and read the rows' override reason.
#
# Without CUDA the script refuses to run the full protocols (about 48 h per run on a CPU) unless
# --iterations is given. Environment: FMSSL_DATA (folder holding LA/), PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."

iterations=""
dataset="la"
labeled="4"
seed="0"
methods="mean_teacher,semisam"
runs="${FMSSL_RESULTS:-runs}/gpu-la-paper"
to="leaderboards/measured/gpu"
dry_run=0
python="${PYTHON:-python}"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --iterations) iterations="$2"; shift 2 ;;
        --dataset) dataset="$2"; shift 2 ;;
        --labeled) labeled="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --methods) methods="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --to) to="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_la_paper.sh: unknown argument '$1'; expected --iterations N, --dataset D, --labeled N, --seed S, --methods a,b, --runs DIR, --to DIR or --dry-run" >&2; exit 2 ;;
    esac
done
if [ -n "$iterations" ] && ! [[ "$iterations" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_la_paper.sh: --iterations '$iterations': expected a positive integer" >&2; exit 2
fi

cli=("$python" -m fmssl_bench.benchmark.cli)
extra=()
[ -n "$iterations" ] && extra+=(--iterations "$iterations")

if [ "$dry_run" = 0 ] && [ -z "$iterations" ]; then
    if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_la_paper.sh: no CUDA device: the paper protocols take about 48 h per run on a CPU; run on a GPU or pass --iterations N for a check" >&2
        exit 2
    fi
fi

run() {
    echo "+ $*"
    if [ "$dry_run" = 0 ]; then "$@"; fi
}

IFS=',' read -r -a method_list <<< "$methods"
for method in "${method_list[@]}"; do
    # no --protocol: each method runs its paper's protocol for the data set (Method.paper_protocols)
    run "${cli[@]}" --method "$method" --dataset "$dataset" --labeled "$labeled" --seed "$seed" \
        --out "$runs" --no-progress "${extra[@]}"
done
run "${cli[@]}" export --runs "$runs" --to "$to" --dataset "$dataset"
run "${cli[@]}" leaderboard --runs "$to" --dataset "$dataset" --write ""
