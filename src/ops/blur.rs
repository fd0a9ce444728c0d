//! CUT's anti-aliasing filters (`model::antialias`) as candle custom ops: one pass per plane for
//! both axes, forward and backward. The composed versions (in `model::antialias`, what a GPU
//! runs) gather each tap with `index_select` and combine whole tensors, axis by axis; backward
//! then runs scattered index-adds.
//!
//! * `blur_down`: reflect-pad 1, [1,2,1]⊗[1,2,1]/16, stride 2 — per output row, the vertical
//!   taps are combined into a row buffer, then the horizontal taps are read from it with stride
//!   2. Backward is the exact adjoint (each output's weights scattered back, the reflected taps
//!   folded onto the samples they mirror).
//! * `blur_up`: per axis out[2m] = ¾x[m] + ¼x[m−1], out[2m+1] = ¾x[m] + ¼x[m+1], indices
//!   clamped — horizontal pass into a plane buffer, then the vertical combination row by row.
//!   Backward gathers, per input row, the vertical adjoint into a row buffer and then the
//!   horizontal adjoint.
//!
//! Both are linear: the gradient of each backward op is the forward op again.

use super::{act_data, act_storage, cpu_act};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output side of the blur-pool along an axis of `n` (≥ 2) samples: PyTorch's conv output size
/// for kernel 3, padding 1, stride 2.
pub(super) fn down_len(n: usize) -> usize {
    (n - 1) / 2 + 1
}

/// Reflection of index `i` (−1 ..= n) into 0..n (`n` ≥ 2), as `nn.ReflectionPad2d` of width 1.
#[inline(always)]
fn reflect(i: isize, n: usize) -> usize {
    if i < 0 {
        (-i) as usize
    } else if i as usize >= n {
        2 * (n - 1) - i as usize
    } else {
        i as usize
    }
}

/// Checks the input of `blur_down`, with the message of the composed version.
fn check_down(xs: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let (b, c, h, w) = xs.dims4()?;
    for (dim, n) in [(2, h), (3, w)] {
        if n < 2 {
            bail!("blur_down needs at least 2 pixels along dimension {dim}, got {n}");
        }
    }
    Ok((b, c, h, w))
}

/// Whether the fused CPU kernels take `xs` (f32 on the CPU, `CS_GENERIC_OPS` unset).
pub(crate) fn applies(xs: &Tensor) -> bool {
    cpu_act(xs)
}

/// Whether a kernel fused with the blur-pool (`norm::instance_norm_act_blur_down`,
/// `bias::bias_act_blur_down`) takes `xs` [B,C,H,W]: `applies`, and at least 2×2 pixels.
pub(crate) fn fused_down_applies(xs: &Tensor) -> bool {
    applies(xs) && xs.dims4().is_ok_and(|(_, _, h, w)| h >= 2 && w >= 2)
}

/// The blur-pool of `xs` [B,C,H,W] (f32, CPU; H, W ≥ 2) → [B,C,⌊(H−1)/2⌋+1,⌊(W−1)/2⌋+1].
/// Callers dispatch with `applies` (`model::antialias::blur_down`).
pub(crate) fn blur_down(xs: &Tensor) -> Result<Tensor> {
    check_down(xs)?;
    xs.contiguous()?.apply_op1(BlurDown)
}

/// The blur up-sampling of `xs` [B,C,H,W] (f32, CPU) → [B,C,2H,2W]. Callers dispatch with
/// `applies` (`model::antialias::blur_up`).
pub(crate) fn blur_up(xs: &Tensor) -> Result<Tensor> {
    xs.dims4()?;
    xs.contiguous()?.apply_op1(BlurUp)
}

