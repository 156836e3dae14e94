#!/usr/bin/env bash
# Runs benches/load.sh several times and prints, for each workload, the median over the runs of
# each ratio against nginx (each ratio taken within one run, so like is compared with like).
# One run on a shared 2-core machine moves by ±30 %, and nginx's own row as much as anyone's;
# the median of a few runs is the figure to quote.
#
#   [WORKERS=n] bash benches/load-runs.sh [runs] [seconds]     (default 3 runs of 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DUR=${2:-10}
OUT=$(mktemp -d /tmp/tollgate-load-runs.XXXXXX)
for i in $(seq "$RUNS"); do
  echo "run $i of $RUNS ..." >&2
  bash benches/load.sh "$DUR" >"$OUT/run$i.txt" 2>&1 || { echo "run $i failed, see $OUT/run$i.txt" >&2; exit 1; }
done
python3 - "$OUT" "$RUNS" <<'EOF'
import statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
tables = []
for i in range(1, runs + 1):
    rows = {}
    for line in open(f"{out}/run{i}.txt"):
        f = line.replace("tollgate (cache on)", "tollgate_cached").split()
        if len(f) == 6 and "/" in f[0] and f[1][0].isdigit():
            rows[f[0]] = dict(rps=float(f[1]), p50=float(f[2]), p99=float(f[3]), cpu=float(f[5]))
    tables.append(rows)
print(f"median over {runs} runs of load.sh ({out}/run*.txt), each ratio against nginx in the same run")
print(f"{'workload':32} {'req/s':>8} {'p99':>8} {'cpu/req':>8} {'p50 added ms':>13}")
for w in ("status", "gensmall", "gen1m", "gen10m"):
    names = ["tollgate_nocache", "bare"] if w == "status" else ["tollgate", "bare"]
    if w == "status":
        names.append("tollgate_cached")
    for name in names:
        key = f"{w}/{name}"
        if not all(key in t and f"{w}/nginx" in t for t in tables):
            continue
        def med(fn):
            return statistics.median(fn(t[key], t[f"{w}/nginx"]) for t in tables)
        label = key.replace("tollgate_nocache", "tollgate").replace("tollgate_cached", "tollgate, cache on (a feature)")
        print(f"{label:32} {med(lambda a, n: a['rps'] / n['rps']):8.2f} {med(lambda a, n: a['p99'] / n['p99']):8.2f}"
              f" {med(lambda a, n: a['cpu'] / n['cpu']):8.2f} {med(lambda a, n: a['p50'] - n['p50']):13.2f}")
EOF
