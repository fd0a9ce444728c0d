//! Instance normalisation fused with the activation that follows it (or with a residual block's
//! skip connection), as one candle custom op with its own backward pass.
//!
//! Composed from generic ops, `relu(instance_norm(x))` makes about ten passes over memory in
//! the forward pass, more in backward, and keeps five full-size intermediates alive for autograd.
//! Here the forward pass reads `x` twice (statistics, then output) and the backward pass reads
//! `x` and `dy` twice each, keeping only `x` and the per-plane mean and 1/σ. Semantics are
//! PyTorch's `InstanceNorm2d` defaults (no affine, no running stats, biased variance, eps 1e-5).

use super::{act_data, act_storage, blur, cpu_act, data, Elem};
use candle_core::backend::BackendStorage;
use half::bf16;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

const EPS: f64 = 1e-5;

/// The activation applied after normalising.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Identity,
    Relu,
    /// max(x, slope·x) with 0 < slope < 1.
    LeakyRelu(f32),
}

impl Act {
    /// `out[i] = act(f(x[i]))`, the activation chosen once outside the loop so that each
    /// variant vectorises (inline into a `simd_fn!` body for wide vectors).
    #[inline(always)]
    pub(crate) fn map(self, out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
        let it = out.iter_mut().zip(x);
        match self {
            Act::Identity => it.for_each(|(o, &v)| *o = f(v)),
            Act::Relu => it.for_each(|(o, &v)| *o = f(v).max(0.0)),
            Act::LeakyRelu(s) => it.for_each(|(o, &v)| {
                let p = f(v);
                *o = if p >= 0.0 { p } else { p * s };
            }),
        }
    }

    /// `out[i] = g[i] · act'(f(x[i]))` (`out`, `g` and `x` the same length).
    #[inline(always)]
    pub(crate) fn grad_map(self, out: &mut [f32], g: &[f32], x: &[f32], f: impl Fn(f32) -> f32) {
        let it = out.iter_mut().zip(g).zip(x);
        match self {
            Act::Identity => it.for_each(|((o, &d), _)| *o = d),
            Act::Relu => it.for_each(|((o, &d), &v)| *o = if f(v) > 0.0 { d } else { 0.0 }),
            Act::LeakyRelu(s) => it.for_each(|((o, &d), &v)| *o = if f(v) > 0.0 { d } else { d * s }),
        }
    }

    /// The activation composed from generic candle ops (other devices and dtypes).
    pub fn compose(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Act::Identity => Ok(xs.clone()),
            Act::Relu => xs.relu(),
            Act::LeakyRelu(s) => super::leaky_relu(xs, s as f64),
        }
    }
}

/// `act(instance_norm(xs))` for `xs` `[B,C,H,W]`; f32 or bf16 CPU tensors take the fused kernel.
pub fn instance_norm_act(xs: &Tensor, act: Act) -> Result<Tensor> {
    if !cpu_act(xs) {
        return act.compose(&super::instance_norm(xs)?);
    }
    let (b, c, h, w) = xs.dims4()?;
    if h * w == 0 || b * c == 0 {
        bail!("instance norm of an empty tensor {:?}", xs.dims());
    }
    xs.contiguous()?.apply_op1(InstanceNormAct { act, stats: Arc::new(Mutex::new(Vec::new())) })
}

