//! Tensor operations the CycleGAN networks need, with autograd: fast CPU kernels (convolutions,
//! Winograd, fused instance norm, reflection padding), the device-generic fallbacks built from
//! candle's ops (what a GPU runs), losses, CPU settings and the switches between the two paths.
//! Layers: `gemm` (matrix products, scratch buffers; in bf16 through `gemm_bf16` where
//! `precision` says so) is the leaf; `winograd` uses it; `conv` uses
//! both; `pad` and `blur` (CUT's anti-aliasing filters) stand alone; `norm` uses `blur` (its fused
//! norm + blur-pool); `bias` uses `norm`'s activations; `residual` (a whole residual block in
//! training) uses `winograd` and `norm`, `conv_norm` (a convolution and its norm in training)
//! `conv` and `norm`.

/// Defines a function whose body is compiled for AVX-512, for AVX2 + FMA and for the build's
/// baseline, and runs the best one the CPU has (detected once). For the vectorised loops of our
/// kernels, which would otherwise be SSE2 only; the GEMMs (gemm crate) dispatch on their own.
/// Arguments are plain `name: Type` pairs; the body returns nothing.
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::ops::simd_level() {
                    // SAFETY: simd_level() reported these instruction sets on this CPU.
                    $crate::ops::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::ops::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::SimdLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub mod bias;
pub(crate) mod blur;
pub mod conv;
pub(crate) mod conv_norm;
pub(crate) mod gemm;
pub(crate) mod gemm_bf16;
pub mod norm;
pub mod pad;
pub mod precision;
pub mod residual;
pub mod settings;
mod winograd;

pub use norm::{instance_norm_act, instance_norm_residual, normalise_act, Act};
pub(crate) use norm::lane_sum;
pub use pad::reflect_pad2d;
pub use precision::{with_precision, Precision};
pub use settings::{settings, Settings, GENERIC_OPS_VAR};
pub use winograd::FilterCache;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, D};

/// Indices that reflect-pad a length-`n` axis by `pad` on both sides (PyTorch's ReflectionPad2d,
/// which does not repeat the edge sample): for n=5, pad=2 gives `[2,1,0,1,2,3,4,3,2]`.
pub fn reflect_indices(n: usize, pad: usize) -> Vec<u32> {
    let reflect = |i: isize| -> u32 {
        let n = n as isize;
        let period = 2 * (n - 1).max(1);
        let mut j = i.rem_euclid(period);
        if j >= n {
            j = period - j;
        }
        j as u32
    };
    (-(pad as isize)..(n + pad) as isize).map(reflect).collect()
}

/// Reflection padding of the two spatial axes of `xs` [B,C,H,W] → [B,C,H+2p,W+2p] (pad < H, W).
/// Built from `index_select`, whose backward (index-add) candle provides on every device; the
/// CPU uses `pad::reflect_pad2d`.
pub(crate) fn reflect_pad2d_composed(xs: &Tensor, pad: usize) -> Result<Tensor> {
    let (_b, _c, h, w) = xs.dims4()?;
    let dev = xs.device();
    let hi = Tensor::new(reflect_indices(h, pad), dev)?;
    let wi = Tensor::new(reflect_indices(w, pad), dev)?;
    xs.index_select(&hi, 2)?.index_select(&wi, 3)
}

/// Instance normalisation without affine parameters or running statistics (PyTorch's
/// InstanceNorm2d defaults): every (sample, channel) plane is normalised by its own mean and
/// biased variance, eps 1e-5.
pub fn instance_norm(xs: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-5;
    let (b, c, h, w) = xs.dims4()?;
    let flat = xs.reshape((b, c, h * w))?; // [B,C,HW]
    let mean = flat.mean_keepdim(D::Minus1)?; // [B,C,1]
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + EPS)?.sqrt()?.recip()?;
    centred.broadcast_mul(&inv_std)?.reshape((b, c, h, w))
}

/// LeakyReLU with the given negative slope: max(x, slope·x) for slope < 1.
pub fn leaky_relu(xs: &Tensor, slope: f64) -> Result<Tensor> {
    xs.maximum(&(xs * slope)?)
}

/// Mean absolute error between two tensors of the same shape.
pub fn l1_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.abs()?.mean_all()
}

