//! Reflection padding as a candle custom op: a row copy with mirrored edges forward, and the
//! matching fold (each padded sample's gradient added back onto the sample it mirrors) backward.
//! The composed version (two `index_select`s) builds index tensors and runs a scattered
//! index-add in backward.

use super::{act_data, act_storage, cpu_act, data, reflect_indices};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `xs` `[B,C,H,W]` → `[B,C,H+2p,W+2p]`, PyTorch's ReflectionPad2d; f32 or bf16 CPU tensors take the
/// custom op, others the composed `index_select` version.
pub fn reflect_pad2d(xs: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(xs.clone());
    }
    let (_b, _c, h, w) = xs.dims4()?;
    if pad >= h || pad >= w {
        bail!("reflection padding {pad} needs an input larger than {pad} on each side, got {h}x{w}");
    }
    if !cpu_act(xs) {
        return super::reflect_pad2d_composed(xs, pad);
    }
    xs.contiguous()?.apply_op1(ReflectPad { pad })
}

struct ReflectPad {
    pad: usize,
}

impl CustomOp1 for ReflectPad {
    fn name(&self) -> &'static str {
        "reflect-pad2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let p = self.pad;
        let y = match s {
            CpuStorage::BF16(_) => CpuStorage::BF16(pad_planes(data::<half::bf16>(s, l)?, h, w, p)),
            _ => act_storage(pad_planes(&act_data(s, l)?, h, w, p), s)?,
        };
        Ok((y, Shape::from((b, c, h + 2 * p, w + 2 * p))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        Ok(Some(fold_grad(dy, self.pad, h, w)?))
    }
}

/// Every H×W plane of `x` reflection-padded by `p` (< H, W): planes of (H+2p)×(W+2p).
pub(crate) fn pad_planes<T: Copy + Default + Send + Sync>(x: &[T], h: usize, w: usize, p: usize) -> Vec<T> {
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let rows = reflect_indices(h, p);
    let planes = x.len() / (h * w).max(1);
    crate::ops::par_chunks_made(planes * ph * pw, ph * pw, || (), |_, i, yp: &mut [T]| {
        let xp = &x[i * h * w..][..h * w];
        for (r, row) in yp.chunks_exact_mut(pw).enumerate() {
            reflect_row(row, &xp[rows[r] as usize * w..][..w], p, |d, s| d.copy_from_slice(s), |v| v);
        }
    })
    .0
}

/// `src` into `dst` reflection-padded by `p` on both sides (`dst` holds `src.len()` + 2`p`
/// values): the middle by `middle`, the `p` mirrored values at each end by `one`. A row of
/// [`pad_planes`], or one a kernel pads as it converts it.
#[inline(always)]
pub(crate) fn reflect_row<S: Copy, D>(dst: &mut [D], src: &[S], p: usize, middle: impl FnOnce(&mut [D], &[S]), one: impl Fn(S) -> D) {
    let w = src.len();
    middle(&mut dst[p..p + w], src);
    for j in 0..p {
        dst[p - 1 - j] = one(src[j + 1]);
        dst[p + w + j] = one(src[w - 2 - j]);
    }
}

/// The gradient of `reflect_pad2d(x, pad)` for `x` of `h`×`w` planes from the padded output's
/// gradient `dy`.
pub(crate) fn fold_grad(dy: &Tensor, pad: usize, h: usize, w: usize) -> Result<Tensor> {
    dy.contiguous()?.apply_op1(ReflectPadBwd { pad, h, w })
}

/// The adjoint of `ReflectPad`: [B,C,H+2p,W+2p] → [B,C,H,W]. It is linear, so its own
/// gradient is the padding again.
struct ReflectPadBwd {
    pad: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for ReflectPadBwd {
    fn name(&self) -> &'static str {
        "reflect-pad2d-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = act_data(s, l)?;
        let (b, c, ph, pw) = l.shape().dims4()?;
        let (p, h, w) = (self.pad, self.h, self.w);
        if ph != h + 2 * p || pw != w + 2 * p {
            bail!("reflection padding backward: gradient {ph}x{pw} does not match {h}x{w} padded by {p}");
        }
        let rows = reflect_indices(h, p);
        let (dx, _) = crate::ops::par_chunks_made(b * c * h * w, h * w, || (), |_, i, xp: &mut [f32]| {
            let yp = &dy[i * ph * pw..][..ph * pw];
            for (r, row) in yp.chunks_exact(pw).enumerate() {
                let dst = &mut xp[rows[r] as usize * w..][..w];
                for (d, &v) in dst.iter_mut().zip(&row[p..p + w]) {
                    *d += v;
                }
                for j in 0..p {
                    dst[j + 1] += row[p - 1 - j];
                    dst[w - 2 - j] += row[p + w + j];
                }
            }
        });
        Ok((act_storage(dx, s)?, Shape::from((b, c, h, w))))
    }

    fn bwd(&self, _dy: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(reflect_pad2d(ddx, self.pad)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_index_select_version_forward_and_backward() {
        for (shape, pad) in [((2, 3, 5, 7), 2), ((1, 2, 4, 4), 3), ((1, 1, 9, 2), 1), ((1, 2, 8, 8), 1)] {
            let n = shape.0 * shape.1 * shape.2 * shape.3;
            let x = Var::from_vec((0..n).map(|i| ((i * 37 % 101) as f32) * 0.1).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap();
            let ours = reflect_pad2d(x.as_tensor(), pad).unwrap();
            let composed = crate::ops::reflect_pad2d_composed(x.as_tensor(), pad).unwrap();
            let (a, b) = (ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), composed.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(a, b, "{shape:?} pad {pad} forward");
            let weights = Tensor::arange(0f32, ours.elem_count() as f32, &Device::Cpu).unwrap().reshape(ours.shape()).unwrap();
            let g1 = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-3, "{shape:?} pad {pad} gradient differs by {diff}");
        }
    }
}