simd_fn! {
    /// One plane of the blur-pool: `x` h×w → `y` oh×ow; `t` is a row buffer of w.
    pub(super) fn down_plane(y: &mut [f32], x: &[f32], t: &mut [f32], h: usize, w: usize) {
        let ow = down_len(w);
        for (i, row) in y.chunks_exact_mut(ow).enumerate() {
            let c = 2 * i;
            let (ra, rb, rc) = (&x[reflect(c as isize - 1, h) * w..][..w], &x[c * w..][..w], &x[reflect(c as isize + 1, h) * w..][..w]);
            for (((t, &a), &b), &c) in t.iter_mut().zip(ra).zip(rb).zip(rc) {
                *t = (a + c) * 0.25 + b * 0.5;
            }
            let tap = |j: usize| (t[reflect(2 * j as isize - 1, w)] + t[reflect(2 * j as isize + 1, w)]) * 0.25 + t[2 * j] * 0.5;
            row[0] = tap(0);
            // Interior: 2j+1 < w, no reflection.
            let inner = (w / 2).max(1);
            for (j, o) in row.iter_mut().enumerate().take(inner).skip(1) {
                *o = (t[2 * j - 1] + t[2 * j + 1]) * 0.25 + t[2 * j] * 0.5;
            }
            for (j, o) in row.iter_mut().enumerate().skip(inner) {
                *o = tap(j);
            }
        }
    }
}

simd_fn! {
    /// The adjoint of `down_plane`: `dy` oh×ow → `dx` h×w (zeroed by the caller); `t` a row
    /// buffer of w.
    pub(super) fn down_adjoint_plane(dx: &mut [f32], dy: &[f32], t: &mut [f32], h: usize, w: usize) {
        let ow = down_len(w);
        for (i, d) in dy.chunks_exact(ow).enumerate() {
            t.fill(0.0);
            for (j, &v) in d.iter().enumerate() {
                t[reflect(2 * j as isize - 1, w)] += 0.25 * v;
                t[2 * j] += 0.5 * v;
                t[reflect(2 * j as isize + 1, w)] += 0.25 * v;
            }
            let c = 2 * i;
            for (r, k) in [(reflect(c as isize - 1, h), 0.25f32), (c, 0.5), (reflect(c as isize + 1, h), 0.25)] {
                for (o, &v) in dx[r * w..][..w].iter_mut().zip(t.iter()) {
                    *o += k * v;
                }
            }
        }
    }
}

simd_fn! {
    /// One plane of the blur up-sampling: `x` h×w → `y` 2h×2w; `buf` h×2w (the horizontal
    /// pass).
    fn up_plane(y: &mut [f32], x: &[f32], buf: &mut [f32], h: usize, w: usize) {
        let w2 = 2 * w;
        for (xr, hr) in x.chunks_exact(w).zip(buf.chunks_exact_mut(w2)) {
            up_row(hr, xr);
        }
        for m in 0..h {
            let prev = &buf[m.saturating_sub(1) * w2..][..w2];
            let cur = &buf[m * w2..][..w2];
            let next = &buf[(m + 1).min(h - 1) * w2..][..w2];
            let (even, odd) = y[2 * m * w2..][..2 * w2].split_at_mut(w2);
            for (((e, o), (&c, &p)), &n) in even.iter_mut().zip(odd.iter_mut()).zip(cur.iter().zip(prev)).zip(next) {
                let c = 0.75 * c;
                *e = c + 0.25 * p;
                *o = c + 0.25 * n;
            }
        }
    }
}

/// One row (or column) of the blur up-sampling: `x` n → `out` 2n.
#[inline(always)]
pub(super) fn up_row(out: &mut [f32], x: &[f32]) {
    let n = x.len();
    let at = |k: usize| -> (f32, f32) {
        let c = 0.75 * x[k];
        (c + 0.25 * x[k.saturating_sub(1)], c + 0.25 * x[(k + 1).min(n - 1)])
    };
    (out[0], out[1]) = at(0);
    if n > 2 {
        for (o, xw) in out[2..2 * n - 2].chunks_exact_mut(2).zip(x.windows(3)) {
            let c = 0.75 * xw[1];
            o[0] = c + 0.25 * xw[0];
            o[1] = c + 0.25 * xw[2];
        }
    }
    if n > 1 {
        (out[2 * n - 2], out[2 * n - 1]) = at(n - 1);
    }
}