/// Mean squared error between two tensors of the same shape.
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// Mean squared error against a constant target (LSGAN).
pub fn mse_to_const(pred: &Tensor, target: f64) -> Result<Tensor> {
    (pred - target)?.sqr()?.mean_all()
}

/// Binary cross-entropy with logits against a constant 0/1 target, numerically stable:
/// max(x,0) - x·t + log(1 + exp(-|x|)).
pub fn bce_logits_to_const(logits: &Tensor, target: f64) -> Result<Tensor> {
    let relu = logits.relu()?;
    let log_term = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((relu - (logits * target)?)? + log_term)?.mean_all()
}

/// Converts images between channel counts the way the generators expect them:
/// 3→1 by ITU-R 601 luma (as PIL's `convert('L')`), 1→3 by repetition, n→n unchanged.
pub fn adapt_channels(xs: &Tensor, channels: usize) -> Result<Tensor> {
    let (_b, c, _h, _w) = xs.dims4()?;
    match (c, channels) {
        (a, b) if a == b => Ok(xs.clone()),
        (1, n) => xs.repeat((1, n, 1, 1)),
        (3, 1) | (4, 1) => {
            let weights = Tensor::new(&[0.299f32, 0.587, 0.114], xs.device())?
                .to_dtype(xs.dtype())?
                .reshape((1, 3, 1, 1))?;
            xs.narrow(1, 0, 3)?.broadcast_mul(&weights)?.sum_keepdim(1)
        }
        (4, 3) => xs.narrow(1, 0, 3),
        (a, b) => candle_core::bail!("cannot convert {a}-channel images to {b} channels"),
    }
}

/// True if every element of the tensor is finite.
pub fn all_finite(xs: &Tensor) -> Result<bool> {
    let v = xs.to_dtype(DType::F32)?.flatten_all()?;
    let s = v.sqr()?.sum_all()?.to_scalar::<f32>()?;
    // The sum is non-finite if any element is; a finite but overflowing sum of squares is also
    // treated as a divergence, which is what it is for weights and losses here.
    Ok(s.is_finite())
}

thread_local! {
    static FIRST_ORDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `loss.backward()` for gradients that are not differentiated again (the training steps'): the
/// gradients our convolutions make are cut off from autograd as they are made. Otherwise a
/// weight's gradient, a tensor of the returned store, keeps through its op the gradient of its
/// layer's output (and Winograd's transformed copy of it) alive as long as the store — over the
/// rest of the backward pass and until the optimiser has run. candle cuts off only the
/// gradients it passes on (unless `CANDLE_GRAD_DO_NOT_DETACH` is set); ours stay
/// differentiable outside this call, for second-order gradients.
pub fn backward_first_order(loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
    with_local(&FIRST_ORDER, true, || loss.backward())
}

/// Runs `f` on a thread of rayon's pool while the calling thread waits (inline if it is one
/// already). The ops' parallel loops then start on a pool thread, which works on its own share
/// and hands the rest to the other threads, instead of queueing all of it from outside, waking
/// them and sleeping until they finish: a 128² training step and a 256² translation in bf16
/// took 0.91–0.92× the time (bench/RESULTS.md, "A ninth round"). The training step and the
/// translations (`FilterCache::scope`) run in it.
///
/// This thread's settings go with `f` (precision, bf16 activations); the state ops keep for
/// their own duration (first-order backward, norm statistics, kept filters) starts unset, as
/// at any entry point, and the pool thread's own is restored afterwards: a pool thread may take
/// this job while it waits inside another such job, whose state this one must not see.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let (precision, bf16_activations) = (precision::current(), BF16_ACTIVATIONS.with(std::cell::Cell::get));
    rayon::scope(|_| {
        with_precision(precision, || {
            with_local(&BF16_ACTIVATIONS, bf16_activations, || {
                with_local(&FIRST_ORDER, false, || FilterCache::set_aside(|| crate::model::norm_stats::set_aside(f)))
            })
        })
    })
}

/// Runs `f` with this thread's `key` holding `value` (`None`: state set aside), the previous
/// value put back afterwards (also on panic): [`with_local`] for state that is not `Copy`.
pub(crate) fn with_replaced<T: 'static, R>(key: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>, value: Option<T>, f: impl FnOnce() -> R) -> R {
    struct Restore<T: 'static>(&'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>, Option<T>);
    impl<T: 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            let previous = self.1.take();
            self.0.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(key, key.with(|c| c.replace(value)));
    f()
}

