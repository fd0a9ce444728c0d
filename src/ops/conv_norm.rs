//! `act(instance_norm(conv(x, w)))` as one op in training, for any of our convolution ops (the
//! generators' first, down- and up-sampling layers, the PatchGAN's normalised ones).
//!
//! Composed, the convolution's output is a tensor that autograd keeps and sums a gradient into
//! (a zeroed tensor and an add; with bf16 activations candle's bf16 add, 5× its f32 one's time).
//! Here the output is kept inside the op and its gradient is an f32 array handed straight to the
//! convolution's backward pass. With f32 activations the results are the composed ops' bit for
//! bit. As `ops::residual`'s block, its gradients are first-order only.

use super::conv::ConvOp;
use super::norm::{norm_act_grad_planes, norm_act_planes, norm_act_planes_in_place};
use super::{with_tensor_data, Act, Elem};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use half::bf16;
use std::sync::Mutex;

/// `act(instance_norm(conv(xs, w)))` with `conv` the op our `conv2d`, `conv2d_reflect` or
/// `conv_transpose2d` chose for `xs` and `w`.
/// Without autograd (translations) nothing is kept and the norm is written over the
/// convolution's output: one tensor of the layer's size instead of two.
pub(crate) fn conv_norm_act(xs: &Tensor, w: &Tensor, conv: ConvOp, act: Act) -> Result<Tensor> {
    let keep = xs.track_op() || w.track_op();
    xs.contiguous()?.apply_op2(&w.contiguous()?, ConvNormAct { conv, act, keep, saved: Mutex::new(None) })
}

/// The convolution's output (in the activations' dtype) and its planes' (mean, 1/σ).
struct Saved {
    y: CpuStorage,
    shape: Shape,
    stats: Vec<(f32, f32)>,
}

