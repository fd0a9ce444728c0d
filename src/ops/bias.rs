//! A per-channel bias followed by an activation, `act(x + b)`, as one candle custom op with its
//! own backward pass (the PatchGAN's first layer; full resolution in the anti-aliased one).
//!
//! Composed from generic ops, `leaky_relu(x + b)` is a broadcast add, a scale and a maximum, and
//! their backward passes (masks from comparisons, divisions, per-op gradient sums) take about a
//! dozen passes over the map, most of them on one thread. Here forward is one pass and backward
//! two (the gradient, then its per-channel sums for the bias).

use super::norm::Act;
use super::{blur, act_data, act_storage, cpu_act};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `act(xs + bias)` for `xs` `[B,C,H,W]` and `bias` `[C]`; f32 or bf16 CPU tensors take the fused kernel,
/// others (and `Act::Identity`, a plain broadcast add) the composed ops. The fused backward reads
/// the slope off the output, which Relu and LeakyRelu allow.
pub fn bias_act(xs: &Tensor, bias: &Tensor, act: Act) -> Result<Tensor> {
    if !(cpu_act(xs) && super::cpu_f32(bias)) || act == Act::Identity {
        return act.compose(&xs.broadcast_add(&bias.reshape((1, (), 1, 1))?)?);
    }
    xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasAct { act })
}

simd_fn! {
    /// `y = act(x + bias)` over one plane.
    fn bias_act_plane(y: &mut [f32], x: &[f32], bias: f32, act: Act) {
        act.map(y, x, |v| v + bias);
    }
}

simd_fn! {
    /// `g = d · act'(x + bias)` over one chunk (x the pre-activation without bias, or the
    /// output with bias 0: both activations keep the sign).
    fn act_grad_chunk(g: &mut [f32], d: &[f32], x: &[f32], bias: f32, act: Act) {
        act.grad_map(g, d, x, |v| v + bias);
    }
}

/// `blur_down(act(xs + bias))` for f32 or bf16 CPU `xs` [B,C,H,W] (H, W ≥ 2; Relu or LeakyRelu): the
/// anti-aliased PatchGAN's first layer, one pass per plane that never stores the activated map.
/// Callers check `super::blur::fused_down_applies`.
pub(crate) fn bias_act_blur_down(xs: &Tensor, bias: &Tensor, act: Act) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if h < 2 || w < 2 || act == Act::Identity {
        bail!("bias + activation + blur-pool needs Relu or LeakyRelu and 2x2 pixels, got {act:?} and {:?}", xs.dims());
    }
    xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasActBlurDown { act })
}

struct BiasAct {
    act: Act,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (&act_data(s1, l1)?, &act_data(s2, l2)?);
        let (_, c, h, w) = l1.shape().dims4()?;
        if b.len() != c {
            bail!("bias_act: bias {:?} for {c} channels", l2.dims());
        }
        let (hw, act) = (h * w, self.act);
        if hw == 0 {
            bail!("bias_act: empty spatial axis ({h}x{w})");
        }
        let mut y = crate::ops::zeros(x.len());
        y.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(i, (yp, xp))| bias_act_plane(yp, xp, b[i % c], act));
        Ok((act_storage(y, s1)?, l1.shape().clone()))
    }

    /// The slope at x + b is the slope at the output (both activations keep the sign).
    fn bwd(&self, x: &Tensor, bias: &Tensor, res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&dy.contiguous()?, &ActGrad { act: self.act })?; // [B,C,H,W]
        input_and_bias_grads(x, bias, g)
    }
}

/// From g, the gradient with respect to x + b: x's gradient is g, the bias's its per-channel sums
/// (each where the operand takes gradients).
fn input_and_bias_grads(x: &Tensor, bias: &Tensor, g: Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let db = bias.track_op().then(|| g.apply_op1_no_bwd(&ChannelSums)).transpose()?;
    Ok((x.track_op().then_some(g), db))
}

/// dy · act'(y) from the op's output y and dy.
struct ActGrad {
    act: Act,
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "bias-act-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (&act_data(s1, l1)?, &act_data(s2, l2)?);
        if y.len() != dy.len() {
            bail!("bias_act backward: gradient {:?} does not match output {:?}", l2.dims(), l1.dims());
        }
        let act = self.act;
        let mut g = crate::ops::zeros(y.len());
        g.par_chunks_mut(1 << 14).zip(y.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14))).for_each(|(gc, (yc, dc))| act_grad_chunk(gc, dc, yc, 0.0, act));
        Ok((act_storage(g, s1)?, l1.shape().clone()))
    }
}

/// [B,C,H,W] → [C], the sum over everything but the channel (candle's `sum((0, 2, 3))` walks
/// the map one index at a time, on one thread).
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = act_data(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| (0..b).map(|n| super::norm::lane_sum(&g[(n * c + ch) * hw..][..hw], |v| v)).sum::<f64>() as f32)
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

struct BiasActBlurDown {
    act: Act,
}

