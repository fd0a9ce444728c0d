//! Fast CPU convolutions for training: 2-D convolution and transposed convolution as candle
//! custom ops with their own backward passes.
//!
//! candle's CPU `conv_transpose2d` is a direct loop without a GEMM, and its conv2d backward
//! routes the input gradient through that loop, so a training step spends most of its time
//! there. Here every convolution is im2col/col2im around one `gemm` call per sample:
//!
//! * conv2d:           Y_b = W[Cout, Cin·K·K] · im2col(X_b)
//! * conv_transpose2d: Y_b = col2im(Wᵀ[Cout·K·K, Cin] · X_b)   (the adjoint of conv2d)
//! * weight gradient:  dW  = Σ_b G_b[Cg, Ho·Wo] · im2col(X_b)ᵀ
//!
//! Two special cases have kernels of their own: stride-1 convolutions with fewer output than
//! input channels (`NarrowConv2dOp`, below) and stride-1 3×3 and 4×4 ones padded by 0 or 1 with
//! enough channels (`super::winograd`).
//!
//! These three ops are closed under differentiation (the input gradient of a convolution is a
//! transposed convolution and vice versa), so `bwd` builds its results from the same fast ops,
//! and so does a second-order backward.
//!
//! Semantics are PyTorch's (`Conv2d` / `ConvTranspose2d` with dilation 1, groups 1, no bias,
//! zero padding, square kernels). Each op stores the spatial size of its image side, so
//! gradients are exact for non-square inputs whose axes leave different remainders under the
//! stride, which candle's own conv2d backward gets wrong. Only f32 tensors on the CPU (activations
//! also bf16, `ops::activation_dtype`: read as f32, results rounded once) take this
//! path; anything else falls back to candle's native convolutions.

use super::gemm::{matmul, matmul_split_k, with_scratch, with_scratch_slot, Mat};
use super::gemm_bf16::{gemm_made, Rhs};
use super::precision::cpu_bf16;
use super::winograd::Pad;
use super::pad::reflect_row;
use super::{act_data, act_storage, data, gather, widened, Elem};
use half::bf16;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
#[cfg(test)]
use std::cell::Cell;

/// `xs` `[B,Cin,H,W]`, `w` `[Cout,Cin,K,K]` (PyTorch layout), zero padding → `[B,Cout,Ho,Wo]`
/// with Ho = (H + 2·padding − K) / stride + 1. No bias.
pub fn conv2d(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    match conv2d_op(xs, w, stride, padding)? {
        Some(op) => apply(xs, w, op),
        None => autocast(xs, w, |x, w| x.conv2d(w, padding, stride, 1, 1)),
    }
}

/// One of our convolution ops, chosen for its operands (`ops::conv_norm` runs it inside a
/// fused op).
pub(crate) type ConvOp = Box<dyn CustomOp2 + Send + Sync>;

/// `op` applied to `xs` and `w`, made contiguous.
fn apply(xs: &Tensor, w: &Tensor, op: ConvOp) -> Result<Tensor> {
    xs.contiguous()?.apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(op))
}

