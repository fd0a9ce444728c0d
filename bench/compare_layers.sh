#!/usr/bin/env bash
# Per-layer times against PyTorch: examples/layer_pairs.rs and bench/torch_layers.py (the same
# layers of one CycleGAN step, each alone, forward + backward) in alternating rounds, then per
# layer the median of the per-round ratios ours / PyTorch's. Where a whole step is off, this says
# which layers to look at (2026-12-07: the PatchGAN's 256→512 layer, then 1.4× PyTorch's).
#
#   bench/compare_layers.sh [fp32|bf16] [SIZE] [REPEATS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
precision=${1:-bf16} size=${2:-128} repeats=${3:-20} rounds=${4:-3}
cargo build --release --example layer_pairs >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$rounds"); do
  # Who goes first alternates, as in bench/compare.sh.
  if (( r % 2 )); then
    target/release/examples/layer_pairs "$precision" "$size" "$repeats" > "$out/ours.$r"
    python3 bench/torch_layers.py "$precision" "$size" "$repeats" > "$out/torch.$r"
  else
    python3 bench/torch_layers.py "$precision" "$size" "$repeats" > "$out/torch.$r"
    target/release/examples/layer_pairs "$precision" "$size" "$repeats" > "$out/ours.$r"
  fi
done
python3 - "$out" "$rounds" "$precision" "$size" <<'PY'
import statistics, sys
out, rounds, precision, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
read = lambda f: {l.split()[0]: float(l.split()[1]) for l in open(f) if l.strip()}
ours = [read(f"{out}/ours.{r}") for r in range(1, rounds + 1)]
torch = [read(f"{out}/torch.{r}") for r in range(1, rounds + 1)]
print(f"{precision}, {size}² images, {rounds} alternating rounds (medians of the rounds' medians)")
print("| layer | ours | PyTorch | ratio | per round |")
print("|---|---|---|---|---|")
for name in ours[0]:
    o = [r[name] for r in ours]; t = [r[name] for r in torch]
    ratios = [a / b for a, b in zip(o, t)]
    print(f"| {name} | {statistics.median(o):.2f} ms | {statistics.median(t):.2f} ms | {statistics.median(ratios):.2f}× | {', '.join(f'{x:.2f}' for x in ratios)} |")
PY
