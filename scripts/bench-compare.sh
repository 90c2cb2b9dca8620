#!/usr/bin/env bash
# Runs the standard workloads (BENCHMARKS.md) on flowstate and then on Apache
# Flink's own backends, back to back on this machine, and prints one table:
# workload, backend, metric, flowstate, Flink, ratio (flowstate / Flink).
#
#   bash scripts/bench-compare.sh [W1|W2|W3|T1|S1|all] [--quick] [--keys N]
#
# Flink's harness is not part of this repository: set FLINK_BENCH to its
# run.sh (default ../shared/anchors/flink-bench/run.sh beside this clone);
# it runs W1, W2 and W3 (T1 and S1 are flowstate's alone; W3 runs only when named). The raw outputs are
# kept in $OUT (default target/bench-compare), and the plots of the run are
# rendered into $PLOTS (default $OUT/plots).
set -euo pipefail
cd "$(dirname "$0")/.."
workload="${1:-all}"
shift || true
flink="${FLINK_BENCH:-../shared/anchors/flink-bench/run.sh}"
out="${OUT:-target/bench-compare}"
plots="${PLOTS:-$out/plots}"
mkdir -p "$out"
cargo build --release -p flowstate-bench --bin workload -p flowstate-bench-report --bin bench-report
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/workload" "$workload" "$@" > "$out/flowstate.tsv"
if [[ "$workload" == T1 || "$workload" == S1 ]]; then
    : > "$out/flink.tsv"
elif [[ -x "$flink" || -f "$flink" ]]; then
    bash "$flink" "$workload" "$@" > "$out/flink.tsv" 2> "$out/flink.err"
else
    echo "bench-compare: no Flink harness at $flink; printing flowstate alone" >&2
    : > "$out/flink.tsv"
fi
python3 - "$out/flowstate.tsv" "$out/flink.tsv" <<'PY'
import sys

def load(path):
    rows = {}
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) == 6:
            rows[(f[1], f[2], f[3])] = (float(f[4]), f[5])
    return rows

ours, flink = load(sys.argv[1]), load(sys.argv[2])
print(f"{'workload':8} {'backend':28} {'metric':30} {'flowstate':>14} {'Flink':>14} {'ratio':>7}  unit")
for key in sorted(ours):
    value, unit = ours[key]
    other = flink.get(key)
    theirs = f"{other[0]:14.1f}" if other else f"{'-':>14}"
    ratio = f"{value / other[0]:7.2f}" if other and other[0] else f"{'-':>7}"
    print(f"{key[0]:8} {key[1]:28} {key[2]:30} {value:14.1f} {theirs} {ratio}  {unit}")
PY
"$bin/bench-report" "$out/flowstate.tsv" "$out/flink.tsv" "$plots" >&2
