#!/usr/bin/env bash
# Everything a lent GPU is for, in one call: the GPU tests, `cyclestudio bench --device cuda:0`
# and the PyTorch reference on the same GPU, then one table (s/iteration, peak GPU memory,
# translate images/s at 256² and 1024², ratio to PyTorch).
#
# The GPU machine has no Rust, so the binaries are built here first and carried:
#
#   bench/gpu.sh --prepare    # here: cuda build (.ci/cuda-build.sh), then the release binary and
#                             # the GPU test executable, compressed, into target-gpu/ (~20 MiB)
#   bench/gpu.sh              # there, from the repository root, with target-gpu carried:
#                             # device tool: run(command="bench/gpu.sh", carry=["target-gpu"], timeout_s=600)
#
# On the GPU machine it needs python3 with torch (its pip CUDA 13 libraries provide cuBLAS and
# cuRAND) and the driver's libcuda.so.1. Results also go to $OUT (or GPU_OUT) when set:
# gpu-tests.log, bench-ours.json, bench-torch.jsonl, gpu-table.md. Expected to take 3-5 minutes on an
# H200 (not yet run there); if the GPU tests skip (no usable device) it stops after them.
# Env: CASES (default train128,train256,infer256,infer1024), WARMUP (2), REPEATS (5), PRECISION
# (fp32, or bf16: our --precision bf16 against PyTorch's bf16 autocast).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=target-gpu

