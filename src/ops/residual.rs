//! A residual block of the ResNet generator as one op in training:
//! `x + IN(conv(pad(relu(IN(conv(pad(x), w1)))), w2))`, 3×3 convolutions of reflection-padded
//! inputs, IN instance norm.
//!
//! Composed from its four ops (conv, norm + ReLU, conv, norm + residual), each op's output is a
//! tensor autograd keeps and, in the backward pass, sums a gradient into: a zeroed tensor and an
//! add per tensor (with bf16 activations candle's bf16 add, 5× its f32 one's time). Here
//! autograd sees one op; its intermediate outputs are kept inside it, in the activations' dtype,
//! and the gradients between them stay f32 arrays that are never stored as tensors. The kernels
//! are the composed ops' (Winograd, fused norms), so with f32 activations the results are the
//! same bit for bit.
//!
//! Its gradients are first-order only (they are not differentiable again), which is all training
//! needs; inference and the device-generic path keep the composed ops.

use super::norm::{map_planes, norm_act_grad_planes, norm_act_planes, norm_residual_plane};
use super::winograd::ReflectConv3x3;
use super::{cpu_act, data, settings, with_tensor_data, Act, Elem};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use std::sync::Mutex;

/// The block's output for `x` `[B,C,H,W]` and weights `w1`, `w2` `[C,C,3,3]` as one op, or `None`
/// where it does not apply (no autograd, not our CPU kernels, not Winograd's layer): the caller
/// then composes the block.
pub fn residual_block(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Result<Option<Tensor>> {
    let tracked = x.track_op() || w1.track_op() || w2.track_op();
    if !tracked || !cpu_act(x) || settings().native_conv || w1.dtype() != DType::F32 || w2.dtype() != DType::F32 {
        return Ok(None);
    }
    let (_, c, h, w) = x.dims4()?;
    if w1.dims() != [c, c, 3, 3] || w2.dims() != [c, c, 3, 3] {
        return Ok(None);
    }
    let Some(conv) = ReflectConv3x3::plan(c, h, w)? else { return Ok(None) };
    let op = ResidualBlock { conv, hw: h * w, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&w1.contiguous()?, &w2.contiguous()?, op).map(Some)
}

/// What the forward pass keeps for the backward pass: both convolutions' outputs and the first
/// norm's (in the activations' dtype; the norm's in bf16 where the convolutions' kernels round it
/// to bf16 anyway, which gives the same gradients for half its memory), and both norms' (mean,
/// 1/σ) per plane.
struct Saved {
    y1: CpuStorage,
    h1: CpuStorage,
    y2: CpuStorage,
    stats1: Vec<(f32, f32)>,
    stats2: Vec<(f32, f32)>,
}

struct ResidualBlock {
    conv: ReflectConv3x3,
    hw: usize,
    saved: Mutex<Option<Saved>>,
}

impl ResidualBlock {
    fn forward<T: Elem>(&self, x: &[T], w1: &[f32], w2: &[f32]) -> Vec<T> {
        let y1: Vec<T> = self.conv.forward(x, w1);
        let (h1, stats1) = norm_act_planes(&y1, self.hw, Act::Relu);
        let y2: Vec<T> = self.conv.forward(&h1, w2);
        let (out, stats2) = map_planes(&y2, Some(x), self.hw, |_, yp, xp, op| {
            let mut st = (0.0, 0.0);
            norm_residual_plane(op, yp, xp.unwrap_or_default(), &mut st);
            st
        });
        let store = T::to_cpu_storage_owned;
        let h1 = match T::as_f32(&h1) {
            Some(h) if self.conv.rounds_input_to_bf16() => {
                let mut kept = crate::ops::zeros(h.len());
                crate::ops::par_narrow(&mut kept, h);
                CpuStorage::BF16(kept)
            }
            _ => store(h1),
        };
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved { y1: store(y1), h1, y2: store(y2), stats1, stats2 });
        out
    }

    /// (dx, dw1, dw2) from the output's gradient `dout`.
    fn backward<T: Elem>(&self, s: &Saved, x: &[T], w1: &[f32], w2: &[f32], dout: &[T]) -> Result<(Vec<T>, Vec<f32>, Vec<f32>)> {
        let (y1, y2) = (s.y1.as_slice::<T>()?, s.y2.as_slice::<T>()?);
        let hw = self.hw;
        // The second norm (its residual's gradient is `dout` itself), the second convolution.
        let dy2: Vec<f32> = norm_act_grad_planes(y2, dout, hw, &s.stats2, Act::Identity);
        let (dh1, dw2) = match &s.h1 {
            CpuStorage::BF16(h1) => self.conv.grads(h1, w2, &dy2),
            h1 => self.conv.grads(h1.as_slice::<T>()?, w2, &dy2),
        };
        let dy1: Vec<f32> = norm_act_grad_planes(y1, &dh1, hw, &s.stats1, Act::Relu);
        let (dx_conv, dw1) = self.conv.grads(x, w1, &dy1);
        // The skip connection's gradient joins the first convolution's.
        let (dx, _): (Vec<T>, _) = map_planes(&dx_conv, Some(dout), hw, |_, a, b, out| {
            for ((o, &p), &q) in out.iter_mut().zip(a).zip(b.unwrap_or_default()) {
                *o = p + q;
            }
        });
        Ok((dx, dw1, dw2))
    }
}