/// Runs `f` with this thread's `key` set to `value`, restored afterwards (also on panic).
pub(crate) fn with_local<T: Copy + 'static, R>(key: &'static std::thread::LocalKey<std::cell::Cell<T>>, value: T, f: impl FnOnce() -> R) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|c| c.replace(value)));
    f()
}

/// The gradients a backward pass of ours made, cut off from autograd inside
/// [`backward_first_order`].
pub(crate) fn made_grads(grads: (Option<Tensor>, Option<Tensor>)) -> (Option<Tensor>, Option<Tensor>) {
    if !FIRST_ORDER.with(std::cell::Cell::get) {
        return grads;
    }
    (grads.0.map(|g| g.detach()), grads.1.map(|g| g.detach()))
}

/// The widest vector instruction set `simd_fn!` bodies may use on this CPU (other architectures
/// than x86-64 have only the baseline).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum SimdLevel {
    Baseline,
    Avx2,
    Avx512,
}

/// Detected once (`settings`); `CS_NO_SIMD` set forces the baseline (to compare).
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn simd_level() -> SimdLevel {
    settings().simd
}

/// Whether the custom CPU kernels can take `xs`: an f32 tensor on the CPU, unless
/// `CS_GENERIC_OPS` sends everything down the device-generic path (anything else goes through
/// candle's own ops, as on a GPU).
pub(crate) fn cpu_f32(xs: &Tensor) -> bool {
    !settings().generic && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Under `CS_GENERIC_OPS` a custom CPU kernel must not run: on a GPU it has no implementation,
/// so reaching one means an op whose dispatch skipped the `cpu_f32` check.
fn refuse_under_generic() -> Result<()> {
    if settings().generic {
        candle_core::bail!("a CPU-only kernel ran under {GENERIC_OPS_VAR}: this op has no device-generic path (it would fail on a GPU)");
    }
    Ok(())
}

/// Whether our CPU kernels take `xs` as an activation: [`cpu_f32`], or a bf16 tensor on the CPU
/// (activations stored in bf16, [`activation_dtype`]).
pub(crate) fn cpu_act(xs: &Tensor) -> bool {
    !settings().generic && xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::BF16)
}

thread_local! {
    /// Whether this thread's networks store bf16 activations, from inputs of how many pixels on.
    static BF16_ACTIVATIONS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Pixels from which translations store bf16 activations ([`translating_in`]): below it the
/// tensors are small and the conversions cost more time than the memory saves (2-core Xeon with
/// AMX, the same binary either way: 256² 1.10× the time for 179 → 159 MiB, 512² 0.99× for 407 →
/// 215 MiB, 1024² 0.89× for 893 → 542 MiB; bench/RESULTS.md, "A thirteenth round").
const TRANSLATION_BF16_PIXELS: usize = 512 * 512;

/// The dtype the networks store activations in for an input `xs`: `xs`'s own, or bf16 where
/// that is switched on (`CS_BF16_ACTIVATIONS`, or [`with_bf16_activations`]) and this thread's
/// convolutions run in bf16 on our CPU kernels, as PyTorch's autocast keeps its convolutions'
/// outputs. Every op still computes in f32 and rounds its output once.
///
/// On in translations of large images under bf16 ([`translating_in`]). Off by default in
/// training: it cuts a 256² training step's peak memory by a third (0.65× of fp32's), but
/// makes the step slower (AVX512-BF16, AMD EPYC, 2 threads: 8–9 % at 256², 0–10 % at 128², with
/// the fused training ops `residual` and `conv_norm`; 12–27 % without them), most of it candle's
/// autograd summing every kept tensor's gradient with its bf16 `add` (a call per 8 elements,
/// 5× its f32 add's time), and bf16 gradients lose precision: the grey → colour protocol lost
/// 0.41 dB on one of two seeds (bench/RESULTS.md). Fusing more ops, so that fewer tensors reach
/// autograd, is the way on.
pub fn activation_dtype(xs: &Tensor) -> DType {
    let pixels: usize = xs.dims().iter().rev().take(2).product();
    let on = settings().bf16_activations || BF16_ACTIVATIONS.with(std::cell::Cell::get).is_some_and(|from| pixels >= from);
    if on && precision::cpu_bf16() && cpu_act(xs) {
        DType::BF16
    } else {
        xs.dtype()
    }
}

/// Runs `f` with bf16 activations on this thread (see [`activation_dtype`]).
pub fn with_bf16_activations<R>(f: impl FnOnce() -> R) -> R {
    with_local(&BF16_ACTIVATIONS, Some(0), f)
}

/// Runs `f`, a translation (no autograd), with its convolutions in `precision` and, in bf16, its
/// activations stored in bf16 too, as autocast stores them. Without a backward pass none of
/// training's cost applies (no gradient sums), and it halves the tensors a translation holds:
/// from images of 512² pixels on (`TRANSLATION_BF16_PIXELS`).
pub fn translating_in<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    let from = (precision == Precision::Bf16).then_some(TRANSLATION_BF16_PIXELS);
    with_precision(precision, || with_local(&BF16_ACTIVATIONS, from, f))
}