if [ "${1:-}" = "--prepare" ]; then
    set -e
    ./.ci/cuda-build.sh
    # shellcheck source=/dev/null
    . target-cuda/cuda-env.sh
    # The GPU tests' executable: cargo names it with a hash, so ask cargo which one it is.
    tests=$(cuda_cargo test --release --features cuda --test gpu --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"): print(m["executable"])')
    [ -x "$tests" ] || { echo "gpu.sh: no GPU test executable found" >&2; exit 1; }
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    # Stripped and xz-compressed: candle's CUDA kernels are PTX text, which compresses ~10x, so
    # both fit the 64 MiB a call may carry.
    for pair in "target-cuda/release/cyclestudio:cyclestudio" "$tests:gpu-tests"; do
        src=${pair%%:*} name=${pair##*:}
        strip -o "$CARRY/$name" "$src"
        xz -T2 -6 -f "$CARRY/$name"
    done
    git rev-parse HEAD > "$CARRY/commit"
    git status --porcelain --untracked-files=no | grep -q . && echo "(built from a working tree with uncommitted changes)" >> "$CARRY/commit"
    ls -l "$CARRY"
    du -sh "$CARRY"
    echo "now, on a lent GPU: bench/gpu.sh (carry $CARRY)"
    exit 0
fi

OUTDIR="${GPU_OUT:-${OUT:-}}"
CASES="${CASES:-train128,train256,infer256,infer1024}"
WARMUP="${WARMUP:-2}"
REPEATS="${REPEATS:-5}"
PRECISION="${PRECISION:-fp32}"
PY="${PYTHON:-python3}"
BIN_DIR=$(mktemp -d)
[ -d "$CARRY" ] || { echo "gpu.sh: $CARRY/ is missing: run bench/gpu.sh --prepare on the build machine and carry it" >&2; exit 2; }
echo "== build: $(tr '\n' ' ' < "$CARRY/commit" 2>/dev/null)"
for name in cyclestudio gpu-tests; do
    if [ -f "$CARRY/$name.xz" ]; then
        "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$CARRY/$name.xz" "$BIN_DIR/$name"
    else
        cp "$CARRY/$name" "$BIN_DIR/$name"
    fi
    chmod +x "$BIN_DIR/$name"
done

# The CUDA libraries the binaries open at their first CUDA call (libcublas, libcublasLt, libcurand:
# PyTorch's pip packages, nvidia/cu13/lib) and the driver's libcuda.so.1.
LIBDIRS=$("$PY" - <<'EOF'
import os, site, sys
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    for sub in ("cu13/lib",):
        d = os.path.realpath(os.path.join(sp, "nvidia", sub))
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
EOF
)
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    for l in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -e "$l/libcuda.so.1" ] && LIBDIRS="${LIBDIRS:+$LIBDIRS:}$l" && break
    done
fi
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$("$PY" -c 'import ctypes, sys
for n in sys.argv[1:]:
    try: ctypes.CDLL(n)
    except OSError as e: print(e)' libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)
if [ -n "$missing" ]; then
    echo "gpu.sh: CUDA libraries not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):" >&2
    echo "$missing" >&2
    exit 127
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/== gpu: /'

status=0
echo "== GPU tests (tests/gpu.rs on cuda:0)"
t0=$(date +%s)
"$BIN_DIR/gpu-tests" --test-threads=1 2>&1 | tee /tmp/gpu-tests.log
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== GPU tests took $(( $(date +%s) - t0 )) s"
if grep -q 'skipped: ' /tmp/gpu-tests.log; then
    # Nothing below can run either: stop before spending device time on it.
    echo "gpu.sh: the GPU tests skipped: no usable CUDA device (see above)" >&2
    [ -n "$OUTDIR" ] && mkdir -p "$OUTDIR" && cp /tmp/gpu-tests.log "$OUTDIR"/
    exit 1
fi

echo "== cyclestudio bench --device cuda:0 --precision $PRECISION --cases $CASES (warm-up $WARMUP, $REPEATS timed runs)"
# The first CUDA call of a process compiles candle's PTX in the driver (cached on disk after):
# one translation first, so no case's warm-up pays for it.
"$BIN_DIR/cyclestudio" bench --device cuda:0 --cases infer256 --warmup 0 --repeats 1 >/dev/null 2>&1
"$BIN_DIR/cyclestudio" bench --device cuda:0 --precision "$PRECISION" --cases "$CASES" --warmup "$WARMUP" --repeats "$REPEATS" --json /tmp/bench-ours.json || status=1
echo "== CUT and FastCUT beside CycleGAN (ours only; the PyTorch script has no CUT)"
"$BIN_DIR/cyclestudio" bench --device cuda:0 --precision "$PRECISION" --cases "${CUT_CASES:-train256,cut256,fastcut256}" --warmup "$WARMUP" --repeats "$REPEATS" --json /tmp/bench-cut.json || status=1
echo "== PyTorch reference on cuda"
"$PY" bench/torch_reference.py --device cuda --precision "$PRECISION" --cases "$CASES" --warmup "$WARMUP" --repeats "$REPEATS" | tee /tmp/bench-torch.jsonl || status=1

"$PY" - /tmp/bench-ours.json /tmp/bench-torch.jsonl <<'EOF' | tee /tmp/gpu-table.md
import json, sys
try:
    ours = {r["id"]: r for r in json.load(open(sys.argv[1]))}
except Exception as e:
    ours = {}
    print(f"(no cyclestudio results: {e})")
torch = {}
for line in open(sys.argv[2]):
    try:
        r = json.loads(line)
        torch[r["id"]] = r
    except Exception:
        pass
any_t = next(iter(torch.values()), {})
print(f"\nGPU: {any_t.get('device', '?')}; PyTorch {any_t.get('torch', '?')} (cuDNN {any_t.get('cudnn')}, TF32 conv {any_t.get('tf32_conv')}); batch 1, medians")
print("| case | cyclestudio | PyTorch | ratio | images/s ours / PyTorch | peak GPU MiB used ours / PyTorch | pool (reserved) ours / PyTorch | device total at end ours / PyTorch |")
print("|---|---|---|---|---|---|---|---|")
for k in list(ours) + [k for k in torch if k not in ours]:
    o, t = ours.get(k, {}), torch.get(k, {})
    mo, mt = o.get("device_memory") or {}, t.get("device_memory") or {}
    so, st = o.get("median_s"), t.get("median_s")
    f = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) else "–"
    ratio = f(so / st, ".2f") + "×" if so and st else "–"
    ips = f"{f(1 / so, '.1f') if so else '–'} / {f(1 / st, '.1f') if st else '–'}" if k.startswith("infer") else "–"
    print(f"| {o.get('what') or t.get('what')} | {f(so, '.3f')} s | {f(st, '.3f')} s | {ratio} | {ips} | "
          f"{f(mo.get('peak_used_mib'), '.0f')} / {f(mt.get('peak_used_mib'), '.0f')} | "
          f"{f(mo.get('peak_reserved_mib'), '.0f')} / {f(mt.get('peak_reserved_mib'), '.0f')} | "
          f"{f(mo.get('device_used_mib'), '.0f')} / {f(mt.get('device_used_mib'), '.0f')} |")
EOF

if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    cp /tmp/gpu-tests.log /tmp/bench-ours.json /tmp/bench-cut.json /tmp/bench-torch.jsonl /tmp/gpu-table.md "$OUTDIR"/ 2>/dev/null
fi
rm -rf "$BIN_DIR"
exit $status
