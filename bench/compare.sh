#!/usr/bin/env bash
# Runs `cyclestudio bench` and the PyTorch reference on this machine, one after the other, and
# prints each case's medians and the ratio cyclestudio / PyTorch (below 1 = cyclestudio faster).
# Usage: bench/compare.sh [cases, default train128,infer256,infer1024] [repeats, default 3]
# Needs: a release build (cargo build --release) and python3 with torch (pip install torch safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-train128,infer256,infer1024}
repeats=${2:-3}
out=$(mktemp -d)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
./target/release/cyclestudio bench --cases "$cases" --repeats "$repeats" --json "$out/ours.json" >/dev/null
python3 bench/torch_reference.py --cases "$cases" --repeats "$repeats" > "$out/torch.jsonl"
python3 - "$out/ours.json" "$out/torch.jsonl" <<'PY'
import json, sys
ours = {r["id"]: r for r in json.load(open(sys.argv[1]))}
torch = {r["id"]: r for r in map(json.loads, open(sys.argv[2]))}
print("| case | cyclestudio | PyTorch %s | time ratio | peak RSS ours / torch |" % next(iter(torch.values()))["torch"])
print("|---|---|---|---|---|")
for k, o in ours.items():
    t = torch[k]
    print(f"| {o['what']} | {o['median_s']:.3f} s | {t['median_s']:.3f} s | {o['median_s'] / t['median_s']:.2f}× | "
          f"{o['peak_rss_mib']:.0f} / {t['peak_rss_mib']:.0f} MiB |")
PY
