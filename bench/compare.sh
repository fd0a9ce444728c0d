#!/usr/bin/env bash
# Runs `cyclestudio bench` and the PyTorch reference on this machine in alternating rounds
# (ours, PyTorch; PyTorch, ours; …) and prints each case's medians over all timed runs and the
# median of the per-round ratios cyclestudio / PyTorch (below 1 = cyclestudio faster).
# Alternating matters on a shared machine whose speed drifts by ±20 % from one minute to the next:
# each round's ratio compares runs made a minute apart.
# Usage: bench/compare.sh [cases, default train128,infer256,infer1024] [repeats per round, default 3] [rounds, default 3]
# Precisions: OURS_PRECISION (default fp32; anything else is passed as `--precision X` to
# `cyclestudio bench`) and TORCH_PRECISION (fp32 or bf16 = torch.autocast bfloat16, passed as
# `--precision X` to bench/torch_reference.py), e.g. TORCH_PRECISION=bf16 bench/compare.sh.
# The CUT cases (cut128, cut256, …) need the CUT reference checkout (CUT_REF, default
# /tmp/cut-ref; see bench/torch_reference.py); without it PyTorch's column says "skipped".
# Needs: a release build (cargo build --release) and python3 with torch (pip install torch safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-train128,infer256,infer1024}
repeats=${2:-3}
rounds=${3:-3}
ours_precision=${OURS_PRECISION:-fp32}
torch_precision=${TORCH_PRECISION:-fp32}
ours_args=()
# Only a non-default precision is passed on (a binary without --precision still runs fp32).
if [ "$ours_precision" != fp32 ]; then ours_args=(--precision "$ours_precision"); fi
out=$(mktemp -d)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F); precision: cyclestudio $ours_precision, PyTorch $torch_precision"
echo "$rounds alternating rounds of $repeats timed runs per case (after one warm-up run)"
stat0=$(head -1 /proc/stat)
# The two sides take turns going first (ours in odd rounds, PyTorch in even ones): in back-to-back
# pairs of runs on this kind of machine the later run of a pair was 1–17 % slower whichever binary
# it was (bench/RESULTS.md, "A fourth round"), so a fixed order would favour one side.
ours() { ./target/release/cyclestudio bench --cases "$cases" --repeats "$repeats" ${ours_args[@]+"${ours_args[@]}"} --json "$out/ours.$1.json" >/dev/null; }
theirs() { python3 bench/torch_reference.py --cases "$cases" --repeats "$repeats" --precision "$torch_precision" > "$out/torch.$1.jsonl"; }
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then ours "$r"; theirs "$r"; else theirs "$r"; ours "$r"; fi
done
stat1=$(head -1 /proc/stat)
# Share of CPU time the hypervisor gave to other guests during the runs (the 8th field of
# /proc/stat's cpu line); a high or uneven share is what makes single runs unreliable here.
python3 -c 'import sys; a, b = ([int(x) for x in s.split()[1:]] for s in sys.argv[1:]); d = [y - x for x, y in zip(a, b)]; print(f"steal: {100 * d[7] / sum(d):.0f} % of CPU time during the runs")' "$stat0" "$stat1"
python3 - "$out" "$rounds" "$ours_precision" "$torch_precision" <<'PY'
import json, statistics, sys
out, rounds, ours_precision, torch_precision = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ours = [{r["id"]: r for r in json.load(open(f"{out}/ours.{i}.json"))} for i in range(1, rounds + 1)]
torch = [{r["id"]: r for r in map(json.loads, open(f"{out}/torch.{i}.jsonl"))} for i in range(1, rounds + 1)]
# The "torch" field is "<version>" for fp32 and "<version> bf16 autocast" for bf16.
version = next(iter(torch[0].values()))["torch"] if torch[0] else "(no case ran)"
label = version if torch_precision != "fp32" else f"{version} fp32"
print(f"| case | cyclestudio {ours_precision} | PyTorch {label} | time ratio (median of rounds) | per-round ratios | peak RSS ours / torch |")
print("|---|---|---|---|---|---|")
for k, o in ours[0].items():
    mine = statistics.median(s for r in ours for s in r[k]["seconds"])
    if not all(k in r for r in torch):
        # A case PyTorch's side skipped (the CUT cases without the reference checkout).
        print(f"| {o['what']} | {mine:.3f} s | skipped | – | – | {max(r[k]['peak_rss_mib'] for r in ours):.0f} / – MiB |")
        continue
    theirs = statistics.median(s for r in torch for s in r[k]["seconds"])
    ratios = [a[k]["median_s"] / b[k]["median_s"] for a, b in zip(ours, torch)]
    rss_o = max(r[k]["peak_rss_mib"] for r in ours)
    rss_t = max(r[k]["peak_rss_mib"] for r in torch)
    print(f"| {o['what']} | {mine:.3f} s | {theirs:.3f} s | {statistics.median(ratios):.2f}× | "
          f"{', '.join(f'{x:.2f}' for x in ratios)} | {rss_o:.0f} / {rss_t:.0f} MiB |")
PY