/// `xs` converted to [`activation_dtype`]: what a network does to its input.
pub fn to_activation(xs: &Tensor) -> Result<Tensor> {
    xs.to_dtype(activation_dtype(xs))
}

/// An activation operand of a custom op as f32: f32 data borrowed, bf16 data widened (exactly)
/// into a new buffer. Callers make operands contiguous.
pub(crate) fn act_data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    refuse_under_generic()?;
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("custom op: operands must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(widened(&v[start..end])),
        CpuStorage::BF16(v) => Ok(widened(&v[start..end])),
        _ => candle_core::bail!("custom op: expected f32 or bf16 data"),
    }
}

/// `x` as f32: borrowed where it is f32 already, else widened (exactly) into a new buffer.
pub(crate) fn widened<E: Elem>(x: &[E]) -> std::borrow::Cow<'_, [f32]> {
    match E::as_f32(x) {
        Some(x) => x.into(),
        None => {
            let mut out = zeros(x.len());
            par_widen(&mut out, x);
            out.into()
        }
    }
}

/// An op's f32 result stored in the dtype of its operand `like` (f32, or bf16 rounded to
/// nearest even).
pub(crate) fn act_storage(y: Vec<f32>, like: &CpuStorage) -> Result<CpuStorage> {
    match like {
        CpuStorage::F32(_) => Ok(CpuStorage::F32(y)),
        CpuStorage::BF16(_) => {
            let mut out = crate::ops::zeros(y.len());
            par_narrow(&mut out, &y);
            Ok(CpuStorage::BF16(out))
        }
        _ => candle_core::bail!("custom op: activations are stored as f32 or bf16"),
    }
}

/// The element types activations are stored in: f32, or bf16 (widened to f32 for arithmetic,
/// results rounded back once). Kernels generic over it read f32 data in place and convert bf16
/// data a plane at a time, in cache, instead of copying whole tensors.
pub(crate) trait Elem: candle_core::WithDType + Default + Send + Sync {
    /// The data itself where it is f32 (nothing to convert).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// The data itself where it is f32 (nothing to convert).
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// `dst[i] = src[i]` as f32 (exact), on this thread.
    fn widen(dst: &mut [f32], src: &[Self]);
    /// `dst[i] = src[i]` rounded to this type (nearest, ties to even), on this thread.
    fn narrow(dst: &mut [Self], src: &[f32]);
    /// One value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn widen(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn narrow(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for half::bf16 {
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn widen(dst: &mut [f32], src: &[Self]) {
        widen_chunk(dst, src)
    }
    fn narrow(dst: &mut [Self], src: &[f32]) {
        narrow_chunk(dst, src)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// The data of a contiguous operand of a custom op as `T` (callers make operands contiguous).
pub(crate) fn data<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    refuse_under_generic()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("custom op: operands must be contiguous"),
    }
}

/// `f` on the data of a contiguous CPU tensor as `T`: for ops whose backward pass reads tensors
/// (the fused ops' saved inputs and incoming gradients) as slices.
pub(crate) fn with_tensor_data<T: Elem, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { candle_core::bail!("custom op: expected a CPU tensor") };
    f(data::<T>(s, layout)?)
}

