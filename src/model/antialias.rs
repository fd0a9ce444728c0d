//! CUT's fixed anti-aliasing filters (Zhang 2019, "Making convolutional networks shift-invariant
//! again"): the blur-pool that replaces strided convolutions and the blur up-sampling that
//! replaces transposed convolutions. No learned weights, nothing in a checkpoint.
//!
//! Both filters are outer products of a 1-D kernel and their paddings (reflect, replicate) act
//! on each axis on its own, so each is applied as two 1-D passes built from `index_select` and
//! weighted sums: plain tensor ops, hence autograd and every device work, with no per-channel
//! loop. f32 tensors on the CPU take fused custom ops instead (`ops::blur`: both axes in one
//! pass per plane, forward and backward), unless `CS_GENERIC_OPS` is set.

use candle_core::{Result, Tensor};

/// Reflection of index `i` (may be −1 or n) into 0..n, as `nn.ReflectionPad2d` of width 1.
fn reflect(i: isize, n: usize) -> u32 {
    let n = n as isize;
    let r = if i < 0 { -i } else if i >= n { 2 * (n - 1) - i } else { i };
    r.clamp(0, n - 1) as u32
}

fn gather(xs: &Tensor, dim: usize, idx: Vec<u32>) -> Result<Tensor> {
    let len = idx.len();
    xs.index_select(&Tensor::from_vec(idx, len, xs.device())?, dim)
}

/// One axis of the blur-pool: out[i] = (x[r(2i−1)] + 2·x[2i] + x[r(2i+1)]) / 4 with r the
/// reflection, i.e. reflect-pad 1, [1,2,1]/4, stride 2.
fn blur_down_axis(xs: &Tensor, dim: usize) -> Result<Tensor> {
    let n = xs.dim(dim)?;
    if n < 2 {
        candle_core::bail!("blur_down needs at least 2 pixels along dimension {dim}, got {n}");
    }
    let out = (n - 1) / 2 + 1; // (n + 2 − 3) / 2 + 1, PyTorch's conv output size
    let tap = |off: isize| gather(xs, dim, (0..out).map(|i| reflect(2 * i as isize + off, n)).collect());
    let (l, c, r) = (tap(-1)?, tap(0)?, tap(1)?);
    ((l + r)? * 0.25)? + (c * 0.5)?
}

/// The reference's `Downsample(channels)` (filt_size 3, stride 2, reflect padding): a depthwise
/// `[1,2,1]`⊗`[1,2,1]`/16 blur with stride 2. `xs` `[B,C,H,W]` → `[B,C,⌊(H−1)/2⌋+1,⌊(W−1)/2⌋+1]`.
pub fn blur_down(xs: &Tensor) -> Result<Tensor> {
    if crate::ops::blur::applies(xs) {
        return crate::ops::blur::blur_down(xs);
    }
    blur_down_composed(xs)
}

/// `blur_down` from tensor ops (any device and dtype; what a GPU runs).
pub(crate) fn blur_down_composed(xs: &Tensor) -> Result<Tensor> {
    blur_down_axis(&blur_down_axis(xs, 2)?, 3)
}

/// One axis of the blur up-sampling: out[2m] = ¾·x[m] + ¼·x[m−1], out[2m+1] = ¾·x[m] + ¼·x[m+1]
/// (indices clamped: replicate padding). This is what the reference's conv_transpose with
/// [1,3,3,1]/4, stride 2, padding 2 on the replicate-padded input, cropped by `[1:]` and `[:-1]`,
/// reduces to.
fn blur_up_axis(xs: &Tensor, dim: usize) -> Result<Tensor> {
    let n = xs.dim(dim)?;
    let prev = gather(xs, dim, (0..n).map(|m| m.saturating_sub(1) as u32).collect())?;
    let next = gather(xs, dim, (0..n).map(|m| (m + 1).min(n - 1) as u32).collect())?;
    let centre = (xs * 0.75)?;
    let even = (&centre + (prev * 0.25)?)?;
    let odd = (centre + (next * 0.25)?)?;
    // Interleave: [.., n, 2, ..] → [.., 2n, ..].
    let mut dims = xs.dims().to_vec();
    dims[dim] = 2 * n;
    Tensor::stack(&[even, odd], dim + 1)?.reshape(dims)
}

/// The reference's `Upsample(channels)` (filt_size 4, stride 2, replicate padding): blur
/// up-sampling by 2 with `[1,3,3,1]`⊗`[1,3,3,1]`/16. `xs` `[B,C,H,W]` → `[B,C,2H,2W]`.
pub fn blur_up(xs: &Tensor) -> Result<Tensor> {
    if crate::ops::blur::applies(xs) {
        return crate::ops::blur::blur_up(xs);
    }
    blur_up_composed(xs)
}

/// `blur_up` from tensor ops (any device and dtype; what a GPU runs).
pub(crate) fn blur_up_composed(xs: &Tensor) -> Result<Tensor> {
    blur_up_axis(&blur_up_axis(xs, 2)?, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn constant_images_stay_constant() {
        let x = Tensor::full(0.5f32, (1, 2, 6, 5), &Device::Cpu).unwrap();
        let d = blur_down(&x).unwrap();
        assert_eq!(d.dims(), &[1, 2, 3, 3]);
        let u = blur_up(&x).unwrap();
        assert_eq!(u.dims(), &[1, 2, 12, 10]);
        for t in [d, u] {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|&v| (v - 0.5).abs() < 1e-7));
        }
    }

    #[test]
    fn one_axis_matches_hand_computation() {
        // x = [0,1,2,3] (reflect: x[-1] = 1, x[4] = 2).
        let x = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu).unwrap().reshape((1, 1, 1, 4)).unwrap();
        let d = blur_down_axis(&x, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(d, vec![(1. + 0. + 1.) / 4., (1. + 4. + 3.) / 4.]);
        let u = blur_up_axis(&x, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(u, vec![0., 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.]);
    }
}
