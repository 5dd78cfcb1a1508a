#!/usr/bin/env bash
# Speed-up of a Ray grid with 2 workers over 1 (issue: "measure the speed-up of 2 workers over 1").
#
# The same 4-record grid (supervised, synthetic-2d, 4 seeds, N iterations) is run into a fresh
# results root with `--executor ray --workers W --cpus-per-run 1`, W = 1 and W = 2, alternating,
# REPEATS times each; every run's wall time (Ray start-up included) is printed and the medians and
# their ratio at the end. Run it on an otherwise idle machine: contention is what it measures.
#
#   bash docs/benchmarks/grid_workers.sh [ITERATIONS=300] [REPEATS=3]
set -euo pipefail
iterations="${1:-300}"
repeats="${2:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

one() {  # one grid with $1 workers; prints its wall seconds
    local root="$work/w$1-$2"
    local start end
    start=$(date +%s.%N)
    fmssl-bench grid --methods supervised --datasets synthetic-2d --budgets 4 --seeds 0,1,2,3 \
        --protocol synthetic-2d --iterations "$iterations" --out "$root" \
        --executor ray --workers "$1" --cpus-per-run 1 >"$root.log" 2>&1
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}

declare -a one_worker two_workers
for r in $(seq 1 "$repeats"); do
    a=$(one 1 "$r"); b=$(one 2 "$r")
    one_worker+=("$a"); two_workers+=("$b")
    echo "repeat $r: 1 worker ${a} s, 2 workers ${b} s"
done
python3 - "${one_worker[*]}" "${two_workers[*]}" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]
two = [float(x) for x in sys.argv[2].split()]
m1, m2 = statistics.median(one), statistics.median(two)
print(f"median wall: 1 worker {m1:.1f} s, 2 workers {m2:.1f} s; speed-up {m1 / m2:.2f}x")
PY
