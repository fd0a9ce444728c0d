#!/usr/bin/env bash
# Builds cyclestudio against a copy of candle-core whose backward pass stores the first gradient
# that reaches a tensor as it is, instead of adding it into a fresh `zeros_like` (what candle
# 0.11.1's `GradStore::or_insert` callers do for every gradient). The same change is proposed
# upstream (huggingface/candle pull requests #3578 and #3822); this script is for measuring it
# against the normal build, e.g. `bench/ab.sh train128,train256 4 3 target/release/cyclestudio
# target-candle-patch/release/cyclestudio --precision bf16` (bench/RESULTS.md, "An eleventh
# round": train128 0.953×, and bf16 activations as fast as f32 ones). Nothing here changes the
# normal build: the copy goes to target-candle-patch/, the [patch] is given on the command line
# and Cargo.lock is put back afterwards. Needs python3 and the crates fetched (`cargo fetch`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target-candle-patch
cargo fetch --locked -q
VERSION="$(awk '/^name = "candle-core"/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)"
SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$VERSION" | head -1)"
PATCHED="$(realpath -m "$OUT")/patched/candle-core-$VERSION"
rm -rf "$PATCHED" && mkdir -p "$(dirname "$PATCHED")" && cp -a "$SRC" "$PATCHED"
python3 - "$PATCHED/src/backprop.rs" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
# `let s = grads.or_insert(x)?; *s = s.add(&g)?` → `grads.accumulate(x, &g)?` where g is a name.
pair = re.compile(r'let (\w+) = grads\.or_insert\((\*?\w+)\)\?;\n\s*\*\1 = \1\.add\((&\w+)\)\?;?')
src, n = pair.subn(lambda m: f'grads.accumulate({m.group(2)}, {m.group(3)})?;', src)
helper = '''    /// Adds `grad` to `tensor`'s gradient, or stores it as the gradient if it is the first.
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                entry.insert(sum);
            }
            Entry::Vacant(entry) => {
                entry.insert(grad.clone());
            }
        }
        Ok(())
    }

    fn or_insert(&mut self, tensor: &Tensor) -> Result<&mut Tensor> {'''
anchor = '    fn or_insert(&mut self, tensor: &Tensor) -> Result<&mut Tensor> {'
if n < 30 or src.count(anchor) != 1:
    sys.exit(f"candle_first_gradient: {path} is not as expected ({n} sums found); see the script")
open(path, 'w').write(src.replace(anchor, helper))
print(f"candle_first_gradient: {n} gradient sums changed in {path}")
PY
printf '[patch.crates-io]\ncandle-core = { path = "%s" }\n' "$PATCHED" > "$OUT/patch.toml"
cp Cargo.lock "$OUT/Cargo.lock.orig"
rc=0
cargo --config "$OUT/patch.toml" build --release --target-dir "$OUT" || rc=$?
cp "$OUT/Cargo.lock.orig" Cargo.lock
[ "$rc" = 0 ] && echo "built: $OUT/release/cyclestudio"
exit "$rc"