/// Elements per task of the conversions below (64 KiB of f32): large enough that the split
/// costs nothing, small enough that both cores share a plane.
const CONVERT_CHUNK: usize = 16 << 10;

/// `n` zeros, written by the rayon threads where that is worth it. The ops allocate their
/// outputs with this: `vec![0; n]` zeroes on the calling thread alone (glibc clears reused heap
/// memory in calloc), and at ~6 % of a training step's samples that serial pass was a tenth of
/// its time, with the other core idle (bench/RESULTS.md, "A ninth round").
pub(crate) fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    if n < CONVERT_CHUNK {
        return vec![T::default(); n];
    }
    par_chunks_made(n, CONVERT_CHUNK, || (), |_, _, _| ()).0
}

/// `n` values made in parallel, `len` at a time: `f(state, i, chunk)` fills chunk i (the last
/// may be shorter) and returns what is collected; `init` makes a thread's `state`. Each chunk is
/// zeroed by the thread that fills it, just before, so it is in that thread's cache then: where
/// [`zeros`] makes a separate pass over memory first (a training step's norm outputs alone were
/// a third of what it zeroed, ~400 MB per 128² step).
pub(crate) fn par_chunks_made<T, S, R>(n: usize, len: usize, init: impl Fn() -> S + Send + Sync, f: impl Fn(&mut S, usize, &mut [T]) -> R + Send + Sync) -> (Vec<T>, Vec<R>)
where
    T: Copy + Default + Send + Sync,
    R: Send,
{
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(n);
    let results = out.spare_capacity_mut()[..n]
        .par_chunks_mut(len.max(1))
        .enumerate()
        .map_init(init, |state, (i, chunk)| {
            chunk.fill(std::mem::MaybeUninit::new(T::default()));
            // SAFETY: every element of the chunk was written just above, so it is a valid [T].
            let chunk = unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            f(state, i, chunk)
        })
        .collect();
    // SAFETY: the chunks cover the first n elements, and each was written above.
    unsafe { out.set_len(n) };
    (out, results)
}

/// `dst[i] = src[i]` widened to f32 (exact), in parallel.
pub(crate) fn par_widen<E: Elem>(dst: &mut [f32], src: &[E]) {
    use rayon::prelude::*;
    dst.par_chunks_mut(CONVERT_CHUNK).zip(src.par_chunks(CONVERT_CHUNK)).for_each(|(d, s)| E::widen(d, s));
}

/// `dst[i] = src[i]` rounded to `E` (for bf16: nearest, ties to even), in parallel.
pub(crate) fn par_narrow<E: Elem>(dst: &mut [E], src: &[f32]) {
    use rayon::prelude::*;
    dst.par_chunks_mut(CONVERT_CHUNK).zip(src.par_chunks(CONVERT_CHUNK)).for_each(|(d, s)| E::narrow(d, s));
}

simd_fn! {
    /// [`par_widen`] on one thread: bf16 is f32's upper half.
    pub(crate) fn widen_chunk(dst: &mut [f32], src: &[half::bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

simd_fn! {
    /// [`par_narrow`] on one thread, bit for bit `half::bf16::from_f32` for every non-NaN value
    /// (NaNs stay NaNs).
    pub(crate) fn narrow_chunk(dst: &mut [half::bf16], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
            // A NaN's rounding may carry into an infinity's bits: keep it a (quiet) NaN.
            *d = half::bf16::from_bits(if s.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded });
        }
    }
}

/// The f32 data of a contiguous operand of a custom op (callers make operands contiguous).
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    refuse_under_generic()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("custom op: operands must be contiguous"),
    }
}

/// The f32 data of a contiguous in-place destination.
pub(crate) fn f32_data_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    refuse_under_generic()?;
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("custom op: operands must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("custom op: expected f32 storage"),
    }
}

/// How long candle's CPU worker threads busy-wait for the next operation before sleeping
/// (candle's default is 25,000 spins, about a millisecond).
const POOL_SPIN_LIMIT: &str = "200";