/// `act((xs − mean) · inv_std)` for `xs` `[B,C,H,W]` with statistics given per channel (`[C]`
/// values broadcast over the batch, or `[B·C]`): instance norm with statistics taken from another
/// pass (tiled translation). f32 or bf16 CPU tensors take one fused pass, others the composed ops; the
/// results are the same bit for bit. Forward only.
pub fn normalise_act(xs: &Tensor, mean: &Tensor, inv_std: &Tensor, act: Act) -> Result<Tensor> {
    let (b, c, _, _) = xs.dims4()?;
    let n = mean.elem_count();
    if !cpu_act(xs) || !super::cpu_f32(mean) || !super::cpu_f32(inv_std) || !(n == c || n == b * c) || inv_std.elem_count() != n {
        return act.compose(&xs.broadcast_sub(mean)?.broadcast_mul(inv_std)?);
    }
    let stats: Vec<(f32, f32)> = mean.flatten_all()?.to_vec1::<f32>()?.into_iter().zip(inv_std.flatten_all()?.to_vec1::<f32>()?).collect();
    xs.contiguous()?.apply_op1_no_bwd(&NormaliseAct { act, stats })
}

simd_fn! {
    /// One plane of `act((x − mean) · inv_std)`.
    fn normalise_act_plane(y: &mut [f32], x: &[f32], mean: f32, inv_std: f32, act: Act) {
        act.map(y, x, |v| (v - mean) * inv_std);
    }
}

/// [`normalise_act`]'s fused op: (mean, 1/σ) per channel, or per plane.
struct NormaliseAct {
    act: Act,
    stats: Vec<(f32, f32)>,
}

impl CustomOp1 for NormaliseAct {
    fn name(&self) -> &'static str {
        "normalise-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = l.shape().dims4()?;
        let hw = h * w;
        if hw == 0 || self.stats.is_empty() {
            bail!("normalise_act: empty spatial axis ({h}x{w}) or no statistics");
        }
        let (stats, act) = (&self.stats, self.act);
        // Per channel (broadcast over the batch) or per plane: plane i (of B·C) uses entry i mod len.
        let plane = |i: usize, xp: &[f32], _: Option<&[f32]>, yp: &mut [f32]| {
            let (mean, inv_std) = stats[i % stats.len()];
            normalise_act_plane(yp, xp, mean, inv_std, act)
        };
        let y = match s {
            CpuStorage::BF16(_) => CpuStorage::BF16(map_planes(data::<bf16>(s, l)?, None::<&[f32]>, hw, plane).0),
            _ => CpuStorage::F32(map_planes(data::<f32>(s, l)?, None::<&[f32]>, hw, plane).0),
        };
        Ok((y, l.shape().clone()))
    }
}

/// Σ f(a_i, b_i) over two equally long slices with 16 independent accumulators, so the compiler
/// vectorises it.
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (xs, ys) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xs).zip(ys) {
            *s += f(x, y);
        }
    }
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

/// Σ f(x_i) with [`lane_sum2`]'s accumulators.
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(xs, xs, |x, _| f(x))
}

simd_fn! {
    /// One plane of `act(instance_norm(x))` into `y`, its (mean, 1/σ) into `st`.
    fn norm_act_plane(y: &mut [f32], x: &[f32], st: &mut (f32, f32), act: Act) {
        let (mean, inv_std) = plane_stats(x);
        act.map(y, x, |v| (v - mean) * inv_std);
        *st = (mean, inv_std);
    }
}

/// Mean and 1/σ of one plane (two passes, so the variance does not cancel).
#[inline(always)]
fn plane_stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = (lane_sum(x, |v| v) / n) as f32;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + EPS).sqrt()) as f32)
}

