#!/usr/bin/env bash
# FID Inception features on the CPU, side by side: `cyclestudio bench --cases inception8` against
# pytorch-fid's own InceptionV3 (bench/pytorch_fid_speed.py), same synthetic weights, batch of 8 at
# 299², alternating rounds (ours, pytorch-fid, ours, …); prints each round's medians and the ratio.
#   bench/compare_fid.sh [ROUNDS=3] [REPEATS=3] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; REPEATS=${2:-3}; THREADS=${3:-2}
BIN=target/release/cyclestudio
TMP=$(mktemp); trap 'rm -f "$TMP"' EXIT
ratios=()
for r in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS "$BIN" bench --cases inception8 --repeats "$REPEATS" --json "$TMP" >/dev/null 2>&1
  ours=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["median_s"])' "$TMP")
  torch=$(python3 bench/pytorch_fid_speed.py --threads "$THREADS" --repeats "$REPEATS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["median_s"])')
  ratio=$(python3 -c "print(f'{$ours/$torch:.2f}')")
  ratios+=("$ratio")
  echo "round $r: cyclestudio $ours s, pytorch-fid $torch s per batch of 8 → ratio $ratio   ($(cut -d' ' -f1-3 /proc/loadavg) load)"
done
python3 -c "import statistics,sys; r=[float(x) for x in sys.argv[1:]]; print(f'median ratio (ours / pytorch-fid) {statistics.median(r):.2f} over rounds {r}')" "${ratios[@]}"