/// The op `conv2d` applies, or `None` where our kernels do not apply (candle's then run).
pub(crate) fn conv2d_op(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Option<ConvOp>> {
    if !fast_path(xs, w) {
        return Ok(None);
    }
    let (cout, cin, k, _) = w.dims4()?;
    let (_, _, h, wd) = xs.dims4()?;
    let out = |n: usize| (n + 2 * padding).saturating_sub(k) / stride.max(1) + 1; // [B,Cout,out(H),out(W)]
    if super::winograd::applies(cin, cout, k, stride, padding, (out(h), out(wd))) {
        // Zero padding of 1: CUT's anti-aliased down- and up-sampling 3×3 convolutions and the
        // PatchGAN's stride-1 4×4 ones.
        let pad = if padding == 1 { Pad::Zero } else { Pad::None };
        return Ok(Some(Box::new(super::winograd::forward_op(xs, w, pad)?)));
    }
    if takes_narrow(cin, cout, k, stride, padding) {
        return Ok(Some(Box::new(NarrowConv2dOp { pad: padding })));
    }
    Ok(Some(Box::new(Conv2dOp { stride, pad: padding })))
}

/// Whether `conv2d` runs a (non-Winograd) convolution as a narrow one: stride 1, fewer output
/// than input channels, padding under the kernel size.
fn takes_narrow(cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> bool {
    stride == 1 && cout < cin && padding < k
}

/// `conv2d(reflect_pad2d(xs, pad), w, 1, 0)`: a stride-1 convolution of the reflection-padded
/// input (the residual blocks'). Where Winograd's kernels apply (3×3, pad 1) the padding is done
/// inside them, so no padded copy is made or kept alive for backward.
pub fn conv2d_reflect(xs: &Tensor, w: &Tensor, pad: usize) -> Result<Tensor> {
    match conv2d_reflect_op(xs, w, pad)? {
        Some(op) => apply(xs, w, op),
        None => conv2d(&super::reflect_pad2d(xs, pad)?, w, 1, 0),
    }
}

/// The one op `conv2d_reflect` applies, or `None` where it pads and convolves in two.
pub(crate) fn conv2d_reflect_op(xs: &Tensor, w: &Tensor, pad: usize) -> Result<Option<ConvOp>> {
    let (_, _, h, wd) = xs.dims4()?;
    let (cout, cin, k, _) = w.dims4()?;
    if fast_path(xs, w) && k == 3 && pad == 1 && h > 1 && wd > 1 && super::winograd::applies(cin, cout, k, 1, 0, (h, wd)) {
        return Ok(Some(Box::new(super::winograd::forward_op(xs, w, Pad::Reflect)?)));
    }
    // Where autograd would keep the padded input, and for bf16 activations and narrow layers (the
    // heads), which the op convolves without a padded copy. Otherwise (an f32 stem in a
    // translation) the composed pair frees the padded input after the convolution's output is
    // made, and the heap reuses that block whole (translating a 1024² image peaked 64 MiB higher
    // with the op, its freed block cut up by the bias and tanh outputs that follow).
    let (ph, pw) = (h + 2 * pad, wd + 2 * pad);
    let kept = xs.track_op() || w.track_op() || xs.dtype() == DType::BF16 || takes_narrow(cin, cout, k, 1, 0);
    if kept && fast_path(xs, w) && pad > 0 && pad < h.min(wd) && k <= ph.min(pw) && !super::winograd::applies(cin, cout, k, 1, 0, (ph - k + 1, pw - k + 1)) {
        return Ok(Some(Box::new(ReflectConv2dOp { pad })));
    }
    Ok(None)
}

/// `conv2d(blur_up(xs), w, 1, 1)` for a 3×3 `w` (CUT's anti-aliased up-sampling layers) as one
/// Winograd op whose transforms up-sample rows as they read them, so the up-sampled input is never
/// stored, kept for backward or differentiated; `None` where the fast kernels do not apply (the
/// caller then up-samples and convolves). `xs` `[B,Cin,H,W]` → `[B,Cout,2H,2W]`.
pub fn blur_up_conv3x3(xs: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (_, _, h, wd) = xs.dims4()?;
    let (cout, cin, k, _) = w.dims4()?;
    if !(fast_path(xs, w) && k == 3 && super::winograd::applies(cin, cout, k, 1, 1, (2 * h, 2 * wd))) {
        return Ok(None);
    }
    super::winograd::conv(&xs.contiguous()?, &w.contiguous()?, Pad::UpZero).map(Some)
}

/// `xs` `[B,Cin,H,W]`, `w` `[Cin,Cout,K,K]` (PyTorch `ConvTranspose2d` layout) →
/// [B, Cout, (H−1)·stride − 2·padding + K + output_padding, (W−1)·stride − 2·padding + K + output_padding].
/// No bias. As in PyTorch, `output_padding` must be smaller than `stride`.
pub fn conv_transpose2d(
    xs: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    match conv_transpose2d_op(xs, w, stride, padding, output_padding)? {
        Some(op) => apply(xs, w, op),
        None => autocast(xs, w, |x, w| x.conv_transpose2d(w, padding, output_padding, stride, 1)),
    }
}

/// The op `conv_transpose2d` applies, or `None` where our kernels do not apply.
pub(crate) fn conv_transpose2d_op(xs: &Tensor, w: &Tensor, stride: usize, padding: usize, output_padding: usize) -> Result<Option<ConvOp>> {
    if !fast_path(xs, w) {
        return Ok(None);
    }
    if output_padding >= stride {
        bail!("conv_transpose2d: output_padding {output_padding} must be smaller than stride {stride}");
    }
    let (_b, _c, h, wd) = xs.dims4()?;
    let (_, _, k, _) = w.dims4()?;
    let out_size = |n: usize| n.checked_sub(1).and_then(|m| (m * stride + k + output_padding).checked_sub(2 * padding));
    let (Some(out_h), Some(out_w)) = (out_size(h), out_size(wd)) else {
        bail!("conv_transpose2d: padding {padding} leaves no output for a {h}x{wd} input");
    };
    Ok(Some(Box::new(ConvTranspose2dOp { stride, pad: padding, out_h, out_w })))
}

/// candle's convolution `conv` of `xs` and `w`, in bf16 where this thread's precision is bf16
/// (operands cast to bf16, the result back to `xs`'s dtype: autocast's recipe, and what a GPU
/// runs for `--precision bf16`), else as they are. candle's CPU has no bf16 matrix product, so
/// on the CPU (the device-generic path's tests) the operands are rounded to bf16 and convolved
/// in f32: the same products, summed in f32 as a GPU's bf16 convolution sums them.
fn autocast(xs: &Tensor, w: &Tensor, conv: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if xs.dtype() == DType::BF16 {
        // bf16 activations (`ops::activation_dtype`): the weight meets them in bf16.
        return conv(xs, &w.to_dtype(DType::BF16)?);
    }
    if super::precision::current() != super::Precision::Bf16 {
        return conv(xs, w);
    }
    let dtype = xs.dtype();
    let (x16, w16) = (xs.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
    if xs.device().is_cpu() {
        return conv(&x16.to_dtype(dtype)?, &w16.to_dtype(dtype)?);
    }
    conv(&x16, &w16)?.to_dtype(dtype)
}

/// Whether the fast kernels apply: the one place a convolution's kernel is chosen. Not with
/// `CS_NATIVE_CONV` (candle's own convolutions, for comparing against them); empty weights are
/// left to candle too, since the kernels split buffers into per-channel chunks.
fn fast_path(xs: &Tensor, w: &Tensor) -> bool {
    !super::settings().native_conv && super::cpu_act(xs) && w.dtype() == DType::F32 && w.elem_count() > 0
}

/// How an image [C,H,W] maps to its im2col matrix [C·K·K, Ho·Wo]: the column of output pixel
/// (oy, ox) holds the K×K window at (oy·stride − pad, ox·stride − pad), zero outside the image.
#[derive(Clone, Copy, Debug)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// The geometry of a convolution over a [c,h,w] image; its output size follows PyTorch.
    fn conv(c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        if c == 0 || h == 0 || w == 0 || k == 0 || stride == 0 {
            bail!("conv: zero-sized channels, image, kernel or stride ({c}x{h}x{w}, K {k}, stride {stride})");
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            bail!("conv: kernel {k} is larger than the padded {h}x{w} input (padding {pad})");
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Ok(Self { c, h, w, k, stride, pad, ho, wo })
    }

    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    fn cols(&self) -> usize {
        self.ho * self.wo
    }

    fn img_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Output positions `o` in `[lo, hi)` whose input index o·stride + tap − pad lies in
    /// `[0, n_in)`; every other output position reads padding.
    fn valid(&self, n_out: usize, n_in: usize, tap: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad.saturating_sub(tap).div_ceil(s);
        let hi = (n_in + self.pad).saturating_sub(tap).div_ceil(s).min(n_out);
        (lo.min(hi), hi)
    }
}

/// Output rows [`b0`, `b1`) of the im2col matrix: `cols` [C·K·K, (b1−b0)·Wo] from `img` [C,H,W].
/// Rows are independent, so they run in parallel; each is the band's columns of the whole
/// image's row.
fn im2col(img: &[f32], g: &Geom, (b0, b1): (usize, usize), cols: &mut [f32]) {
    cols.par_chunks_mut((b1 - b0) * g.wo).enumerate().for_each(|(r, row)| im2col_segment(row, img, g, r, b0 * g.wo));
}

simd_fn! {
    /// Columns [`j0`, `j0` + out.len()) of row `r` (channel c, tap ki, kj) of the whole image's
    /// im2col matrix into `out`: a band's row of `im2col`, or what the bf16 product packs, read
    /// from the image in place.
    fn im2col_segment(out: &mut [f32], img: &[f32], g: &Geom, r: usize, j0: usize) {
        im2col_segment_of(out, img, g, r, j0)
    }
}

simd_fn! {
    /// [`im2col_segment`] of an image of bf16 activations, widened as it is read.
    fn im2col_segment_bf16(out: &mut [f32], img: &[bf16], g: &Geom, r: usize, j0: usize) {
        im2col_segment_of(out, img, g, r, j0)
    }
}

/// The body of [`im2col_segment`] for either element type.
#[inline(always)]
fn im2col_segment_of<T: Elem>(out: &mut [f32], img: &[T], g: &Geom, r: usize, j0: usize) {
    let (k, s) = (g.k, g.stride);
    let (c, ki, kj) = (r / (k * k), r / k % k, r % k);
    let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
    let (y_lo, y_hi) = g.valid(g.ho, g.h, ki);
    let (x_lo, x_hi) = g.valid(g.wo, g.w, kj);
    let end = j0 + out.len();
    let mut j = j0;
    while j < end {
        // The part of output row oy in the segment: columns [ox0, ox1).
        let (oy, ox0) = (j / g.wo, j % g.wo);
        let ox1 = (ox0 + end - j).min(g.wo);
        let seg = &mut out[j - j0..][..ox1 - ox0];
        j += ox1 - ox0;
        let (a, b) = (x_lo.clamp(ox0, ox1), x_hi.clamp(ox0, ox1));
        if oy < y_lo || oy >= y_hi || a == b {
            seg.fill(0.0);
            continue;
        }
        seg[..a - ox0].fill(0.0);
        seg[b - ox0..].fill(0.0);
        let src = &plane[(oy * s + ki - g.pad) * g.w..][..g.w];
        let ix0 = a * s + kj - g.pad;
        let seg = &mut seg[a - ox0..b - ox0];
        match (s, T::as_f32(src)) {
            (1, _) => T::widen(seg, &src[ix0..ix0 + seg.len()]),
            (2, Some(src)) => gather::<2>(seg, &src[ix0..]),
            _ => seg.iter_mut().zip(src[ix0..].iter().step_by(s)).for_each(|(o, v)| *o = v.to_f32()),
        }
    }
}

/// Adds the scatter of `cols` [C·K·K, (b1−b0)·Wo] (output rows [`b0`, `b1`)) into `img` [C,H,W],
/// the adjoint of `im2col`. A channel's rows only touch that channel's plane, so planes run in
/// parallel.
fn col2im_add(cols: &[f32], g: &Geom, band: (usize, usize), img: &mut [f32]) {
    col2im_add_rows(cols, g, band, img, g.h, 0);
}

/// [`col2im_add`] into planes that hold only rows [`row0`, `row0` + `rows`) of the image, each
/// `rows`·W long in `img`: the rows the band reaches must lie within them.
fn col2im_add_rows(cols: &[f32], g: &Geom, band: (usize, usize), img: &mut [f32], rows: usize, row0: usize) {
    // Per-thread room for a plane's even and odd column phases (stride 2, see `col2im_plane`).
    let phases = if g.stride == 2 { rows * g.w } else { 0 };
    img.par_chunks_mut(rows * g.w).enumerate().for_each_init(|| vec![0f32; phases], |buf, (c, plane)| col2im_plane(plane, buf, cols, g, band, c, row0));
}

simd_fn! {
    /// Channel `c`'s plane of `col2im_add`. At stride 2 the plane rows the band reaches are first
    /// split into their even and odd columns (in `phases`, the plane's size), so that each tap's
    /// row is a contiguous add into one of them, then interleaved back: `dst[2i] += v` compiles to
    /// scatter instructions, slow on AMD's Zen 4. Every element gets the same additions in the
    /// same order either way, so the results are the same bit for bit.
    /// `plane` and `phases` start at image row `row0`.
    fn col2im_plane(plane: &mut [f32], phases: &mut [f32], cols: &[f32], g: &Geom, band: (usize, usize), c: usize, row0: usize) {
        let (k, s, (b0, b1)) = (g.k, g.stride, band);
        if b0 == b1 {
            return;
        }
        let (n, w, even) = ((b1 - b0) * g.wo, g.w, g.w.div_ceil(2));
        let split = s == 2;
        let rows = (b0 * s).saturating_sub(g.pad).min(g.h)..((b1 - 1) * s + k).saturating_sub(g.pad).min(g.h);
        if split {
            for r in rows.clone().map(|r| r - row0) {
                let (e, o) = phases[r * w..][..w].split_at_mut(even);
                gather::<2>(e, &plane[r * w..][..w]);
                if !o.is_empty() {
                    gather::<2>(o, &plane[r * w + 1..][..w - 1]);
                }
            }
        }
        for ki in 0..k {
            let (y_lo, y_hi) = g.valid(g.ho, g.h, ki);
            let (y_lo, y_hi) = (y_lo.clamp(b0, b1), y_hi.clamp(b0, b1));
            for kj in 0..k {
                let (x_lo, x_hi) = g.valid(g.wo, g.w, kj);
                if x_lo == x_hi {
                    continue;
                }
                let row = &cols[((c * k + ki) * k + kj) * n..][..n];
                let ix0 = x_lo * s + kj - g.pad;
                for oy in y_lo..y_hi {
                    let r = oy * s + ki - g.pad - row0;
                    let src = &row[(oy - b0) * g.wo + x_lo..(oy - b0) * g.wo + x_hi];
                    let dst = match s {
                        // Columns ix0, ix0 + 2, … are one phase's ix0/2, ix0/2 + 1, ….
                        2 => &mut phases[r * w + if ix0.is_multiple_of(2) { 0 } else { even } + ix0 / 2..][..src.len()],
                        1 => &mut plane[r * w + ix0..][..src.len()],
                        _ => {
                            plane[r * w + ix0..].iter_mut().step_by(s).zip(src).for_each(|(d, v)| *d += v);
                            continue;
                        }
                    };
                    dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                }
            }
        }
        if split {
            for r in rows.map(|r| r - row0) {
                let (e, o) = phases[r * w..][..w].split_at(even);
                let dst = &mut plane[r * w..][..w];
                for (pair, (&a, &b)) in dst.chunks_exact_mut(2).zip(e.iter().zip(o)) {
                    pair[0] = a;
                    pair[1] = b;
                }
                if w % 2 == 1 {
                    dst[w - 1] = e[even - 1];
                }
            }
        }
    }
}

/// Largest im2col scratch, in floats (64 MiB): bigger convolutions (a 7×7 layer over 64
/// channels at 1024² would need 12.5 GiB) run band by band of output rows. Only images past
/// ~300² reach it. At 256 MiB a 1024² translation peaked with a whole band of the last transposed
/// convolution's col2im matrix beside the full-resolution tensors; at 64 MiB its peak RSS is 0.82×
/// (fp32) and 0.83× (bf16) of that, in 1.02× and 0.91× the time (bench/RESULTS.md, twelfth round).
const MAX_SCRATCH: usize = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Lets the unit tests force many small bands.
    static SCRATCH_LIMIT: Cell<usize> = const { Cell::new(MAX_SCRATCH) };
}

fn scratch_limit() -> usize {
    #[cfg(test)]
    return SCRATCH_LIMIT.with(Cell::get);
    #[cfg(not(test))]
    MAX_SCRATCH
}

/// The bands of output rows that keep the im2col matrix within [`MAX_SCRATCH`].
fn bands(g: &Geom) -> impl Iterator<Item = (usize, usize)> {
    bands_within(g, scratch_limit())
}

/// The bands of output rows that keep the im2col matrix within `limit` floats.
fn bands_within(g: &Geom, limit: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows_per_band = (limit / (g.rows() * g.wo).max(1)).clamp(1, g.ho);
    let ho = g.ho;
    (0..ho).step_by(rows_per_band).map(move |b0| (b0, (b0 + rows_per_band).min(ho)))
}

/// Convolution of `x` [B, g.c, g.h, g.w] with `w` [cout, g.c·K·K] → [B, cout, g.ho, g.wo].
fn conv_kernel(x: &[f32], w: &[f32], cout: usize, g: &Geom) -> Vec<f32> {
    let n = g.cols();
    let mut y = crate::ops::zeros(x.len() / g.img_len() * cout * n);
    for (xb, yb) in x.chunks_exact(g.img_len()).zip(y.chunks_exact_mut(cout * n)) {
        if super::precision::cpu_bf16() {
            // The bf16 product packs the im2col matrix straight from the image: the f32 matrix is
            // never written, nor read back to be rounded.
            gemm_made(cout, n, g.rows(), (yb, n), false, Mat::rows(w, g.rows()), Rhs::Rows(&|r, j0, out| im2col_segment(out, xb, g, r, j0)));
            continue;
        }
        for band in bands(g) {
            let cols_n = (band.1 - band.0) * g.wo;
            with_scratch(g.rows() * cols_n, |cols| {
                im2col(xb, g, band, cols);
                let dst = &mut yb[band.0 * g.wo..];
                matmul(cout, cols_n, g.rows(), (dst, n), false, Mat::rows(w, g.rows()), Mat::rows(cols, cols_n));
            });
        }
    }
    y
}

/// Transposed convolution of `x` [B, cin, g.ho, g.wo] with `w` [cin, g.c·K·K] →
/// [B, g.c, g.h, g.w]: the adjoint of `conv_kernel` with respect to its image.
fn conv_transpose_kernel(x: &[f32], w: &[f32], cin: usize, g: &Geom) -> Vec<f32> {
    let n = g.cols();
    let mut y = crate::ops::zeros(x.len() / (cin * n) * g.img_len());
    for (xb, yb) in x.chunks_exact(cin * n).zip(y.chunks_exact_mut(g.img_len())) {
        for band in bands(g) {
            let cols_n = (band.1 - band.0) * g.wo;
            with_scratch(g.rows() * cols_n, |cols| {
                let rhs = Mat::rows(&xb[band.0 * g.wo..], n);
                matmul(g.rows(), cols_n, cin, (cols, cols_n), false, Mat::transposed(w, g.rows()), rhs);
                col2im_add(cols, g, band, yb);
            });
        }
    }
    y
}

/// Floats of f32 output a bf16-activation kernel makes at a time before rounding (16 MiB).
const OUT_BAND: usize = 4 << 20;

/// [`conv_kernel`] of bf16 activations into bf16 ones, in bf16 products (`cpu_bf16`): the image
/// is read in place, widened as it is packed, and the output made in bands of output rows in f32
/// and rounded, so neither a widened copy of the input nor an f32 one of the output is ever made
/// whole. Each value is the f32 kernel's on the widened input, rounded.
fn conv_kernel_bf16(x: &[bf16], w: &[f32], cout: usize, g: &Geom) -> Vec<bf16> {
    let n = g.cols();
    let mut y = crate::ops::zeros(x.len() / g.img_len() * cout * n);
    let rows_per_band = (OUT_BAND.min(scratch_limit()) / (cout * g.wo)).clamp(1, g.ho);
    for (xb, yb) in x.chunks_exact(g.img_len()).zip(y.chunks_exact_mut(cout * n)) {
        for b0 in (0..g.ho).step_by(rows_per_band) {
            let (j0, cols_n) = (b0 * g.wo, ((b0 + rows_per_band).min(g.ho) - b0) * g.wo);
            with_scratch(cout * cols_n, |band| {
                let rhs = Rhs::Rows(&|r, j, out| im2col_segment_bf16(out, xb, g, r, j0 + j));
                gemm_made(cout, cols_n, g.rows(), (band, cols_n), false, Mat::rows(w, g.rows()), rhs);
                yb.par_chunks_mut(n).zip(band.par_chunks(cols_n)).for_each(|(dst, src)| bf16::narrow(&mut dst[j0..][..cols_n], src));
            });
        }
    }
    y
}

/// [`conv_transpose_kernel`] of bf16 activations into bf16 ones. The overlapping taps are summed
/// in f32, but only over the output rows the current band of input rows reaches: rows no later
/// band reaches are rounded into the output as each band ends, the others carried to the next.
/// Each value is the f32 kernel's on the widened input (the same additions in the same order),
/// rounded.
fn conv_transpose_kernel_bf16(x: &[bf16], w: &[f32], cin: usize, g: &Geom) -> Vec<bf16> {
    let (n, s, h, wd) = (g.cols(), g.stride, g.h, g.w);
    let mut y = crate::ops::zeros(x.len() / (cin * n) * g.img_len());
    // Output rows [lo, hi) that input rows [b0, b1) reach.
    let reach = |(b0, b1): (usize, usize)| ((b0 * s).saturating_sub(g.pad).min(h), ((b1 - 1) * s + g.k).saturating_sub(g.pad).min(h));
    // Smaller bands than the f32 kernel's: their matrix is a thread's scratch from then on.
    let bands: Vec<_> = bands_within(g, OUT_BAND.min(scratch_limit())).collect();
    // Per band: the first row not yet final, the last it works on, and the first a later band
    // reaches (rows before it are final once the band is done).
    let mut spans = Vec::with_capacity(bands.len());
    let (mut done, mut end) = (0, 0);
    for (i, &band) in bands.iter().enumerate() {
        let next = bands.get(i + 1);
        end = if next.is_some() { reach(band).1.max(end).max(done) } else { h };
        let fin = next.map_or(h, |&b| reach(b).0.clamp(done, end));
        spans.push((done, end, fin));
        done = fin;
    }
    let rows = spans.iter().map(|&(a, b, _)| b - a).max().unwrap_or(0).max(1);
    let mut window = vec![0f32; g.c * rows * wd];
    for (xb, yb) in x.chunks_exact(cin * n).zip(y.chunks_exact_mut(g.img_len())) {
        window.fill(0.0);
        for (&band, &(done, end, fin)) in bands.iter().zip(&spans) {
            let cols_n = (band.1 - band.0) * g.wo;
            with_scratch(g.rows() * cols_n, |cols| {
                with_scratch_slot(1, cin * cols_n, |xw| {
                    xw.par_chunks_mut(cols_n).enumerate().for_each(|(ci, d)| bf16::widen(d, &xb[ci * n + band.0 * g.wo..][..cols_n]));
                    matmul(g.rows(), cols_n, cin, (cols, cols_n), false, Mat::transposed(w, g.rows()), Mat::rows(xw, cols_n));
                });
                col2im_add_rows(cols, g, band, &mut window, rows, done);
            });
            // Rows [done, fin) are final: round them out, move [fin, end) to the window's top.
            yb.par_chunks_mut(h * wd).zip(window.par_chunks_mut(rows * wd)).for_each(|(dst, plane)| {
                bf16::narrow(&mut dst[done * wd..fin * wd], &plane[..(fin - done) * wd]);
                plane.copy_within((fin - done) * wd..(end - done) * wd, 0);
                plane[(end - fin) * wd..].fill(0.0);
            });
        }
    }
    y
}

/// Σ_b `grad_b` [cg, g.ho·g.wo] · im2col(`x_b`)ᵀ → [cg, g.c·K·K]: the gradient of
/// `conv_kernel` with respect to its weight.
fn weight_grad_kernel(x: &[f32], grad: &[f32], cg: usize, g: &Geom) -> Vec<f32> {
    let n = g.cols();
    let mut dw = crate::ops::zeros(cg * g.rows());
    let mut first = true;
    for (xb, gb) in x.chunks_exact(g.img_len()).zip(grad.chunks_exact(cg * n)) {
        if super::precision::cpu_bf16() {
            // As in `conv_kernel`: the bf16 product packs the im2col rows from the image.
            gemm_made(cg, g.rows(), n, (&mut dw, g.rows()), !first, Mat::rows(gb, n), Rhs::Cols(&|r, k0, out| im2col_segment(out, xb, g, r, k0)));
            first = false;
            continue;
        }
        for band in bands(g) {
            let cols_n = (band.1 - band.0) * g.wo;
            with_scratch(g.rows() * cols_n, |cols| {
                im2col(xb, g, band, cols);
                let lhs = Mat::rows(&gb[band.0 * g.wo..], n);
                matmul_split_k(cg, g.rows(), cols_n, (&mut dw, g.rows()), !first, lhs, Mat::transposed(cols, cols_n));
            });
            first = false;
        }
    }
    dw
}

/// The square kernel size of a [_, _, K, K] weight.
fn kernel_size(l: &Layout) -> Result<usize> {
    let (_, _, kh, kw) = l.shape().dims4()?;
    if kh != kw {
        bail!("fast conv: only square kernels are supported, got {kh}x{kw}");
    }
    Ok(kh)
}

/// (B, Cin, H, W, Cout) of a conv2d op's input [B,Cin,H,W] and weight [Cout,Cin,K,K], which must
/// agree on Cin.
fn conv2d_operands(x: &Layout, w: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, cin, h, wd) = x.shape().dims4()?;
    let (cout, cin_w, _, _) = w.shape().dims4()?;
    if cin != cin_w {
        bail!("conv2d: input has {cin} channels but the weight expects {cin_w}");
    }
    Ok((b, cin, h, wd, cout))
}

/// conv2d(reflect_pad2d(x, pad), w) for x [B,Cin,H,W] → [B,Cout,H+2·pad−K+1, …], on the path
/// `conv2d` takes for the padded input (narrow output or im2col). The padded input is made for
/// each pass and dropped: the composed pair keeps it alive for autograd, the size of the input
/// again (the generator's last layer: 64 channels at the image's size plus 6).
struct ReflectConv2dOp {
    pad: usize,
}

impl CustomOp2 for ReflectConv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d-reflect"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, cin, h, w, cout) = conv2d_operands(l1, l2)?;
        let (p, k) = (self.pad, kernel_size(l2)?);
        let g = Geom::conv(cin, h + 2 * p, w + 2 * p, k, 1, 0)?;
        let weights = &act_data(s2, l2)?;
        let narrow = takes_narrow(cin, cout, k, 1, 0);
        let y = match s1 {
            // bf16 activations are padded as they are (half the f32 copy's size), or not at all.
            CpuStorage::BF16(_) => {
                let x = data::<bf16>(s1, l1)?;
                if narrow {
                    // Padded as its bands are widened: no padded copy at all.
                    act_storage(narrow_conv_kernel_reflected(x, weights, cout, &g, p), s1)?
                } else {
                    let xp = super::pad::pad_planes(x, h, w, p);
                    match cpu_bf16() {
                        true => CpuStorage::BF16(conv_kernel_bf16(&xp, weights, cout, &g)),
                        false => act_storage(conv_kernel(&widened(&xp), weights, cout, &g), s1)?,
                    }
                }
            }
            _ if narrow => act_storage(narrow_conv_kernel_reflected(&act_data(s1, l1)?, weights, cout, &g, p), s1)?,
            _ => act_storage(conv_kernel(&super::pad::pad_planes(&act_data(s1, l1)?, h, w, p), weights, cout, &g), s1)?,
        };
        Ok((y, Shape::from((b, cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The composed pair's backward passes, with the padded input made again.
        let (_, cin, h, wd) = x.dims4()?;
        let (cout, _, k, _) = w.dims4()?;
        let xp = super::reflect_pad2d(x, self.pad)?;
        let (dxp, dw) = if takes_narrow(cin, cout, k, 1, 0) {
            NarrowConv2dOp { pad: 0 }.bwd(&xp, w, res, dy)?
        } else {
            Conv2dOp { stride: 1, pad: 0 }.bwd(&xp, w, res, dy)?
        };
        let dx = dxp.map(|g| super::pad::fold_grad(&g, self.pad, h, wd)).transpose()?;
        Ok(super::made_grads((dx, dw)))
    }
}

/// conv2d(x [B,Cin,H,W], w [Cout,Cin,K,K]) → [B,Cout,Ho,Wo].
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, cin, h, w, cout) = conv2d_operands(l1, l2)?;
        let g = Geom::conv(cin, h, w, kernel_size(l2)?, self.stride, self.pad)?;
        let w = act_data(s2, l2)?;
        let y = match s1 {
            CpuStorage::BF16(_) if cpu_bf16() => CpuStorage::BF16(conv_kernel_bf16(data(s1, l1)?, &w, cout, &g)),
            _ => act_storage(conv_kernel(&act_data(s1, l1)?, &w, cout, &g), s1)?,
        };
        Ok((y, Shape::from((b, cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, k, _) = w.dims4()?;
        let (stride, pad) = (self.stride, self.pad);
        // The input's own size fixes the transposed convolution's output, per axis.
        let dx = x
            .track_op()
            .then(|| dy.apply_op2(w, ConvTranspose2dOp { stride, pad, out_h: h, out_w: wd }))
            .transpose()?;
        let dw = w.track_op().then(|| x.apply_op2(&dy, WeightGradOp { k, stride, pad })).transpose()?;
        Ok(super::made_grads((dx, dw)))
    }
}

/// conv_transpose2d(x [B,Cin,H,W], w [Cin,Cout,K,K]) → [B,Cout,out_h,out_w], where a conv2d with
/// the same stride and padding maps [out_h,out_w] back to [H,W].
struct ConvTranspose2dOp {
    stride: usize,
    pad: usize,
    out_h: usize,
    out_w: usize,
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "fast-conv-transpose2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, cin, h, w) = l1.shape().dims4()?;
        let (cin_w, cout, _, _) = l2.shape().dims4()?;
        if cin != cin_w {
            bail!("conv_transpose2d: input has {cin} channels but the weight expects {cin_w}");
        }
        let g = Geom::conv(cout, self.out_h, self.out_w, kernel_size(l2)?, self.stride, self.pad)?;
        if (g.ho, g.wo) != (h, w) {
            bail!(
                "conv_transpose2d: a {}x{} output does not convolve back to the {h}x{w} input",
                self.out_h,
                self.out_w
            );
        }
        let w = act_data(s2, l2)?;
        let y = match s1 {
            CpuStorage::BF16(_) => CpuStorage::BF16(conv_transpose_kernel_bf16(data(s1, l1)?, &w, cin, &g)),
            _ => act_storage(conv_transpose_kernel(&act_data(s1, l1)?, &w, cin, &g), s1)?,
        };
        Ok((y, Shape::from((b, cout, self.out_h, self.out_w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, k, _) = w.dims4()?;
        let (stride, pad) = (self.stride, self.pad);
        let dx = x.track_op().then(|| dy.apply_op2(w, Conv2dOp { stride, pad })).transpose()?;
        let dw = w.track_op().then(|| dy.apply_op2(x, WeightGradOp { k, stride, pad })).transpose()?;
        Ok(super::made_grads((dx, dw)))
    }
}

/// The weight gradient of conv2d: (x [B,C,H,W], grad [B,Cg,Ho,Wo]) → [Cg,C,K,K].
struct WeightGradOp {
    k: usize,
    stride: usize,
    pad: usize,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "fast-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let (bg, cg, ho, wo) = l2.shape().dims4()?;
        let g = Geom::conv(c, h, w, self.k, self.stride, self.pad)?;
        if (bg, g.ho, g.wo) != (b, ho, wo) {
            bail!("conv2d weight grad: gradient {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let dw = weight_grad_kernel(&act_data(s1, l1)?, &act_data(s2, l2)?, cg, &g);
        Ok((CpuStorage::F32(dw), Shape::from((cg, c, self.k, self.k))))
    }

    /// The op is bilinear in (x, grad): differentiating it gives a transposed convolution of
    /// `grad` and a convolution of `x`, both with the upstream gradient as their weight.
    fn bwd(&self, x: &Tensor, grad: &Tensor, _res: &Tensor, ddw: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddw = ddw.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let (stride, pad) = (self.stride, self.pad);
        let dx = x
            .track_op()
            .then(|| grad.apply_op2(&ddw, ConvTranspose2dOp { stride, pad, out_h: h, out_w: w }))
            .transpose()?;
        let dgrad = grad.track_op().then(|| x.apply_op2(&ddw, Conv2dOp { stride, pad })).transpose()?;
        Ok(super::made_grads((dx, dgrad)))
    }
}

/// Stride-1 convolution with fewer output than input channels (a generator's RGB head: 64 → 3
/// channels, 7×7). Its im2col matrix would have Cin·K² rows for only Cout output rows, so the
/// GEMM would stream a huge matrix for little arithmetic. Instead
///   Z = W' [Cout·K², Cin] · X [Cin, H·W]   and   y[co, o] = Σ_t Z[(co, t), o + t − pad],
/// whose intermediate has Cout·K² rows. The gradients are convolutions of `dy` (Cout channels,
/// padded by K−1−pad), so they too only build Cout·K²-row matrices:
///   dx = conv2d(dy, flip(W)ᵀ),   dW = flip(Σ x · im2col(dy)ᵀ)ᵀ.
struct NarrowConv2dOp {
    pad: usize,
}

impl CustomOp2 for NarrowConv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d-narrow"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, cin, h, w, cout) = conv2d_operands(l1, l2)?;
        let g = Geom::conv(cin, h, w, kernel_size(l2)?, 1, self.pad)?;
        let y = narrow_conv_kernel(&act_data(s1, l1)?, &act_data(s2, l2)?, cout, &g);
        Ok((act_storage(y, s1)?, Shape::from((b, cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, k, _) = w.dims4()?;
        let full = k - 1 - self.pad;
        let rev = Tensor::new((0..k as u32).rev().collect::<Vec<_>>(), w.device())?;
        let flip = |t: &Tensor| t.contiguous()?.index_select(&rev, 2)?.index_select(&rev, 3);
        let dx = x
            .track_op()
            .then(|| dy.apply_op2(&flip(&w.transpose(0, 1)?)?.contiguous()?, Conv2dOp { stride: 1, pad: full }))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| flip(&dy.apply_op2(x, WeightGradOp { k, stride: 1, pad: full })?.transpose(0, 1)?)?.contiguous())
            .transpose()?;
        Ok(super::made_grads((dx, dw)))
    }
}

/// The forward pass of `NarrowConv2dOp`: `x` [B, g.c, g.h, g.w], `w` [cout, g.c, K, K] (stride 1)
/// → [B, cout, g.ho, g.wo], in bands of output rows that bound Z.
fn narrow_conv_kernel<T: Elem>(x: &[T], w: &[f32], cout: usize, g: &Geom) -> Vec<f32> {
    narrow_conv_kernel_reflected(x, w, cout, g, 0)
}

/// [`narrow_conv_kernel`] of `x` reflection-padded by `reflect` (`g` is the padded image's
/// geometry, `x` holds unpadded images): the padding is made in f32 rows a band at a time (which
/// bf16 activations are widened into anyway), so no padded copy of the image is made.
fn narrow_conv_kernel_reflected<T: Elem>(x: &[T], w: &[f32], cout: usize, g: &Geom, reflect: usize) -> Vec<f32> {
    let (k, kk, p) = (g.k, g.k * g.k, g.pad);
    let (h0, w0) = (g.h - 2 * reflect, g.w - 2 * reflect);
    let rows = super::reflect_indices(h0, reflect);
    // W' [(co, t), ci] = w[co, ci, t].
    let mut wp = crate::ops::zeros(cout * kk * g.c);
    for co in 0..cout {
        for ci in 0..g.c {
            for t in 0..kk {
                wp[(co * kk + t) * g.c + ci] = w[(co * g.c + ci) * kk + t];
            }
        }
    }
    let rows_per_band = (scratch_limit() / (cout * kk * g.w * 2).max(1)).clamp(1, g.ho);
    let mut y = crate::ops::zeros(x.len() / (g.c * h0 * w0) * cout * g.cols());
    for (xb, yb) in x.chunks_exact(g.c * h0 * w0).zip(y.chunks_exact_mut(cout * g.cols())) {
        for b0 in (0..g.ho).step_by(rows_per_band) {
            let b1 = (b0 + rows_per_band).min(g.ho);
            // Input rows the band's outputs read: oy + ki − p for oy in [b0, b1), ki in [0, K).
            let r0 = b0.saturating_sub(p);
            let r1 = (b1 + k - 1).saturating_sub(p).min(g.h);
            if r0 >= r1 {
                continue;
            }
            let zn = (r1 - r0) * g.w;
            with_scratch(cout * kk * zn, |z| {
                let lhs = Mat::rows(&wp, g.c);
                match T::as_f32(xb) {
                    Some(xb) if reflect == 0 => matmul(cout * kk, zn, g.c, (z, zn), false, lhs, Mat { data: &xb[r0 * g.w..], rs: g.h * g.w, cs: 1 }),
                    // The band's input rows padded (and widened, for bf16), channel by channel.
                    _ => with_scratch_slot(1, g.c * zn, |xw| {
                        xw.par_chunks_mut(zn).enumerate().for_each(|(ci, d)| {
                            for (r, row) in (r0..r1).zip(d.chunks_exact_mut(g.w)) {
                                reflect_row(row, &xb[(ci * h0 + rows[r] as usize) * w0..][..w0], reflect, T::widen, T::to_f32);
                            }
                        });
                        matmul(cout * kk, zn, g.c, (z, zn), false, lhs, Mat::rows(xw, zn));
                    }),
                }
                let z: &[f32] = z;
                yb.par_chunks_mut(g.cols()).enumerate().for_each(|(co, plane)| {
                    for t in 0..kk {
                        let (ki, kj) = (t / k, t % k);
                        let (y_lo, y_hi) = g.valid(g.ho, g.h, ki);
                        let (y_lo, y_hi) = (y_lo.clamp(b0, b1), y_hi.clamp(b0, b1));
                        let (x_lo, x_hi) = g.valid(g.wo, g.w, kj);
                        if x_lo >= x_hi {
                            continue;
                        }
                        let zt = &z[(co * kk + t) * zn..][..zn];
                        for oy in y_lo..y_hi {
                            let src = &zt[(oy + ki - p - r0) * g.w + x_lo + kj - p..][..x_hi - x_lo];
                            for (d, v) in plane[oy * g.wo + x_lo..oy * g.wo + x_hi].iter_mut().zip(src) {
                                *d += v;
                            }
                        }
                    }
                });
            });
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting k across threads gives the plain GEMM's result, overwriting or accumulating,
    /// with strided operands and a destination row stride wider than the output.
    #[test]
    fn split_k_matmul_matches_matmul() {
        let (m, n, k, rs) = (5, 7, 1031, 9);
        let val = super::super::test_value;
        let lhs: Vec<f32> = (0..m * k).map(val).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| val(i + 5)).collect();
        let (l, r) = (Mat::rows(&lhs, k), Mat::transposed(&rhs, k));
        for accumulate in [false, true] {
            let start: Vec<f32> = (0..m * rs).map(|i| val(i + 11)).collect();
            let (mut plain, mut split) = (start.clone(), start);
            matmul(m, n, k, (&mut plain, rs), accumulate, l, r);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            pool.install(|| matmul_split_k(m, n, k, (&mut split, rs), accumulate, l, r));
            assert!(plain.iter().zip(&split).all(|(p, q)| (p - q).abs() < 1e-4), "accumulate {accumulate}");
        }
    }

    /// The narrow-output kernel gives the same results in one band and in one row per band.
    #[test]
    fn banded_narrow_kernel_matches_single_band() {
        let g = Geom::conv(6, 13, 11, 5, 1, 2).unwrap();
        let (b, cout) = (2, 2);
        let val = super::super::test_value;
        let x: Vec<f32> = (0..b * g.img_len()).map(val).collect();
        let w: Vec<f32> = (0..cout * g.rows()).map(|i| val(i + 3)).collect();
        let whole = narrow_conv_kernel(&x, &w, cout, &g);
        SCRATCH_LIMIT.with(|l| l.set(1));
        let banded = narrow_conv_kernel(&x, &w, cout, &g);
        SCRATCH_LIMIT.with(|l| l.set(MAX_SCRATCH));
        assert!(whole.iter().zip(&banded).all(|(p, q)| (p - q).abs() < 1e-5));
        // And both match im2col.
        let im2col = conv_kernel(&x, &w, cout, &g);
        assert!(whole.iter().zip(&im2col).all(|(p, q)| (p - q).abs() < 1e-4));
    }

    /// In bf16 the products pack the im2col matrix from the image in place, the forward one as
    /// B and the weight gradient's as Bᵀ: bit for bit what the f32 matrix from `im2col` gives the
    /// same products, at strides 1–3, with padding, segments that span output rows (narrow
    /// images), several column tasks (wide ones) and several k blocks (the gradient's).
    #[test]
    fn bf16_packs_im2col_in_place_as_from_the_matrix() {
        let Some(hw) = super::super::gemm_bf16::hardware() else {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 kernels' instruction set)");
            return;
        };
        eprintln!("testing the {hw} kernel");
        let val = super::super::test_value;
        for (c, h, w, k, stride, pad) in [(3, 13, 11, 3, 2, 1), (5, 40, 37, 7, 1, 3), (4, 9, 70, 4, 3, 1), (6, 5, 6, 3, 1, 0), (2, 64, 64, 3, 2, 1)] {
            let g = Geom::conv(c, h, w, k, stride, pad).unwrap();
            let (b, cout, n) = (2, 5, g.cols());
            let x: Vec<f32> = (0..b * g.img_len()).map(val).collect();
            let wt: Vec<f32> = (0..cout * g.rows()).map(|i| val(i + 3)).collect();
            let in_place = super::super::with_precision(super::super::Precision::Bf16, || conv_kernel(&x, &wt, cout, &g));
            let mut from_matrix = vec![0f32; b * cout * n];
            for (xb, yb) in x.chunks_exact(g.img_len()).zip(from_matrix.chunks_exact_mut(cout * n)) {
                let mut cols = vec![0f32; g.rows() * n];
                im2col(xb, &g, (0, g.ho), &mut cols);
                // SAFETY: hardware checked; operands and destination sized above.
                unsafe { super::super::gemm_bf16::gemm(cout, n, g.rows(), (yb.as_mut_ptr(), n), false, Mat::rows(&wt, g.rows()), Mat::rows(&cols, n), true) };
            }
            assert!(in_place.iter().zip(&from_matrix).all(|(p, q)| p.to_bits() == q.to_bits()), "{c}x{h}x{w} k {k} stride {stride} pad {pad}");

            let dy: Vec<f32> = (0..b * cout * n).map(|i| val(i + 5)).collect();
            let in_place = super::super::with_precision(super::super::Precision::Bf16, || weight_grad_kernel(&x, &dy, cout, &g));
            let mut from_matrix = vec![0f32; cout * g.rows()];
            for (i, (xb, gb)) in x.chunks_exact(g.img_len()).zip(dy.chunks_exact(cout * n)).enumerate() {
                let mut cols = vec![0f32; g.rows() * n];
                im2col(xb, &g, (0, g.ho), &mut cols);
                // SAFETY: hardware checked; operands and destination sized above.
                unsafe { super::super::gemm_bf16::gemm(cout, g.rows(), n, (from_matrix.as_mut_ptr(), g.rows()), i > 0, Mat::rows(gb, n), Mat::transposed(&cols, n), true) };
            }
            assert!(in_place.iter().zip(&from_matrix).all(|(p, q)| p.to_bits() == q.to_bits()), "weight grad: {c}x{h}x{w} k {k} stride {stride} pad {pad}");
        }
    }

    /// col2im adds each tap's contribution to an element in the same order at every stride (at
    /// stride 2 through even and odd column phases), so it equals the plain scalar scatter bit
    /// for bit: odd and even widths, padding, bands that start past the first row.
    #[test]
    fn col2im_matches_the_scalar_scatter() {
        let val = super::super::test_value;
        for (c, h, w, k, stride, pad) in [(2, 13, 11, 3, 2, 1), (3, 16, 16, 4, 2, 1), (1, 9, 8, 3, 2, 0), (2, 7, 9, 3, 1, 1), (1, 10, 13, 3, 3, 1)] {
            let g = Geom::conv(c, h, w, k, stride, pad).unwrap();
            for band in [(0, g.ho), (1, g.ho.min(3)), (g.ho - 1, g.ho)] {
                let n = (band.1 - band.0) * g.wo;
                let cols: Vec<f32> = (0..g.rows() * n).map(|i| val(i + 1)).collect();
                let start: Vec<f32> = (0..g.img_len()).map(|i| val(i + 9)).collect();
                let mut got = start.clone();
                col2im_add(&cols, &g, band, &mut got);
                let mut want = start;
                for ch in 0..c {
                    for ki in 0..k {
                        for kj in 0..k {
                            for oy in band.0..band.1 {
                                for ox in 0..g.wo {
                                    let (iy, ix) = ((oy * stride + ki) as isize - pad as isize, (ox * stride + kj) as isize - pad as isize);
                                    if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                        want[(ch * h + iy as usize) * w + ix as usize] += cols[((ch * k + ki) * k + kj) * n + (oy - band.0) * g.wo + ox];
                                    }
                                }
                            }
                        }
                    }
                }
                assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()), "{c}x{h}x{w} k {k} stride {stride} pad {pad} band {band:?}");
            }
        }
    }

    /// The kernels give the same results in one band and in many (one output row each).
    #[test]
    fn banded_kernels_match_single_band() {
        let g = Geom::conv(3, 13, 11, 3, 2, 1).unwrap();
        let (b, cout) = (2, 5);
        let val = super::super::test_value;
        let x: Vec<f32> = (0..b * g.img_len()).map(val).collect();
        let w: Vec<f32> = (0..cout * g.rows()).map(|i| val(i + 3)).collect();
        let dy: Vec<f32> = (0..b * cout * g.cols()).map(|i| val(i + 5)).collect();
        let run = || (conv_kernel(&x, &w, cout, &g), conv_transpose_kernel(&dy, &w, cout, &g), weight_grad_kernel(&x, &dy, cout, &g));
        let whole = run();
        SCRATCH_LIMIT.with(|l| l.set(1));
        assert!(bands(&g).count() == g.ho);
        let banded = run();
        SCRATCH_LIMIT.with(|l| l.set(MAX_SCRATCH));
        for (a, b) in [(&whole.0, &banded.0), (&whole.1, &banded.1), (&whole.2, &banded.2)] {
            assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5));
        }
    }

    /// With bf16 activations each kernel gives the f32 kernel's result on the widened input,
    /// rounded, bit for bit: in one band and in many (the convolution's output rounded band by
    /// band, the transposed one's overlapping rows carried from band to band), and the narrow
    /// kernel with the reflection padding made as it widens its bands, without a padded copy.
    #[test]
    fn bf16_activation_kernels_round_the_f32_kernels_results() {
        use crate::ops::{with_precision, Precision};
        if super::super::gemm_bf16::hardware().is_none() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 kernels' instruction set)");
            return;
        }
        let val = super::super::test_value;
        let bf16s = |n: usize, seed: usize| (0..n).map(|i| bf16::from_f32(val(i * 3 + seed) * 4.0)).collect::<Vec<_>>();
        let rounded = |v: Vec<f32>| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        with_precision(Precision::Bf16, || {
            for limit in [MAX_SCRATCH, 1, 300] {
                SCRATCH_LIMIT.with(|l| l.set(limit));
                // Stride 2 (the down- and up-sampling layers), 1, a 7×7 with no padding, odd sizes.
                for (c, h, w, k, stride, pad, cout) in [(5, 13, 11, 3, 2, 1, 7), (4, 9, 10, 3, 1, 1, 6), (3, 14, 12, 7, 1, 0, 8), (6, 16, 16, 3, 2, 1, 3)] {
                    let g = Geom::conv(c, h, w, k, stride, pad).unwrap();
                    let b = 2;
                    let wt: Vec<f32> = (0..cout * g.rows()).map(|i| val(i + 3) * 0.3).collect();
                    let x = bf16s(b * g.img_len(), 1);
                    let want = rounded(conv_kernel(&widened(&x), &wt, cout, &g));
                    assert_eq!(conv_kernel_bf16(&x, &wt, cout, &g), want, "conv {c}x{h}x{w} k{k}/{stride} limit {limit}");
                    let dy = bf16s(b * cout * g.cols(), 2);
                    let want = rounded(conv_transpose_kernel(&widened(&dy), &wt, cout, &g));
                    assert_eq!(conv_transpose_kernel_bf16(&dy, &wt, cout, &g), want, "transposed {c}x{h}x{w} k{k}/{stride} limit {limit}");
                }
                let (c, h, w, p, k, cout) = (6, 9, 8, 3, 7, 2);
                let g = Geom::conv(c, h + 2 * p, w + 2 * p, k, 1, 0).unwrap();
                let wt: Vec<f32> = (0..cout * g.rows()).map(|i| val(i + 5) * 0.3).collect();
                let x = bf16s(2 * c * h * w, 3);
                let want = narrow_conv_kernel(&super::super::pad::pad_planes(&widened(&x), h, w, p), &wt, cout, &g);
                assert_eq!(bits(&narrow_conv_kernel_reflected(&x, &wt, cout, &g, p)), bits(&want), "reflected narrow, limit {limit}");
                let xf = widened(&x);
                assert_eq!(bits(&narrow_conv_kernel_reflected(&xf[..], &wt, cout, &g, p)), bits(&want), "reflected narrow f32, limit {limit}");
            }
            SCRATCH_LIMIT.with(|l| l.set(MAX_SCRATCH));
        });
    }
}