/// `f(i, x plane, other plane, out plane)` for every `hw`-long plane i of `x` (and of `other`,
/// laid out alike) in parallel, into a new tensor of `O`, with what each call returns. f32
/// planes are read and written in place; bf16 ones are widened into per-thread f32 planes (in
/// cache) and results rounded back, so the arithmetic is f32 whatever the storage.
pub(crate) fn map_planes<T: Elem, V: Elem, O: Elem, R: Send>(
    x: &[T],
    other: Option<&[V]>,
    hw: usize,
    f: impl Fn(usize, &[f32], Option<&[f32]>, &mut [f32]) -> R + Sync,
) -> (Vec<O>, Vec<R>) {
    // Room for the planes that need converting (none where all are f32).
    let wide = |f32_already: bool| if f32_already { 0 } else { hw };
    let (xn, on) = (wide(T::as_f32(&[]).is_some()), wide(V::as_f32(&[]).is_some() || other.is_none()));
    let yn = wide(O::as_f32_mut(&mut []).is_some());
    crate::ops::par_chunks_made(
        x.len(),
        hw,
        || vec![0f32; xn + on + yn],
        |buf, i, yp| {
            let (xb, rest) = buf.split_at_mut(xn);
            let (ob, yb) = rest.split_at_mut(on);
            let xp = &x[i * hw..][..hw];
            let xp = T::as_f32(xp).unwrap_or_else(|| {
                T::widen(xb, xp);
                xb
            });
            let op = other.map(|o| {
                let o = &o[i * hw..][..hw];
                V::as_f32(o).unwrap_or_else(|| {
                    V::widen(ob, o);
                    ob
                })
            });
            if let Some(yf) = O::as_f32_mut(yp) {
                return f(i, xp, op, yf);
            }
            let r = f(i, xp, op, yb);
            O::narrow(yp, yb);
            r
        },
    )
}

/// `act(instance_norm(x))` of every `hw`-long plane of `x`, stored as `T`, with each plane's
/// (mean, 1/σ): the fused ops' forward pass (`residual`, `conv_norm`).
pub(crate) fn norm_act_planes<T: Elem>(x: &[T], hw: usize, act: Act) -> (Vec<T>, Vec<(f32, f32)>) {
    map_planes(x, None::<&[f32]>, hw, |_, xp, _, yp| {
        let mut st = (0.0, 0.0);
        norm_act_plane(yp, xp, &mut st, act);
        st
    })
}

/// [`norm_act_planes`] written over `x` itself, the same values: where nothing else reads the
/// convolution's output (translations), so that it and the normalised tensor are not both kept.
pub(crate) fn norm_act_planes_in_place<T: Elem>(x: &mut [T], hw: usize, act: Act) {
    use rayon::prelude::*;
    x.par_chunks_mut(hw).for_each_init(
        || vec![0f32; 2 * hw],
        |buf, plane| {
            let (xb, yb) = buf.split_at_mut(hw);
            let mut st = (0.0, 0.0);
            if let Some(plane) = T::as_f32_mut(plane) {
                xb.copy_from_slice(plane);
                return norm_act_plane(plane, xb, &mut st, act);
            }
            T::widen(xb, plane);
            norm_act_plane(yb, xb, &mut st, act);
            T::narrow(plane, yb);
        },
    );
}

/// dx of `act(instance_norm(x))` from `dy`, plane by plane with the forward pass's (mean, 1/σ)
/// `stats`, stored as `O` (f32 inside the fused ops, the input's dtype for the norm op's own).
pub(crate) fn norm_act_grad_planes<T: Elem, V: Elem, O: Elem>(x: &[T], dy: &[V], hw: usize, stats: &[(f32, f32)], act: Act) -> Vec<O> {
    map_planes(x, Some(dy), hw, |i, xp, dyp, dxp| norm_act_bwd_plane(dxp, xp, dyp.unwrap_or_default(), stats[i], act)).0
}