impl CustomOp3 for ResidualBlock {
    fn name(&self) -> &'static str {
        "residual-block"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w1, w2) = (data::<f32>(s2, l2)?, data::<f32>(s3, l3)?);
        let out = match s1 {
            CpuStorage::BF16(_) => CpuStorage::BF16(self.forward(data::<bf16>(s1, l1)?, w1, w2)),
            _ => CpuStorage::F32(self.forward(data::<f32>(s1, l1)?, w1, w2)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w1: &Tensor, w2: &Tensor, _res: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = saved.as_ref() else { bail!("residual block: backward without its forward pass") };
        let dout = dout.contiguous()?;
        let (dx, dw1, dw2) = match x.dtype() {
            DType::BF16 => {
                let (dx, dw1, dw2) = self.grads::<bf16>(s, x, w1, w2, &dout)?;
                (Tensor::from_vec(dx, x.shape(), x.device())?, dw1, dw2)
            }
            _ => {
                let (dx, dw1, dw2) = self.grads::<f32>(s, x, w1, w2, &dout)?;
                (Tensor::from_vec(dx, x.shape(), x.device())?, dw1, dw2)
            }
        };
        let (dw1, dw2) = (Tensor::from_vec(dw1, w1.shape(), w1.device())?, Tensor::from_vec(dw2, w2.shape(), w2.device())?);
        Ok((x.track_op().then_some(dx), w1.track_op().then_some(dw1), w2.track_op().then_some(dw2)))
    }
}

impl ResidualBlock {
    /// [`Self::backward`] on the tensors' data.
    fn grads<T: Elem>(&self, s: &Saved, x: &Tensor, w1: &Tensor, w2: &Tensor, dout: &Tensor) -> Result<(Vec<T>, Vec<f32>, Vec<f32>)> {
        with_tensor_data::<T, _>(x, |x| with_tensor_data::<f32, _>(w1, |w1| with_tensor_data::<f32, _>(w2, |w2| with_tensor_data::<T, _>(dout, |dout| self.backward(s, x, w1, w2, dout)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::conv2d_reflect;
    use crate::ops::{instance_norm_act, instance_norm_residual, test_value};
    use candle_core::{Device, Var};

    /// The block composed from its four ops.
    fn composed(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
        let h = instance_norm_act(&conv2d_reflect(x, w1, 1)?, Act::Relu)?;
        instance_norm_residual(&conv2d_reflect(&h, w2, 1)?, x)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Output and the gradients of x, w1 and w2 of sum(block · r), fused or composed, with x
    /// stored as `dtype`.
    fn run(fused: bool, dtype: DType) -> [Vec<f32>; 4] {
        let (b, c, h, w) = (2, 16, 11, 9);
        let tensor = |dims: &[usize], seed: usize, scale: f32| {
            let n: usize = dims.iter().product();
            Tensor::from_vec((0..n).map(|i| test_value(i * 3 + seed) * scale).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
        };
        let x = Var::from_tensor(&tensor(&[b, c, h, w], 1, 2.0).to_dtype(dtype).unwrap()).unwrap();
        let w1 = Var::from_tensor(&tensor(&[c, c, 3, 3], 2, 0.2)).unwrap();
        let w2 = Var::from_tensor(&tensor(&[c, c, 3, 3], 5, 0.2)).unwrap();
        let r = tensor(&[b, c, h, w], 7, 1.0);
        let y = if fused { residual_block(&x, &w1, &w2).unwrap().expect("the fused op applies") } else { composed(&x, &w1, &w2).unwrap() };
        let g = (y.to_dtype(DType::F32).unwrap() * r).unwrap().sum_all().unwrap().backward().unwrap();
        let grad = |v: &Var| values(g.get(v.as_tensor()).unwrap());
        [values(&y), grad(&x), grad(&w1), grad(&w2)]
    }

    /// With f32 activations the fused block gives the composed ops' output and gradients bit for
    /// bit; with bf16 ones, within bf16's rounding (its gradients between the ops stay f32, the
    /// composed ops' are rounded to bf16).
    #[test]
    fn fused_block_equals_the_composed_ops() {
        assert_eq!(run(true, DType::F32), run(false, DType::F32));
        let (fused, composed) = (run(true, DType::BF16), run(false, DType::BF16));
        for (what, (a, b)) in ["y", "dx", "dw1", "dw2"].iter().zip(fused.iter().zip(&composed)) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
            assert!(err < 0.05, "{what}: {err:e}");
        }
    }

    /// Without autograd (translation) the block stays composed.
    #[test]
    fn inference_keeps_the_composed_ops() {
        let x = Tensor::zeros((1, 16, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((16, 16, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(residual_block(&x, &w, &w).unwrap().is_none());
    }
}
