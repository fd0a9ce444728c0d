#!/usr/bin/env bash
# CI step: the crate (library, binary, tests, examples) compiles for a Mac with Apple silicon,
# checked from here with `cargo check` (no linking, so no macOS SDK): code for other CPUs than
# x86-64 and other systems than Linux is otherwise never compiled, and once it stopped compiling
# unnoticed (the AMX stubs, 2026-12-07). Needs rustup to fetch the target's standard library; where
# that fails the step says so and is skipped. About 3 min on 2 cores (dependencies in check mode).
# Env: OTHER_PLATFORMS_SKIP=1 skips the step.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${OTHER_PLATFORMS_SKIP:-0}" = 1 ]; then echo "other platforms: skipped (OTHER_PLATFORMS_SKIP=1)"; exit 0; fi
TARGET=aarch64-apple-darwin
if ! rustup target add "$TARGET" >/dev/null 2>&1; then
  echo "warning: other platforms: rustup could not add $TARGET; not checked"
  exit 0
fi
start=$(date +%s)
RUSTFLAGS="-D warnings" cargo check --release --all-targets --target "$TARGET" --target-dir target-other
echo "other platforms: $TARGET checked in $(( $(date +%s) - start )) s"
