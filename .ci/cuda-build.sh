#!/usr/bin/env bash
# CI step: compile the `cuda` feature (binary and every test executable) without a GPU, so a compile
# error in GPU-only code fails CI. Installs NVIDIA's compiler from PyPI (pinned) and a link-only stub
# libcuda as ../shared/gpu/BUILD.md describes; builds into its own target folder (target-cuda) so the
# CPU build is untouched. Measured from an empty target-cuda on 2 shared cores: 32 min (build 27 min,
# mostly nvcc on candle's kernels; test executables 5 min); about 20 s once built.
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

# candle links libcuda at build time (cudarc dynamic-linking); no wheel ships it. A stub exporting
# every driver symbol cudarc declares satisfies the linker; it is never shipped (the GPU machine's
# driver provides the real libcuda.so.1 at run time).
cargo fetch --locked -q
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(awk '/^name = "cudarc"/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)" | head -1)"
mkdir -p "$LINK"
grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
  | awk '{print "int " $1 "(void){return 999;}"}' > "$LINK/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/stub.c"
for l in cublas cublasLt nvrtc cudart; do ln -sf "$CU/lib/lib$l.so.13" "$LINK/lib$l.so"; done
ln -sf "$CU/lib/libcurand.so.10" "$LINK/libcurand.so"
echo "cuda build: toolchain ready in $(( $(date +%s) - start )) s ($("$CU/bin/nvcc" --version | tail -1))"

# CUDA_COMPUTE_CAP=90: the lent machines are H100/H200 (sm_90).
export CUDA_HOME="$CU" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
       CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}" \
       RUSTFLAGS="-L native=$LINK" CARGO_TARGET_DIR="$TARGET"
mkdir -p "$TARGET"
# The same environment for later cargo calls on this target (bench/gpu.sh --prepare): any
# difference in it would rebuild everything.
for v in CUDA_HOME PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION CUDAFORGE_THREADS RUSTFLAGS CARGO_TARGET_DIR; do
    printf 'export %s=%q\n' "$v" "${!v}"
done > "$TARGET/cuda-env.sh"
cargo build --release --features cuda --locked
cargo test --release --features cuda --locked --no-run
echo "cuda build: binary and test executables built in $(( $(date +%s) - start )) s (target: $TARGET)"