simd_fn! {
    /// The adjoint of `up_plane`: `dy` 2h×2w → `dx` h×w; `t` a row buffer of 2w.
    fn up_adjoint_plane(dx: &mut [f32], dy: &[f32], t: &mut [f32], h: usize, w: usize) {
        let w2 = 2 * w;
        let row = |r: usize| &dy[r * w2..][..w2];
        for (m, dr) in dx.chunks_exact_mut(w).enumerate() {
            // Vertical: row m of x feeds out[2m], out[2m+1] (¾), out[2m+2] and out[2m−1] (¼),
            // and with clamping out[0] (m = 0) and out[2h−1] (m = h−1).
            let (e, o) = (row(2 * m), row(2 * m + 1));
            let below = if m + 1 < h { row(2 * m + 2) } else { o };
            let above = if m >= 1 { row(2 * m - 1) } else { e };
            for ((((t, &e), &o), &b), &a) in t.iter_mut().zip(e).zip(o).zip(below).zip(above) {
                *t = 0.75 * (e + o) + 0.25 * (b + a);
            }
            up_row_adjoint(dr, t);
        }
    }
}

/// The adjoint of `up_row`: `g` 2n → `out` n.
#[inline(always)]
pub(super) fn up_row_adjoint(out: &mut [f32], g: &[f32]) {
    let n = out.len();
    let at = |k: usize| -> f32 {
        let next = if k + 1 < n { g[2 * k + 2] } else { g[2 * k + 1] };
        let prev = if k >= 1 { g[2 * k - 1] } else { g[0] };
        0.75 * (g[2 * k] + g[2 * k + 1]) + 0.25 * (next + prev)
    };
    out[0] = at(0);
    if n > 2 {
        // out[k] for k in 1..n−1 reads g[2k−1 ..= 2k+2].
        for (o, gw) in out[1..n - 1].iter_mut().zip(g[1..].chunks_exact(2).zip(g[3..].chunks_exact(2))) {
            let (a, b) = gw;
            *o = 0.75 * (a[1] + b[0]) + 0.25 * (b[1] + a[0]);
        }
    }
    if n > 1 {
        out[n - 1] = at(n - 1);
    }
}

struct BlurDown;

impl CustomOp1 for BlurDown {
    fn name(&self) -> &'static str {
        "blur-down"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = act_data(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        if h < 2 || w < 2 {
            bail!("blur_down needs at least 2 pixels per axis, got {h}x{w}");
        }
        let (oh, ow) = (down_len(h), down_len(w));
        let mut y = crate::ops::zeros(b * c * oh * ow);
        y.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each_init(|| vec![0f32; w], |t, (yp, xp)| down_plane(yp, xp, t, h, w));
        Ok((act_storage(y, s)?, Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        Ok(Some(dy.contiguous()?.apply_op1(BlurDownBwd { h, w })?))
    }
}

/// The adjoint of `BlurDown`: [B,C,oh,ow] → [B,C,H,W].
struct BlurDownBwd {
    h: usize,
    w: usize,
}

impl CustomOp1 for BlurDownBwd {
    fn name(&self) -> &'static str {
        "blur-down-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = act_data(s, l)?;
        let (b, c, oh, ow) = l.shape().dims4()?;
        let (h, w) = (self.h, self.w);
        if oh != down_len(h) || ow != down_len(w) {
            bail!("blur_down backward: gradient {oh}x{ow} does not match input {h}x{w}");
        }
        let mut dx = crate::ops::zeros(b * c * h * w);
        dx.par_chunks_mut(h * w).zip(dy.par_chunks(oh * ow)).for_each_init(|| vec![0f32; w], |t, (xp, yp)| down_adjoint_plane(xp, yp, t, h, w));
        Ok((act_storage(dx, s)?, Shape::from((b, c, h, w))))
    }

    fn bwd(&self, _dy: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(blur_down(ddx)?))
    }
}

struct BlurUp;

impl CustomOp1 for BlurUp {
    fn name(&self) -> &'static str {
        "blur-up"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = act_data(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut y = crate::ops::zeros(b * c * 4 * h * w);
        if h > 0 && w > 0 {
            y.par_chunks_mut(4 * h * w).zip(x.par_chunks(h * w)).for_each_init(|| vec![0f32; 2 * h * w], |buf, (yp, xp)| up_plane(yp, xp, buf, h, w));
        }
        Ok((act_storage(y, s)?, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1(BlurUpBwd)?))
    }
}