/// Process-wide settings for CPU work; call once at start-up, before any tensor work.
///
/// * candle's CPU worker threads spin only briefly after each of its operations: with our
///   kernels and the GEMMs running on rayon's threads in between, a spinning candle worker takes
///   a core away from them (~5 % of a 128² training step on 2 cores). A value the user set in
///   `CANDLE_BARRIER_POOL_SPIN_LIMIT` is kept.
/// * glibc's allocator keeps freed memory for reuse instead of handing every large buffer back
///   to the kernel: by default each activation of more than 128 KiB is a fresh `mmap`, so every
///   layer of every step page-faults its outputs in again (a generator's forward + backward at
///   128² went from ~440 to ~370 ms with the settings below; peak memory +7 MiB for a 128²
///   training step, +34 MiB for translating a 256² image). Blocks past glibc's largest mmap
///   threshold (32 MiB: the activations of 1024² images, of batched 256² ones) come from the heap
///   too: as fresh mappings, each was page-faulted in and zeroed by the kernel and unmapped
///   again, a third of the CPU time of translating a 1024² image (bf16, 2 cores: system time
///   12.8 s → 0.8 s of 46 s, wall 6.1 → 4.6 s; peak memory +131 MiB, from the heap's
///   fragmentation; bench/RESULTS.md). And free memory stays with the process for the next
///   step instead of going back to the kernel once the heap's top had 1 GiB free, as it did
///   before: a 256² training step (3.7 GB at its peak) gave back ~800 MB at its end and
///   page-faulted it in again in the next one (system time 5.7–7.2 s → 4.5–4.7 s over four
///   steps). Peak memory is unchanged; a long-lived process (the studio) calls
///   [`release_free_memory`] after each job.
/// * Starts rayon's pool with 8 MiB stacks (see [`in_pool`]).
///
/// # Safety
/// Call it before the process starts any other thread: it sets an environment variable, which
/// races with any other thread reading or writing the environment (glibc's `getenv` is not
/// synchronised with `setenv`).
pub unsafe fn tune_cpu_runtime() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, POOL_SPIN_LIMIT);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate (start-up), and invalid values are rejected by glibc (return 0), not UB.
    unsafe {
        // Blocks up to 32 MiB (glibc's largest allowed threshold) come from the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Larger ones too: glibc would map them (the threshold cannot go past 32 MiB), so the
        // main arena maps nothing. (Other threads' arenas still map a block larger than their
        // 64 MiB heaps; the command line translates and trains on the main thread.)
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Free memory is never trimmed on free (−1, as `man mallopt` documents), and the heap
        // grows in 256 MiB steps (address space; pages still count only once touched).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
    // Training steps and translations run on the pool's threads (`in_pool`): give them the main
    // thread's 8 MiB stack, not std's 2 MiB (autograd walks the graph recursively). Fails only
    // if the pool exists already, which then keeps its own.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
}

/// Gives the allocator's free memory back to the kernel, which `tune_cpu_runtime` has it keep
/// for reuse: for a process that stays up after a large job (the studio, between jobs).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free pages of every arena back to the kernel; it takes the
    // arenas' locks, so it is safe beside other threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The glibc tunable that has malloc advise the memory it takes from the kernel for transparent
/// huge pages (glibc ≥ 2.35; older ones ignore it).
const HUGE_PAGE_TUNABLE: &str = "glibc.malloc.hugetlb";

/// Runs this program again in place (same process id, arguments and environment, before
/// anything else has run) with glibc's malloc asked to advise its heap for transparent huge pages,
/// where the kernel gives them only to advised memory (`[madvise]` in
/// /sys/kernel/mm/transparent_hugepage/enabled, Debian's and Ubuntu's default) and the
/// environment does not choose already (`GLIBC_TUNABLES` naming `glibc.malloc.hugetlb`: `=0`
/// keeps 4 KiB pages). The convolutions stream buffers of megabytes (Winograd's transformed
/// filters, 9.4 MB per 256-channel layer); in 2 MiB pages they miss the TLB far less. Measured
/// (2-core AMD EPYC, bf16, the same binary with and without, alternating; bench/RESULTS.md): a
/// 128² training step 0.93× while the host was quiet, 0.99× while it was busy, translating a
/// 1024² image 0.96–0.97×, a 256² training step and a CUT one unchanged; peak memory +6–14 MiB.
/// Returns where it does not run the program again, or where that fails (the program then goes
/// on as it is). Examples that time our kernels call it too, so that they time what the binary runs.
pub fn use_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        let Some(tunables) = huge_page_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref(), &thp) else { return };
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        // `exec` returns only on failure.
        let _ = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
    }
}