struct ConvNormAct {
    conv: ConvOp,
    act: Act,
    /// Whether a backward pass will run (the output of the convolution is kept for it).
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

impl ConvNormAct {
    /// The gradient of the convolution's output from the op's output gradient `dh`.
    fn norm_grad<T: Elem>(&self, s: &Saved, dh: &Tensor, hw: usize) -> Result<Vec<f32>> {
        with_tensor_data::<T, _>(dh, |dh| Ok(norm_act_grad_planes(s.y.as_slice::<T>()?, dh, hw, &s.stats, self.act)))
    }
}

impl CustomOp2 for ConvNormAct {
    fn name(&self) -> &'static str {
        "conv-norm-act"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (mut y, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let (_, _, h, w) = shape.dims4()?;
        if !self.keep {
            match &mut y {
                CpuStorage::BF16(v) => norm_act_planes_in_place(v, h * w, self.act),
                CpuStorage::F32(v) => norm_act_planes_in_place(v, h * w, self.act),
                _ => bail!("conv + norm: activations are stored as f32 or bf16"),
            }
            return Ok((y, shape));
        }
        let (out, stats) = match &y {
            CpuStorage::BF16(v) => {
                let (out, stats) = norm_act_planes(v, h * w, self.act);
                (CpuStorage::BF16(out), stats)
            }
            other => {
                let (out, stats) = norm_act_planes(other.as_slice::<f32>()?, h * w, self.act);
                (CpuStorage::F32(out), stats)
            }
        };
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved { y, shape: shape.clone(), stats });
        Ok((out, shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dh: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = saved.as_ref() else { bail!("conv + norm: backward without its forward pass") };
        let dh = dh.contiguous()?;
        let (_, _, h, wd) = s.shape.dims4()?;
        let dy = match s.y {
            CpuStorage::BF16(_) => self.norm_grad::<bf16>(s, &dh, h * wd)?,
            _ => self.norm_grad::<f32>(s, &dh, h * wd)?,
        };
        let dy = Tensor::from_vec(dy, s.shape.clone(), x.device())?;
        // The convolution's own backward pass (its output, which none of ours reads, stands in
        // as `res`); its input gradient comes back f32, from the f32 `dy`.
        let (dx, dw) = self.conv.bwd(x, w, &dy, &dy)?;
        Ok((dx.map(|d| d.to_dtype(x.dtype())).transpose()?, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv2d, conv2d_op, conv2d_reflect, conv2d_reflect_op, conv_transpose2d, conv_transpose2d_op};
    use crate::ops::{instance_norm_act, test_value};
    use candle_core::{DType, Device, Var};

    type Conv = fn(&Tensor, &Tensor) -> Result<Tensor>;
    type Op = fn(&Tensor, &Tensor) -> Result<Option<ConvOp>>;
    /// A layer: its name, input and weight shapes, the convolution and the op it runs.
    type Case = (&'static str, [usize; 4], [usize; 4], Conv, Op);

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn tensor(dims: &[usize], seed: usize, scale: f32) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|i| test_value(i * 5 + seed) * scale).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    }

    /// Output and the gradients of x and w of sum(layer · r), fused or composed, x stored as
    /// `dtype`.
    fn run(x: &[usize], w: &[usize], conv: Conv, op: Op, fused: bool, dtype: DType) -> [Vec<f32>; 3] {
        let x = Var::from_tensor(&tensor(x, 1, 2.0).to_dtype(dtype).unwrap()).unwrap();
        let w = Var::from_tensor(&tensor(w, 3, 0.2)).unwrap();
        let act = Act::LeakyRelu(0.2);
        let y = if fused {
            conv_norm_act(&x, &w, op(&x, &w).unwrap().expect("our kernels apply"), act).unwrap()
        } else {
            instance_norm_act(&conv(&x, &w).unwrap(), act).unwrap()
        };
        let r = tensor(y.dims(), 7, 1.0);
        let g = (y.to_dtype(DType::F32).unwrap() * r).unwrap().sum_all().unwrap().backward().unwrap();
        [values(&y), values(g.get(&x).unwrap()), values(g.get(&w).unwrap())]
    }

    /// For each kind of convolution the networks normalise after (im2col, transposed, the 7×7
    /// reflection-padded one, Winograd's 4×4), the fused op equals the composed pair bit for bit
    /// with f32 activations, and within bf16's rounding with bf16 ones; without autograd, bit for
    /// bit in both.
    #[test]
    fn fused_conv_norm_equals_the_composed_ops() {
        let cases: [Case; 4] = [
            ("im2col 3×3/2", [2, 4, 9, 8], [6, 4, 3, 3], |x, w| conv2d(x, w, 2, 1), |x, w| conv2d_op(x, w, 2, 1)),
            ("transposed 3×3/2", [1, 6, 5, 4], [6, 4, 3, 3], |x, w| conv_transpose2d(x, w, 2, 1, 1), |x, w| conv_transpose2d_op(x, w, 2, 1, 1)),
            ("reflect 7×7", [1, 3, 10, 9], [8, 3, 7, 7], |x, w| conv2d_reflect(x, w, 3), |x, w| conv2d_reflect_op(x, w, 3)),
            ("Winograd 4×4", [1, 16, 9, 10], [16, 16, 4, 4], |x, w| conv2d(x, w, 1, 1), |x, w| conv2d_op(x, w, 1, 1)),
        ];
        for (what, x, w, conv, op) in cases {
            // Without autograd (a translation) the op normalises in place: the same values.
            for dtype in [DType::F32, DType::BF16] {
                let (x, w) = (tensor(&x, 1, 2.0).to_dtype(dtype).unwrap(), tensor(&w, 3, 0.2));
                let act = Act::LeakyRelu(0.2);
                // (The reflection-padded f32 layer pads and convolves in two there.)
                let Some(o) = op(&x, &w).unwrap() else { continue };
                let fused = conv_norm_act(&x, &w, o, act).unwrap();
                let composed = instance_norm_act(&conv(&x, &w).unwrap(), act).unwrap();
                assert_eq!((fused.dtype(), values(&fused)), (dtype, values(&composed)), "{what} untracked {dtype:?}");
            }
            assert_eq!(run(&x, &w, conv, op, true, DType::F32), run(&x, &w, conv, op, false, DType::F32), "{what}");
            let (fused, composed) = (run(&x, &w, conv, op, true, DType::BF16), run(&x, &w, conv, op, false, DType::BF16));
            for (part, (a, b)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&composed)) {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
                assert!(err < 0.05, "{what} {part}: {err:e}");
            }
        }
    }
}
