//! The arithmetic of the convolutions: fp32, or bf16 operands with fp32 accumulation
//! (`--precision bf16`). Chosen per thread for the work run inside `with_precision`, so a
//! translation in bf16 and an fp32 one can run side by side (tests do), and read by the matrix
//! products (`gemm`) and by the device-generic convolutions.

use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// What the convolutions multiply in. Master weights, optimiser state, normalisation
/// statistics, losses and reductions are fp32 in both, as under PyTorch's autocast.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere (the reference's arithmetic, bit for bit the results of earlier versions).
    #[default]
    Fp32,
    /// bf16 operands and fp32 sums in the im2col, transposed and narrow convolutions (forward
    /// and both backward passes); the Winograd ones keep fp32 (their transforms would amplify
    /// bf16's rounding 20–40×), except on a CPU with AMX, where they are direct bf16 sums too
    /// (in training and in translations).
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// The precision of the work running on this thread.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Runs `f` with this thread's convolutions in `precision` (restored afterwards, also on panic).
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    super::with_local(&CURRENT, precision, f)
}

/// The precision that will really run for a request on `device`, and a message for the user
/// where it differs: bf16 on a CPU without bf16 instructions runs in fp32 (our bf16 kernels need
/// AVX512-BF16, and take AMX where the CPU has it too; emulating them would be slower than
/// fp32). On a GPU, and on the device-generic path, bf16 convolutions are candle's.
pub fn effective(requested: Precision, device: &Device) -> (Precision, Option<String>) {
    if requested == Precision::Bf16 && device.is_cpu() && !super::settings().generic && super::gemm_bf16::hardware().is_none() {
        let msg = "this CPU has no bf16 instructions (AVX512-BF16), so --precision bf16 would be slower than fp32: running in fp32";
        return (Precision::Fp32, Some(msg.to_string()));
    }
    (requested, None)
}

/// The instruction set of this CPU's bf16 kernels, if it has one (else bf16 runs fp32).
pub fn bf16_hardware() -> Option<&'static str> {
    super::gemm_bf16::hardware()
}

/// Whether this thread's CPU matrix products run in bf16: asked for, and possible here.
pub(crate) fn cpu_bf16() -> bool {
    current() == Precision::Bf16 && super::gemm_bf16::hardware().is_some()
}