/// The forward pass of the fused norm ops: `plane(x plane, other plane, y plane, its (mean,
/// 1/σ))` for every H×W plane of `x` (laid out as `l`; `other` alike) in parallel, stored as
/// `x` is; the planes' statistics go to `stats` for the backward pass.
fn normalise_planes(
    (s, l): (&CpuStorage, &Layout),
    other: Option<&CpuStorage>,
    stats: &Mutex<Vec<(f32, f32)>>,
    plane: impl Fn(&[f32], Option<&[f32]>, &mut [f32], &mut (f32, f32)) + Sync,
) -> Result<CpuStorage> {
    let (_, _, h, w) = l.shape().dims4()?;
    let f = |_: usize, xp: &[f32], op: Option<&[f32]>, yp: &mut [f32]| {
        let mut st = (0.0, 0.0);
        plane(xp, op, yp, &mut st);
        st
    };
    let (y, planes) = match s {
        CpuStorage::BF16(_) => {
            let (y, st) = map_planes(data::<bf16>(s, l)?, other.map(|o| data::<bf16>(o, l)).transpose()?, h * w, f);
            (CpuStorage::BF16(y), st)
        }
        _ => {
            let (y, st) = map_planes(data::<f32>(s, l)?, other.map(|o| data::<f32>(o, l)).transpose()?, h * w, f);
            (CpuStorage::F32(y), st)
        }
    };
    *stats.lock().unwrap_or_else(|e| e.into_inner()) = planes;
    Ok(y)
}