impl CustomOp2 for BiasActBlurDown {
    fn name(&self) -> &'static str {
        "bias-act-blur-down"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (&act_data(s1, l1)?, &act_data(s2, l2)?);
        let (bsz, c, h, w) = l1.shape().dims4()?;
        if b.len() != c {
            bail!("bias_act_blur_down: bias {:?} for {c} channels", l2.dims());
        }
        let (hw, act) = (h * w, self.act);
        let (oh, ow) = (blur::down_len(h), blur::down_len(w));
        let mut y = crate::ops::zeros(bsz * c * oh * ow);
        y.par_chunks_mut(oh * ow).zip(x.par_chunks(hw)).enumerate().for_each_init(
            || (vec![0f32; hw], vec![0f32; w]),
            |(plane, row), (i, (yp, xp))| {
                bias_act_plane(plane, xp, b[i % c], act);
                blur::down_plane(yp, plane, row, h, w);
            },
        );
        Ok((act_storage(y, s1)?, Shape::from((bsz, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, bias: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = x.apply_op3_no_bwd(bias, &dy.contiguous()?, &BiasActBlurDownBwd { act: self.act })?; // [B,C,H,W]
        input_and_bias_grads(x, bias, g)
    }
}

/// The gradient with respect to x + b of the fused op from (x, b, dy): the blur-pool's adjoint
/// of dy times the activation's slope at x + b, per plane.
struct BiasActBlurDownBwd {
    act: Act,
}

impl candle_core::CustomOp3 for BiasActBlurDownBwd {
    fn name(&self) -> &'static str {
        "bias-act-blur-down-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, dy) = (&act_data(s1, l1)?, &act_data(s2, l2)?, &act_data(s3, l3)?);
        let (bsz, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (blur::down_len(h), blur::down_len(w));
        if dy.len() != bsz * c * oh * ow || b.len() != c {
            bail!("bias_act_blur_down backward: gradient {:?} or bias {:?} does not match input {:?}", l3.dims(), l2.dims(), l1.dims());
        }
        let (hw, act) = (h * w, self.act);
        let mut g = crate::ops::zeros(x.len());
        g.par_chunks_mut(hw).zip(x.par_chunks(hw).zip(dy.par_chunks(oh * ow))).enumerate().for_each_init(
            || (vec![0f32; w], vec![0f32; hw]),
            |(row, adj), (i, (gp, (xp, dyp)))| {
                adj.fill(0.0);
                blur::down_adjoint_plane(adj, dyp, row, h, w);
                act_grad_chunk(gp, adj, xp, b[i % c], act);
            },
        );
        Ok((act_storage(g, s1)?, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// An empty spatial axis is an error, as in `instance_norm_act`, not a panic.
    #[test]
    fn empty_planes_are_an_error() {
        let x = Tensor::zeros((1, 2, 0, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = bias_act(&x, &b, Act::LeakyRelu(0.2)).unwrap_err();
        assert!(err.to_string().contains("empty spatial axis"), "{err}");
    }

    fn sample(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| super::super::test_value(i * 3 + seed) * 3.0).collect()
    }

    /// Forward and both gradients against the composed ops, for both activations.
    #[test]
    fn fused_matches_composed() {
        let dev = Device::Cpu;
        let shape = (2, 3, 5, 7);
        let n = 2 * 3 * 5 * 7;
        for act in [Act::Relu, Act::LeakyRelu(0.2)] {
            let x = Var::from_tensor(&Tensor::from_vec(sample(n, 1), shape, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2, 0.05], &dev).unwrap()).unwrap();
            let weights = Tensor::from_vec(sample(n, 2), shape, &dev).unwrap();
            let fused = bias_act(x.as_tensor(), b.as_tensor(), act).unwrap();
            let composed = act.compose(&x.as_tensor().broadcast_add(&b.as_tensor().reshape((1, 3, 1, 1)).unwrap()).unwrap()).unwrap();
            let diff = |a: &Tensor, c: &Tensor| (a - c).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff(&fused, &composed) < 1e-6, "{act:?} forward");
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                let d = diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
                assert!(d < 1e-5, "{act:?} gradient {d}");
            }
            // With the blur-pool fused in, against the separate ops.
            let weights = Tensor::from_vec(sample(2 * 3 * 3 * 4, 4), (2, 3, 3, 4), &dev).unwrap();
            let fused = bias_act_blur_down(x.as_tensor(), b.as_tensor(), act).unwrap();
            let apart = blur::blur_down(&bias_act(x.as_tensor(), b.as_tensor(), act).unwrap()).unwrap();
            assert!(diff(&fused, &apart) < 1e-6, "{act:?} blur forward");
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let ga = (apart * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                let d = diff(gf.get(v.as_tensor()).unwrap(), ga.get(v.as_tensor()).unwrap());
                assert!(d < 1e-5, "{act:?} blur gradient {d}");
            }
        }
    }
}
