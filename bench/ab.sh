#!/usr/bin/env bash
# Compares two cyclestudio binaries (or wrappers that add flags) in alternating rounds on this
# machine (A, B; A, B; …) and prints, per case, each side's median of its per-round medians and
# the per-round ratios B/A (below 1 = B faster). Alternating matters here as in compare.sh: the
# machine's speed drifts by ±10 % between minutes, so only runs made side by side compare.
# Usage: bench/ab.sh CASES ROUNDS REPEATS BIN_A BIN_B [extra bench args, e.g. --precision bf16]
# e.g.   cp target/release/cyclestudio /tmp/before; …rebuild…;
#        bench/ab.sh train128,infer256 3 3 /tmp/before target/release/cyclestudio --precision bf16
set -euo pipefail
cases=$1 rounds=$2 repeats=$3 a=$4 b=$5
shift 5
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
    "$a" bench --cases "$cases" --repeats "$repeats" "$@" --json "$out/a.$r.json" >/dev/null
    "$b" bench --cases "$cases" --repeats "$repeats" "$@" --json "$out/b.$r.json" >/dev/null
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda side: [{c["id"]: c for c in json.load(open(f"{out}/{side}.{r}.json"))} for r in range(1, rounds + 1)]
a, b = load("a"), load("b")
for k in a[0]:
    ma, mb = [r[k]["median_s"] for r in a], [r[k]["median_s"] for r in b]
    ratios = [y / x for x, y in zip(ma, mb)]
    rss = (max(r[k]["peak_rss_mib"] for r in a), max(r[k]["peak_rss_mib"] for r in b))
    print(f"{k}: A {statistics.median(ma):.3f} s, B {statistics.median(mb):.3f} s, B/A {statistics.median(ratios):.3f} "
          f"(per round {', '.join(f'{x:.3f}' for x in ratios)}), peak RSS {rss[0]:.0f} / {rss[1]:.0f} MiB")
PY
