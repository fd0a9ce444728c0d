#!/usr/bin/env bash
# CI step: compile the `cuda` feature (binary and every test executable) without a GPU, so a compile
# error in GPU-only code fails CI, then checks that the binary starts and translates on the CPU of a
# machine without the NVIDIA driver. Installs NVIDIA's compiler from PyPI (pinned); builds into its
# own target folder (target-cuda) so the CPU build is untouched. Measured from an empty target-cuda
# on 2 shared cores: 32 min (build 27 min, mostly nvcc on candle's kernels; test executables 5 min);
# about 50 s once built, the checks included.
# Env: CUDA_VENV (default /opt/cuda-venv), CUDA_LINK (default /opt/cudalink), CUDA_TARGET (target-cuda),
#      CUDA_BUILD_SKIP=1 to skip the step (prints why).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CUDA_BUILD_SKIP:-0}" = 1 ]; then echo "cuda build: skipped (CUDA_BUILD_SKIP=1)"; exit 0; fi
start=$(date +%s)
VENV="${CUDA_VENV:-/opt/cuda-venv}"
LINK="${CUDA_LINK:-/opt/cudalink}"
TARGET="${CUDA_TARGET:-target-cuda}"

# nvcc and the CUDA 13 libraries from PyPI. nvidia-nvvm is pinned on purpose: a newer one emits PTX
# that driver 580 (the lent GPU machines) cannot load.
PINS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
      nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $PINS
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$CU/bin/nvcc" ] || { echo "cuda build: nvcc not found under $CU" >&2; exit 1; }

# One binary for mixed fleets: the cuda build must start, and run CPU work, on a machine without the
# NVIDIA driver or CUDA libraries. Two things would make them NEEDED at start:
# - candle-core 0.11.1 asks cudarc for `dynamic-linking` (libcuda.so.1, cuBLAS, cuRAND), and cudarc
#   refuses `dynamic-loading` beside it, so no feature of ours can switch it. The cuda build uses a
#   copy of candle-core whose one change is that feature (cudarc then opens the libraries at the
#   first CUDA call; src/train/run.rs checks them first and says what is missing). The copy is put
#   in with a [patch] given on the command line (cuda_cargo below), so the CPU build and Cargo.lock
#   are untouched.
# - candle-kernels links the CUDA runtime (-lcudart) for its MoE kernels: the link folder holds only
#   the static runtime, as libcudart.a, which opens the driver itself when first used.
cargo fetch --locked -q
CANDLE_VERSION="$(awk '/^name = "candle-core"/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)"
CANDLE_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$CANDLE_VERSION" | head -1)"
PATCHED="$(realpath -m "$TARGET")/patched/candle-core-$CANDLE_VERSION"
if [ ! -f "$PATCHED/Cargo.toml" ]; then
    rm -rf "$PATCHED.tmp" && mkdir -p "$(dirname "$PATCHED")"
    cp -a "$CANDLE_SRC" "$PATCHED.tmp"
    sed -i 's/^\( *\)"dynamic-linking",$/\1"dynamic-loading",/' "$PATCHED.tmp/Cargo.toml"
    if grep -q '"dynamic-linking"' "$PATCHED.tmp/Cargo.toml" || ! grep -q '"dynamic-loading"' "$PATCHED.tmp/Cargo.toml"; then
        echo "cuda build: candle-core $CANDLE_VERSION's cudarc features are not as expected; see $PATCHED.tmp/Cargo.toml" >&2
        exit 1
    fi
    mv "$PATCHED.tmp" "$PATCHED"
fi
mkdir -p "$TARGET"
printf '[patch.crates-io]\ncandle-core = { path = "%s" }\n' "$PATCHED" > "$TARGET/patch.toml"
mkdir -p "$LINK" && rm -f "$LINK"/lib{cuda,cublas,cublasLt,nvrtc,cudart,curand}.so "$LINK/stub.c"
ln -sfn "$CU/lib/libcudart_static.a" "$LINK/libcudart.a"
echo "cuda build: toolchain ready in $(( $(date +%s) - start )) s ($("$CU/bin/nvcc" --version | tail -1))"