/// The fused op. `stats` receives (mean, 1/σ) per plane in the forward pass for the backward
/// pass; it is shared with the backward op through the graph.
struct InstanceNormAct {
    act: Act,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl CustomOp1 for InstanceNormAct {
    fn name(&self) -> &'static str {
        "instance-norm-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let act = self.act;
        let y = normalise_planes((s, l), None, &self.stats, |xp, _, yp, st| norm_act_plane(yp, xp, st, act))?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = InstanceNormActBwd { act: self.act, stats: self.stats.clone() };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// dx of the fused op from (x, dy): with x̂ = (x − μ)/σ and g = dy · act'(x̂),
/// dx = (g − mean(g) − x̂ · mean(g · x̂)) / σ per plane.
struct InstanceNormActBwd {
    act: Act,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl CustomOp2 for InstanceNormActBwd {
    fn name(&self) -> &'static str {
        "instance-norm-act-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("instance norm backward: gradient {:?} does not match input {:?}", l2.shape(), l1.shape());
        }
        let (_, _, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if stats.len() * hw != l1.shape().elem_count() {
            bail!("instance norm backward ran without its forward statistics");
        }
        let act = self.act;
        let dx = match (s1, s2) {
            (CpuStorage::BF16(_), CpuStorage::BF16(_)) => CpuStorage::BF16(norm_act_grad_planes(data::<bf16>(s1, l1)?, data::<bf16>(s2, l2)?, hw, &stats, act)),
            _ => act_storage(norm_act_grad_planes::<f32, f32, f32>(&act_data(s1, l1)?, &act_data(s2, l2)?, hw, &stats, act), s1)?,
        };
        Ok((dx, l1.shape().clone()))
    }
}

simd_fn! {
    /// dx of one plane of `act(instance_norm(x))` from its `dy`, with x's (mean, 1/σ): with
    /// x̂ = (x − μ)/σ and g = dy · act'(x̂), dx = (g − mean(g) − x̂ · mean(g · x̂)) / σ.
    fn norm_act_bwd_plane(dxp: &mut [f32], xp: &[f32], dyp: &[f32], st: (f32, f32), act: Act) {
        let (mean, inv_std) = st;
        let n = xp.len() as f64;
        // g is written into dx first, then turned into dx in place.
        let (mut sum_g, mut sum_gx) = (0f64, 0f64);
        for (blk, (xb, dyb)) in dxp.chunks_mut(1024).zip(xp.chunks(1024).zip(dyp.chunks(1024))) {
            act.grad_map(blk, dyb, xb, |xv| (xv - mean) * inv_std);
            sum_g += lane_sum(blk, |v| v);
            sum_gx += lane_sum2(blk, xb, |g, xv| g * (xv - mean));
        }
        let mean_g = (sum_g / n) as f32;
        let mean_gx = (sum_gx * inv_std as f64 / n) as f32; // mean(g·x̂)
        for (o, &xv) in dxp.iter_mut().zip(xp) {
            *o = (*o - mean_g - (xv - mean) * inv_std * mean_gx) * inv_std;
        }
    }
}

/// `residual + instance_norm(xs)` for `xs` and `residual` `[B,C,H,W]` (a residual block's end);
/// f32 or bf16 CPU tensors of one shape and dtype take one fused op, others the composed ops; the results are the
/// same bit for bit. The composed pair keeps the normalised tensor alive for autograd although
/// neither backward pass reads it (a fifth of a residual block's activations); the fused op
/// keeps `xs` and `residual`, which the convolutions before need anyway, and per plane (mean, 1/σ).
pub fn instance_norm_residual(xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if !cpu_act(xs) || !cpu_act(residual) || xs.dims() != residual.dims() || xs.dtype() != residual.dtype() {
        return residual + super::instance_norm(xs)?;
    }
    let (b, c, h, w) = xs.dims4()?;
    if h * w == 0 || b * c == 0 {
        bail!("instance norm of an empty tensor {:?}", xs.dims());
    }
    xs.contiguous()?.apply_op2(&residual.contiguous()?, InstanceNormResidual { stats: Arc::new(Mutex::new(Vec::new())) })
}

simd_fn! {
    /// One plane of `r + instance_norm(x)` into `y`, x's (mean, 1/σ) into `st`.
    pub(super) fn norm_residual_plane(y: &mut [f32], x: &[f32], r: &[f32], st: &mut (f32, f32)) {
        let (mean, inv_std) = plane_stats(x);
        for ((o, &v), &rv) in y.iter_mut().zip(x).zip(r) {
            *o = rv + (v - mean) * inv_std;
        }
        *st = (mean, inv_std);
    }
}

/// [`instance_norm_residual`]'s op (args: `xs`, `residual`); `stats` as in [`InstanceNormAct`].
struct InstanceNormResidual {
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl CustomOp2 for InstanceNormResidual {
    fn name(&self) -> &'static str {
        "instance-norm-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() || s1.dtype() != s2.dtype() {
            bail!("instance norm + residual: residual {:?} does not match input {:?}", l2.shape(), l1.shape());
        }
        let y = normalise_planes((s1, l1), Some(s2), &self.stats, |xp, rp, yp, st| norm_residual_plane(yp, xp, rp.unwrap_or_default(), st))?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, residual: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let op = InstanceNormActBwd { act: Act::Identity, stats: self.stats.clone() };
        let dx = x.track_op().then(|| x.apply_op2_no_bwd(&dy, &op)).transpose()?;
        Ok((dx, residual.track_op().then_some(dy)))
    }
}

/// `blur_down(act(instance_norm(xs)))` for f32 or bf16 CPU `xs` [B,C,H,W] (H, W ≥ 2): CUT's
/// anti-aliased down-sampling after its convolution, one pass per plane that never stores the
/// normalised plane (nor, in backward, its gradient). Callers check `super::blur::fused_down_applies`.
pub(crate) fn instance_norm_act_blur_down(xs: &Tensor, act: Act) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    if h < 2 || w < 2 || b * c == 0 {
        bail!("instance norm + blur-pool needs at least 2x2 pixels, got {:?}", xs.dims());
    }
    xs.contiguous()?.apply_op1(NormActBlurDown { act, stats: Arc::new(Mutex::new(Vec::new())) })
}

