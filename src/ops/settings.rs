//! The switches that choose between our CPU kernels and candle's own ops, read once from the
//! environment at the first tensor operation (they are for comparisons and tests, not for users,
//! so they are not command-line flags).
//!
//! * `CS_GENERIC_OPS`: every op takes the device-generic path, built from candle's own ops,
//!   that a CUDA device takes (`cpu_f32` is false everywhere). This is how the GPU's code path is
//!   tested on a machine without a GPU; our CPU kernels then refuse to run, so an op that would
//!   still reach one (and fail on a GPU, where they have no implementation) is an error.
//! * `CS_NATIVE_CONV`: convolutions use candle's own kernels; norm, padding and Adam keep ours.
//! * `CS_NO_WINOGRAD`: 3×3 convolutions use im2col instead of Winograd.
//! * `CS_WINOGRAD_TILE=2`: Winograd with F(2×2, 3×3) instead of F(4×4, 3×3).
//! * `CS_NO_SIMD`: our kernels' vector loops use the build's baseline instruction set.
//! * `CS_NO_AMX`: bf16 products use AVX512-BF16's kernels on a CPU with AMX.
//! * `CS_BF16_ACTIVATIONS`: in bf16, the networks store activations in bf16 between ops
//!   (`ops::activation_dtype`): less memory in training, more time (bench/RESULTS.md).

use super::SimdLevel;
use std::sync::OnceLock;

/// The switches, as read from the environment.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `CS_GENERIC_OPS`: the device-generic path everywhere.
    pub generic: bool,
    /// `CS_NATIVE_CONV`: candle's convolutions.
    pub native_conv: bool,
    /// `CS_NO_WINOGRAD`: no Winograd.
    pub no_winograd: bool,
    /// Winograd's output tile for 3×3 kernels where `CS_WINOGRAD_TILE` sets one (2, 4 or 6);
    /// `None`: 4 in fp32, in bf16 4 or 6, whichever multiplies less (`winograd::Kernel`).
    pub winograd_tile: Option<usize>,
    /// `CS_NO_AMX`: no AMX kernels.
    pub no_amx: bool,
    /// `CS_BF16_ACTIVATIONS`: bf16 activations under `--precision bf16`.
    pub bf16_activations: bool,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) simd: SimdLevel,
}

/// The environment variable that selects the device-generic path.
pub const GENERIC_OPS_VAR: &str = "CS_GENERIC_OPS";

/// Whether an environment variable is set to something other than empty, "0" or "false".
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The settings of this process, read on first use.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings {
        generic: flag(GENERIC_OPS_VAR),
        native_conv: flag("CS_NATIVE_CONV"),
        no_winograd: flag("CS_NO_WINOGRAD"),
        winograd_tile: std::env::var("CS_WINOGRAD_TILE").ok().and_then(|v| v.trim().parse().ok()).filter(|m| [2, 4, 6].contains(m)),
        no_amx: flag("CS_NO_AMX"),
        bf16_activations: flag("CS_BF16_ACTIVATIONS"),
        simd: if flag("CS_NO_SIMD") { SimdLevel::Baseline } else { detect_simd() },
    })
}

/// The widest instruction set of this CPU that `simd_fn!` bodies are compiled for.
fn detect_simd() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // The AVX-512 bodies are compiled with avx2 and fma enabled too, so those are checked
        // as well (every AVX-512 CPU has them, but a hypervisor may mask flags one by one).
        if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") && has!("avx2") && has!("fma") {
            return SimdLevel::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}
