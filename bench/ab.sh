#!/usr/bin/env bash
# Compares two cyclestudio binaries (or wrappers that add flags) in alternating rounds on this
# machine (A, B; B, A; …) and prints, per case, each side's median of its per-round medians and
# the per-round ratios B/A (below 1 = B faster). Alternating matters here as in compare.sh: the
# machine's speed drifts by ±10 % between minutes, so only runs made side by side compare.
# Usage: bench/ab.sh CASES ROUNDS REPEATS BIN_A BIN_B [extra bench args, e.g. --precision bf16]
# e.g.   cp target/release/cyclestudio /tmp/before; …rebuild…;
#        bench/ab.sh train128,infer256 3 3 /tmp/before target/release/cyclestudio --precision bf16
set -euo pipefail
cases=$1 rounds=$2 repeats=$3 a=$4 b=$5
shift 5
out=$(mktemp -d)
# The two take turns going first (A in odd rounds, B in even ones), as compare.sh does after
# its fourth round found the later run of a pair 1–17 % slower; an A/A run of this script
# (one binary twice, 6 rounds of train128) gave B/A 0.99–1.01 either way, with single rounds
# 0.92–1.03: effects of a few percent need many rounds (bench/RESULTS.md, "An eleventh round").
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then order="a b"; else order="b a"; fi
    for side in $order; do
        if [[ $side == a ]]; then bin=$a; else bin=$b; fi
        "$bin" bench --cases "$cases" --repeats "$repeats" "$@" --json "$out/$side.$r.json" >/dev/null
    done
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