/// Whether this process runs with its heap advised for huge pages (see [`use_huge_pages`]).
pub fn huge_pages_in_use() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.split(':').any(|kv| kv == format!("{HUGE_PAGE_TUNABLE}=1")))
}

/// The `GLIBC_TUNABLES` value [`use_huge_pages`] runs the program again with, given the current
/// one and the kernel's transparent-huge-page mode (the contents of its `enabled` file): `None`
/// where huge pages need no advice (`[always]`), are off (`[never]`), or the tunable is set
/// already.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn huge_page_tunables(current: Option<&std::ffi::OsStr>, thp_mode: &str) -> Option<std::ffi::OsString> {
    if !thp_mode.contains("[madvise]") {
        return None;
    }
    let setting = format!("{HUGE_PAGE_TUNABLE}=1");
    match current {
        Some(c) if c.to_string_lossy().contains(HUGE_PAGE_TUNABLE) => None,
        Some(c) if !c.is_empty() => {
            let mut v = c.to_os_string();
            v.push(format!(":{setting}"));
            Some(v)
        }
        _ => Some(setting.into()),
    }
}

/// `out[i] = src[S·i]` for every i (`src` holds S·(out.len() − 1) + 1 values or more), with the
/// stride known at compile time so that the loop vectorises; the last element goes alone, as its
/// S-long chunk may run past `src`'s end.
#[inline(always)]
pub(crate) fn gather<const S: usize>(out: &mut [f32], src: &[f32]) {
    let Some((last, body)) = out.split_last_mut() else { return };
    for (o, chunk) in body.iter_mut().zip(src.chunks_exact(S)) {
        *o = chunk[0];
    }
    *last = src[S * body.len()];
}