/// The adjoint of `BlurUp`: [B,C,2H,2W] → [B,C,H,W].
struct BlurUpBwd;

impl CustomOp1 for BlurUpBwd {
    fn name(&self) -> &'static str {
        "blur-up-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = act_data(s, l)?;
        let (b, c, h2, w2) = l.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            bail!("blur_up backward: gradient {h2}x{w2} is not twice an input size");
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let mut dx = crate::ops::zeros(b * c * h * w);
        if h > 0 && w > 0 {
            dx.par_chunks_mut(h * w).zip(dy.par_chunks(4 * h * w)).for_each_init(|| vec![0f32; 2 * w], |t, (xp, yp)| up_adjoint_plane(xp, yp, t, h, w));
        }
        Ok((act_storage(dx, s)?, Shape::from((b, c, h, w))))
    }

    fn bwd(&self, _dy: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(blur_up(ddx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::antialias::{blur_down_composed, blur_up_composed};
    use crate::ops::test_value;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward and gradient (of a weighted sum) of `fused` against `composed` on `shape`.
    fn compare(shape: (usize, usize, usize, usize), fused: fn(&Tensor) -> Result<Tensor>, composed: fn(&Tensor) -> Result<Tensor>) {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let x = Var::from_vec((0..n).map(test_value).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap();
        let ours = fused(x.as_tensor()).unwrap();
        let reference = composed(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "{shape:?}");
        let d = max_diff(&ours, &reference);
        assert!(d < 1e-6, "{shape:?} forward differs by {d}");
        let m = ours.elem_count();
        let weights = Tensor::from_vec((0..m).map(|i| test_value(3 * i + 5)).collect::<Vec<_>>(), ours.shape(), &Device::Cpu).unwrap();
        let g1 = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(d < 1e-6, "{shape:?} gradient differs by {d}");
    }

    #[test]
    fn blur_down_matches_composed() {
        for shape in [(2, 3, 7, 9), (1, 2, 8, 8), (1, 1, 2, 3), (1, 2, 3, 2), (1, 1, 2, 2), (2, 2, 9, 4), (1, 3, 5, 16)] {
            compare(shape, blur_down, blur_down_composed);
        }
    }

    #[test]
    fn blur_up_matches_composed() {
        for shape in [(2, 3, 7, 9), (1, 2, 8, 8), (1, 1, 2, 3), (1, 2, 1, 5), (1, 2, 6, 1), (1, 1, 1, 1), (2, 1, 3, 2), (1, 2, 4, 17)] {
            compare(shape, blur_up, blur_up_composed);
        }
    }

    #[test]
    fn blur_down_rejects_one_pixel_axes() {
        for (shape, dim) in [((1, 1, 1, 4), 2), ((1, 1, 4, 1), 3)] {
            let x = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
            for r in [blur_down(&x), blur_down_composed(&x), crate::model::antialias::blur_down(&x)] {
                let e = r.unwrap_err().to_string();
                assert!(e.contains(&format!("blur_down needs at least 2 pixels along dimension {dim}, got 1")), "{e}");
            }
        }
    }

    #[test]
    fn backward_ops_are_adjoints() {
        // <F x, dy> == <x, F* dy> for both filters.
        let x = Var::from_vec((0..2 * 6 * 5).map(test_value).collect::<Vec<_>>(), (1, 2, 6, 5), &Device::Cpu).unwrap();
        let dy = Tensor::from_vec((0..2 * 3 * 3).map(|i| test_value(i + 11)).collect::<Vec<_>>(), (1, 2, 3, 3), &Device::Cpu).unwrap();
        let adj = dy.apply_op1(BlurDownBwd { h: 6, w: 5 }).unwrap();
        let lhs = (blur_down(x.as_tensor()).unwrap() * &dy).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let rhs = (x.as_tensor() * &adj).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
        let dy = Tensor::from_vec((0..2 * 12 * 10).map(|i| test_value(i + 11)).collect::<Vec<_>>(), (1, 2, 12, 10), &Device::Cpu).unwrap();
        let adj = dy.apply_op1(BlurUpBwd).unwrap();
        let lhs = (blur_up(x.as_tensor()).unwrap() * &dy).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let rhs = (x.as_tensor() * &adj).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
    }
}