struct NormActBlurDown {
    act: Act,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl CustomOp1 for NormActBlurDown {
    fn name(&self) -> &'static str {
        "instance-norm-act-blur-down"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = act_data(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (hw, act) = (h * w, self.act);
        let (oh, ow) = (blur::down_len(h), blur::down_len(w));
        let mut y = crate::ops::zeros(b * c * oh * ow);
        let stats: Vec<(f32, f32)> = y
            .par_chunks_mut(oh * ow)
            .zip(x.par_chunks(hw))
            .map_init(
                || (vec![0f32; hw], vec![0f32; w]),
                |(plane, row), (yp, xp)| {
                    let mut st = (0.0, 0.0);
                    norm_act_plane(plane, xp, &mut st, act);
                    blur::down_plane(yp, plane, row, h, w);
                    st
                },
            )
            .collect();
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((act_storage(y, s)?, Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = NormActBlurDownBwd { act: self.act, stats: self.stats.clone() };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// dx of the fused op from (x, dy): per plane, the blur-pool's adjoint of dy, then the norm's
/// backward.
struct NormActBlurDownBwd {
    act: Act,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl CustomOp2 for NormActBlurDownBwd {
    fn name(&self) -> &'static str {
        "instance-norm-act-blur-down-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (&act_data(s1, l1)?, &act_data(s2, l2)?);
        let (b, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (blur::down_len(h), blur::down_len(w));
        if dy.len() != b * c * oh * ow {
            bail!("instance norm + blur-pool backward: gradient {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let hw = h * w;
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if stats.len() * hw != x.len() {
            bail!("instance norm + blur-pool backward ran without its forward statistics");
        }
        let act = self.act;
        let mut dx = crate::ops::zeros(x.len());
        dx.par_chunks_mut(hw).zip(x.par_chunks(hw).zip(dy.par_chunks(oh * ow))).zip(stats.par_iter()).for_each_init(
            || (vec![0f32; hw], vec![0f32; w]),
            |(gn, row), ((dxp, (xp, dyp)), &st)| {
                gn.fill(0.0);
                blur::down_adjoint_plane(gn, dyp, row, h, w);
                norm_act_bwd_plane(dxp, xp, gn, st, act);
            },
        );
        Ok((act_storage(dx, s1)?, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The fused normalisation with given statistics equals the composed ops bit for bit, with
    /// statistics per channel (broadcast over the batch) and per plane, for every activation.
    #[test]
    fn normalise_act_equals_the_composed_ops() {
        let xs = sample((2, 3, 5, 7), 11);
        for (n, seed) in [(3, 12), (6, 13)] {
            let shape = if n == 3 { (1, 3, 1, 1) } else { (2, 3, 1, 1) };
            let mean = sample((n, 1, 1, 1), seed).reshape(shape).unwrap();
            let inv_std = (sample((n, 1, 1, 1), seed + 10).reshape(shape).unwrap().abs().unwrap() + 0.1).unwrap();
            for act in [Act::Identity, Act::Relu, Act::LeakyRelu(0.2)] {
                let fused = normalise_act(&xs, &mean, &inv_std, act).unwrap();
                let composed = act.compose(&xs.broadcast_sub(&mean).unwrap().broadcast_mul(&inv_std).unwrap()).unwrap();
                let (f, c) = (fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), composed.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert!(f.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()), "{act:?} with {n} statistics");
            }
        }
    }

    fn sample(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::util::Rng::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 4.0 - 1.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Forward and gradient against the composed ops, for each activation, with a weighted loss
    /// so that the gradient is not uniform.
    #[test]
    fn fused_matches_composed_forward_and_gradient() {
        for act in [Act::Identity, Act::Relu, Act::LeakyRelu(0.2)] {
            for shape in [(2, 3, 5, 7), (1, 4, 16, 16), (1, 2, 1, 33)] {
                let x = Var::from_tensor(&sample(shape, 7)).unwrap();
                let weights = sample(shape, 8);
                let fused = instance_norm_act(x.as_tensor(), act).unwrap();
                let composed = act.compose(&super::super::instance_norm(x.as_tensor()).unwrap()).unwrap();
                assert!(max_diff(&fused, &composed) < 1e-5, "{act:?} {shape:?} forward");
                let g_fused = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_comp = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let (a, b) = (g_fused.get(x.as_tensor()).unwrap(), g_comp.get(x.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-4, "{act:?} {shape:?} gradient: {}", max_diff(a, b));
            }
        }
    }

    /// The fused residual end equals norm + add bit for bit, forward and both gradients (with a
    /// residual that is also used elsewhere, as a block's input is by its first convolution).
    #[test]
    fn fused_residual_equals_norm_then_add() {
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
        for shape in [(2, 3, 5, 7), (1, 4, 16, 16), (1, 2, 1, 33)] {
            let x = Var::from_tensor(&sample(shape, 21)).unwrap();
            let r = Var::from_tensor(&sample(shape, 22)).unwrap();
            let weights = sample(shape, 23);
            let fused = instance_norm_residual(x.as_tensor(), r.as_tensor()).unwrap();
            let apart = (r.as_tensor() + instance_norm_act(x.as_tensor(), Act::Identity).unwrap()).unwrap();
            assert_eq!(bits(&fused), bits(&apart), "{shape:?} forward");
            let loss = |y: Tensor| ((y * &weights).unwrap() + r.as_tensor().sqr().unwrap()).unwrap().sum_all().unwrap();
            let (gf, ga) = (loss(fused).backward().unwrap(), loss(apart).backward().unwrap());
            for (what, v) in [("input", &x), ("residual", &r)] {
                assert_eq!(bits(gf.get(v.as_tensor()).unwrap()), bits(ga.get(v.as_tensor()).unwrap()), "{shape:?} {what} gradient");
            }
        }
        // Other shapes or dtypes take the composed ops.
        let (x, r) = (sample((1, 2, 3, 3), 24), sample((1, 2, 3, 3), 25));
        let f64s = instance_norm_residual(&x.to_dtype(DType::F64).unwrap(), &r.to_dtype(DType::F64).unwrap()).unwrap();
        assert!(max_diff(&f64s.to_dtype(DType::F32).unwrap(), &instance_norm_residual(&x, &r).unwrap()) < 1e-6);
    }

    /// The fused blur-pool variant against norm + act, then the blur-pool: forward and gradient.
    #[test]
    fn fused_blur_down_matches_norm_then_blur() {
        for act in [Act::Relu, Act::LeakyRelu(0.2)] {
            for shape in [(2, 3, 5, 7), (1, 2, 8, 6), (1, 1, 2, 2)] {
                let x = Var::from_tensor(&sample(shape, 11)).unwrap();
                let weights = sample((shape.0, shape.1, shape.2.div_ceil(2), shape.3.div_ceil(2)), 12);
                let fused = instance_norm_act_blur_down(x.as_tensor(), act).unwrap();
                let apart = blur::blur_down(&instance_norm_act(x.as_tensor(), act).unwrap()).unwrap();
                assert!(max_diff(&fused, &apart) < 1e-6, "{act:?} {shape:?} forward");
                let g_fused = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_apart = (apart * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let (a, b) = (g_fused.get(x.as_tensor()).unwrap(), g_apart.get(x.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-5, "{act:?} {shape:?} gradient: {}", max_diff(a, b));
            }
        }
    }

    /// Finite differences on a small plane: the analytic gradient of a weighted sum (without an
    /// activation, whose kink finite differences would straddle).
    #[test]
    fn gradient_matches_finite_differences() {
        let shape = (1, 2, 3, 4);
        let x0 = sample(shape, 3).to_dtype(DType::F32).unwrap();
        let weights = sample(shape, 4);
        let loss = |x: &Tensor| -> f64 {
            let y = instance_norm_act(x, Act::Identity).unwrap();
            (y * &weights).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let x = Var::from_tensor(&x0).unwrap();
        let y = instance_norm_act(x.as_tensor(), Act::Identity).unwrap();
        let g = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += h;
            let mut m = base.clone();
            m[i] -= h;
            let tp = Tensor::from_vec(p, shape, &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(m, shape, &Device::Cpu).unwrap();
            let numeric = (loss(&tp) - loss(&tm)) / (2.0 * h as f64);
            assert!((numeric - g[i] as f64).abs() < 2e-2, "element {i}: numeric {numeric}, analytic {}", g[i]);
        }
    }
}