# CUDA_COMPUTE_CAP=90: the lent machines are H100/H200 (sm_90).
export CUDA_HOME="$CU" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
       CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}" \
       RUSTFLAGS="-L native=$LINK" CARGO_TARGET_DIR="$TARGET"
# The same environment for later cargo calls on this target (bench/gpu.sh --prepare): any
# difference in it would rebuild everything. cuda_cargo is cargo with the patched candle-core; cargo
# rewrites Cargo.lock for the patch, so the lock is put back afterwards.
cuda_cargo() {
    cp Cargo.lock "$CARGO_TARGET_DIR/Cargo.lock.main"
    local rc=0
    cargo --config "$CARGO_TARGET_DIR/patch.toml" "$@" || rc=$?
    cp "$CARGO_TARGET_DIR/Cargo.lock.main" Cargo.lock
    return $rc
}
{
    for v in CUDA_HOME PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION CUDAFORGE_THREADS RUSTFLAGS CARGO_TARGET_DIR; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    declare -f cuda_cargo
} > "$TARGET/cuda-env.sh"
trap 'cp "$CARGO_TARGET_DIR/Cargo.lock.main" Cargo.lock 2>/dev/null || true' EXIT
cuda_cargo build --release --features cuda
cuda_cargo test --release --features cuda --no-run
echo "cuda build: binary and test executables built in $(( $(date +%s) - start )) s (target: $TARGET)"

# The binary starts without the driver and runs CPU work; asked for a GPU it says what is missing.
BIN="$TARGET/release/cyclestudio"
if needed=$(readelf -d "$BIN" | grep -E 'NEEDED.*(libcuda|libcublas|libcurand|libcudart|libnvrtc)'); then
    echo "cuda build: $BIN still needs CUDA libraries at start:" >&2; echo "$needed" >&2; exit 1
fi
if [ -e /dev/nvidiactl ] || ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    echo "cuda build: this machine has the NVIDIA driver; the driverless start is not checked here"
else
    check=$(mktemp -d)
    "$BIN" translate datasets/demo/testA/"$(ls datasets/demo/testA | head -1)" --to color --device cpu \
        --checkpoints "$check/none" --output "$check/out.png" >/dev/null
    [ -s "$check/out.png" ] || { echo "cuda build: translate --device cpu wrote nothing" >&2; exit 1; }
    rc=0; "$BIN" translate "$check/out.png" --to color --device cuda:0 --checkpoints "$check/none" --output "$check/gpu.png" 2> "$check/err" || rc=$?
    if [ "$rc" = 0 ] || grep -q panicked "$check/err" || ! grep -q 'libcuda.so.1' "$check/err"; then
        echo "cuda build: --device cuda:0 without a driver should fail with a clear message (exit $rc):" >&2
        cat "$check/err" >&2; exit 1
    fi
    echo "cuda build: the binary runs on this driverless CPU machine; --device cuda:0 says: $(grep -m1 error "$check/err" | head -c 300)"
    # And with a driver that has no GPU (a stub libcuda.so.1 whose every call answers
    # CUDA_ERROR_NO_DEVICE) beside the real cuBLAS and cuRAND: cudarc opens them all at run time and
    # the error is the driver's, not a panic.
    CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(awk '/^name = "cudarc"/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)" | head -1)"
    grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
        | awk '{print "int " $1 "(void){return 100;}"}' > "$check/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$check/libcuda.so.1" "$check/stub.c"
    rc=0; LD_LIBRARY_PATH="$check:$CU/lib" "$BIN" translate "$check/out.png" --to color --device cuda:0 \
        --checkpoints "$check/none" --output "$check/gpu.png" 2> "$check/err" || rc=$?
    if [ "$rc" = 0 ] || grep -q panicked "$check/err" || ! grep -q 'CUDA_ERROR_NO_DEVICE' "$check/err"; then
        echo "cuda build: --device cuda:0 with a driver but no GPU should fail with the driver's error (exit $rc):" >&2
        cat "$check/err" >&2; exit 1
    fi
    echo "cuda build: with a driver but no GPU, --device cuda:0 says: $(grep -m1 error "$check/err" | head -c 200)"
    rm -rf "$check"
fi