/// A fixed, varied value in [−0.5, 0.5) for index `i`: deterministic inputs for kernel tests.
#[cfg(test)]
pub(crate) fn test_value(i: usize) -> f32 {
    ((i * 7919) % 23) as f32 / 23.0 - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program runs again with the huge-page tunable only where the kernel wants advice and
    /// the environment has not chosen; other tunables are kept.
    #[test]
    fn huge_page_tunable_is_added_only_where_it_helps() {
        use std::ffi::OsStr;
        let madvise = "always [madvise] never\n";
        assert_eq!(huge_page_tunables(None, madvise).unwrap(), "glibc.malloc.hugetlb=1");
        assert_eq!(huge_page_tunables(Some(OsStr::new("")), madvise).unwrap(), "glibc.malloc.hugetlb=1");
        assert_eq!(huge_page_tunables(Some(OsStr::new("glibc.malloc.arena_max=2")), madvise).unwrap(), "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1");
        for chosen in ["glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"] {
            assert_eq!(huge_page_tunables(Some(OsStr::new(chosen)), madvise), None, "{chosen}");
        }
        for mode in ["[always] madvise never", "always madvise [never]", ""] {
            assert_eq!(huge_page_tunables(None, mode), None, "{mode}");
        }
    }

    /// Translations in bf16 store bf16 activations for inputs from `TRANSLATION_BF16_PIXELS` on,
    /// f32 ones below; translations in fp32 never.
    #[test]
    fn translations_store_bf16_activations_from_their_size_on() {
        if gemm_bf16::hardware().is_none() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (bf16 runs fp32, with f32 activations)");
            return;
        }
        let side = |n: usize| Tensor::zeros((1, 3, n, n), DType::F32, &candle_core::Device::Cpu).unwrap();
        let (small, large) = (side(256), side(512));
        let dtype = |p: Precision, x: &Tensor| translating_in(p, || activation_dtype(x));
        assert_eq!(dtype(Precision::Bf16, &small), DType::F32);
        assert_eq!(dtype(Precision::Bf16, &large), DType::BF16);
        assert_eq!(dtype(Precision::Fp32, &large), DType::F32);
    }

    /// A job sent to the pool runs on a pool thread with the caller's settings, and with the
    /// per-call state of whatever that thread was running set aside (and put back after).
    #[test]
    fn in_pool_carries_settings_and_sets_aside_op_state() {
        std::thread::spawn(|| {
            assert!(rayon::current_thread_index().is_none());
            let seen = with_precision(Precision::Bf16, || {
                with_bf16_activations(|| in_pool(|| (rayon::current_thread_index().is_some(), precision::current(), BF16_ACTIVATIONS.with(std::cell::Cell::get))))
            });
            assert_eq!(seen, (true, Precision::Bf16, Some(0)));
            // Back on the caller's thread, nothing of it is left.
            assert_eq!((precision::current(), BF16_ACTIVATIONS.with(std::cell::Cell::get)), (Precision::Fp32, None));
        })
        .join()
        .unwrap();

        thread_local! {
            static STATE: std::cell::RefCell<Option<u32>> = const { std::cell::RefCell::new(None) };
        }
        STATE.with(|s| *s.borrow_mut() = Some(7));
        assert_eq!(with_replaced(&STATE, None, || STATE.with(|s| *s.borrow())), None);
        assert_eq!(with_replaced(&STATE, Some(8), || STATE.with(|s| *s.borrow())), Some(8));
        assert_eq!(STATE.with(|s| *s.borrow()), Some(7));
        let panicked = std::panic::catch_unwind(|| with_replaced(&STATE, None, || panic!("inside")));
        assert!(panicked.is_err());
        assert_eq!(STATE.with(|s| *s.borrow()), Some(7), "put back after a panic too");
    }

    /// `zeros` and `par_chunks_made` give zeroed memory (also where it was used before) and
    /// every chunk to exactly one call.
    #[test]
    fn outputs_are_zeroed_and_every_chunk_made_once() {
        for n in [0, 5, CONVERT_CHUNK - 1, CONVERT_CHUNK, 3 * CONVERT_CHUNK + 7] {
            drop(vec![f32::NAN; n + 1]); // leave dirty memory for the next allocation
            assert!(zeros::<f32>(n).iter().all(|&v| v.to_bits() == 0), "{n}");
            drop(vec![u32::MAX; n + 1]);
            let (made, chunks) = par_chunks_made::<u32, _, _>(n, 1000, || (), |_, i, c| {
                assert!(c.iter().all(|&v| v == 0));
                c.iter_mut().for_each(|v| *v = i as u32 + 1);
                (i, c.len())
            });
            assert_eq!(made.len(), n);
            assert_eq!(chunks, (0..n.div_ceil(1000)).map(|i| (i, 1000.min(n - 1000 * i))).collect::<Vec<_>>());
            assert!(made.iter().enumerate().all(|(j, &v)| v == (j / 1000) as u32 + 1));
        }
    }

    /// The conversions of bf16 activations: widening is exact, narrowing rounds as `half` does
    /// (to nearest, ties to even; overflow to infinity; NaN stays NaN).
    #[test]
    fn bf16_conversions_match_half() {
        let mut xs: Vec<f32> = (0..4000).map(|i| test_value(i) * (1u64 << (i % 40)) as f32 * 1e-6).collect();
        xs.extend([0.0, -0.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, f32::MIN_POSITIVE / 3.0, f32::INFINITY, -f32::INFINITY]);
        let mut narrow = vec![half::bf16::ZERO; xs.len()];
        par_narrow(&mut narrow, &xs);
        for (n, &x) in narrow.iter().zip(&xs) {
            assert_eq!(n.to_bits(), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
        let mut nan = [half::bf16::ZERO];
        narrow_chunk(&mut nan, &[f32::NAN]);
        assert!(nan[0].is_nan());
        let mut wide = vec![0f32; narrow.len()];
        par_widen(&mut wide, &narrow);
        assert!(wide.iter().zip(&narrow).all(|(w, n)| *w == n.to_f32()));
    }

    #[test]
    fn reflect_indices_match_pytorch() {
        assert_eq!(reflect_indices(5, 2), vec![2, 1, 0, 1, 2, 3, 4, 3, 2]);
        assert_eq!(reflect_indices(4, 3), vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }
}
