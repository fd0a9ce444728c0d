//! The colour maths of [`OutputMode::ChromaOverLuma`](super::OutputMode): an RGB image composed
//! from an input's luma and a predicted chroma, so that its brightness is the input's; and the
//! low-pass that takes transposed convolutions' checkerboard out of a predicted chroma.

use crate::ops::adapt_channels;
use candle_core::{Result, Tensor};

/// Below this, a channel's colour offset is treated as zero when finding how much chroma fits:
/// it keeps the divisions (and their gradients) finite.
const OFFSET_EPS: f64 = 1e-6;

/// Composes RGB from the luma of the generator's input `xs` `[B,Cin,H,W]` (Cin 1, 3 or 4, in
/// `[-1,1]`) and the network's tanh output `chroma` `[B,2,H,W]` (Cb, Cr scaled to `[-1,1]`); returns
/// `[B,3,H,W]` in `[-1,1]`, differentiable in both.
///
/// Y = (luma(xs)+1)/2 with luma the ITU-R 601 weights (as `adapt_channels`), Cb, Cr = chroma/2,
/// and full-range JPEG YCbCr→RGB: R = Y + 1.402·Cr, G = Y − 0.344136·Cb − 0.714136·Cr,
/// B = Y + 1.772·Cb. The offsets RGB − Y have a 601-weighted sum of zero, so the output's luma
/// is Y. Where an offset would push a channel out of `[0,1]`, clamping that channel alone would
/// change the luma; instead the pixel's chroma is shrunk just enough to fit (hue and luma kept).
pub fn compose_chroma_over_luma(xs: &Tensor, chroma: &Tensor) -> Result<Tensor> {
    let y = ((adapt_channels(xs, 1)? + 1.0)? * 0.5)?; // [B,1,H,W] in [0,1]
    let cb = (chroma.narrow(1, 0, 1)? * 0.5)?; // [B,1,H,W] in [-0.5,0.5]
    let cr = (chroma.narrow(1, 1, 1)? * 0.5)?;
    let r = (&cr * 1.402)?;
    let g = ((&cb * -0.344136)? - (&cr * 0.714136)?)?;
    let b = (&cb * 1.772)?;
    let offset = Tensor::cat(&[r, g, b], 1)?; // [B,3,H,W]: RGB − Y
    // The largest factor each channel allows its offset: (1−Y)/offset upwards, Y/|offset|
    // downwards; a channel moving the other way gets a huge (non-binding) limit.
    let up = y.affine(-1.0, 1.0)?.broadcast_div(&offset.maximum(OFFSET_EPS)?)?;
    let down = y.broadcast_div(&offset.neg()?.maximum(OFFSET_EPS)?)?;
    let fit = up.minimum(&down)?.min_keepdim(1)?.clamp(0.0, 1.0)?; // [B,1,H,W]
    let rgb = y.broadcast_add(&offset.broadcast_mul(&fit)?)?; // [B,3,H,W] in [0,1]
    // The clamp only removes float rounding at the gamut's edge.
    rgb.affine(2.0, -1.0)?.clamp(-1.0, 1.0)
}

/// Low-passes a predicted chroma `chroma` `[B,C,H,W]` with the separable filter `[1,2,2,2,1]`/8
/// (replicated borders). That filter is a 4-tap box convolved with `[1,1]`/2, so its response is
/// exactly zero at periods 2 and 4 (ω = π/2, π, 3π/2): it removes the period-2 and period-4
/// patterns that stride-2 transposed convolutions print on their outputs (checkerboard
/// artefacts) and keeps colour detail coarser than 4 pixels, which is all the eye resolves
/// in colour (JPEG stores chroma at half resolution).
pub fn lowpass_chroma(chroma: &Tensor) -> Result<Tensor> {
    let mut out = chroma.clone();
    for dim in [2, 3] {
        let n = out.dim(dim)?;
        let padded = out.pad_with_same(dim, 2, 2)?;
        let mut acc = (padded.narrow(dim, 0, n)? * 0.125)?;
        for (i, tap) in [(1, 0.25), (2, 0.25), (3, 0.25), (4, 0.125)] {
            acc = (acc + (padded.narrow(dim, i, n)? * tap)?)?;
        }
        out = acc;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn output_luma_is_the_input_luma_for_any_chroma() {
        let dev = Device::Cpu;
        for channels in [1, 3] {
            let xs = Tensor::rand(-1f32, 1.0, (2, channels, 9, 7), &dev).unwrap();
            // Full-range chroma: many pixels are out of gamut and get their chroma shrunk.
            let chroma = Tensor::rand(-1f32, 1.0, (2, 2, 9, 7), &dev).unwrap();
            let out = compose_chroma_over_luma(&xs, &chroma).unwrap();
            assert_eq!(out.dims(), &[2, 3, 9, 7]);
            let err = max_abs_diff(&adapt_channels(&out, 1).unwrap(), &adapt_channels(&xs, 1).unwrap());
            assert!(err < 1e-5, "{channels} input channels: luma differs by {err}");
            assert!(out.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() <= 1.0);
        }
    }

    #[test]
    fn in_gamut_chroma_is_the_jpeg_conversion() {
        let dev = Device::Cpu;
        // Y = 0.5, Cb = 0.1, Cr = -0.05: every channel stays inside [0,1].
        let xs = Tensor::zeros((1, 1, 1, 1), DType::F32, &dev).unwrap();
        let chroma = Tensor::new(&[0.2f32, -0.1], &dev).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let out = compose_chroma_over_luma(&xs, &chroma).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rgb = [0.5 + 1.402 * -0.05, 0.5 - 0.344136 * 0.1 - 0.714136 * -0.05, 0.5 + 1.772 * 0.1];
        for (o, c) in out.iter().zip(rgb) {
            assert!((o - (2.0 * c - 1.0)).abs() < 1e-6, "{out:?} vs {rgb:?}");
        }
    }

    #[test]
    fn lowpass_removes_period_2_and_4_patterns_and_keeps_smooth_chroma() {
        let dev = Device::Cpu;
        let (h, w) = (12usize, 16usize);
        // A horizontal ramp plus period-2 and period-4 checkerboards of amplitude 0.1.
        let sign = |n: usize| if n.is_multiple_of(2) { 1.0 } else { -1.0 };
        let pattern = |y: usize, x: usize| 0.1 * sign(y / 2 + x / 2) + 0.1 * sign(y + x);
        let ramp = |_y: usize, x: usize| 0.02 * x as f32 - 0.1;
        let make = |f: &dyn Fn(usize, usize) -> f32| {
            let v: Vec<f32> = (0..2).flat_map(|_| (0..h).flat_map(move |y| (0..w).map(move |x| (y, x)))).map(|(y, x)| f(y, x)).collect();
            Tensor::from_vec(v, (1, 2, h, w), &dev).unwrap()
        };
        let smooth = make(&ramp);
        let out = lowpass_chroma(&make(&|y, x| ramp(y, x) + pattern(y, x))).unwrap();
        // Away from the borders (2 pixels) the patterns are gone and the ramp is unchanged.
        let inner = |t: &Tensor| t.narrow(2, 2, h - 4).unwrap().narrow(3, 2, w - 4).unwrap();
        assert!(max_abs_diff(&inner(&out), &inner(&smooth)) < 1e-6);
        // A constant stays exactly itself, borders included.
        let flat = Tensor::full(0.3f32, (1, 2, 5, 3), &dev).unwrap();
        assert!(max_abs_diff(&lowpass_chroma(&flat).unwrap(), &flat) < 1e-7);
    }

    #[test]
    fn zero_chroma_repeats_the_grey_image() {
        let dev = Device::Cpu;
        for channels in [1, 3] {
            let xs = Tensor::rand(-1f32, 1.0, (1, channels, 5, 6), &dev).unwrap();
            let out = compose_chroma_over_luma(&xs, &Tensor::zeros((1, 2, 5, 6), DType::F32, &dev).unwrap()).unwrap();
            let grey = adapt_channels(&xs, 1).unwrap().repeat((1, 3, 1, 1)).unwrap();
            assert!(max_abs_diff(&out, &grey) < 1e-6);
        }
    }

    #[test]
    fn gradients_are_finite_at_black_white_and_grey() {
        let dev = Device::Cpu;
        // Black, white and mid grey pixels, with zero and saturated chroma.
        let xs = Tensor::new(&[-1f32, 1.0, 0.0, -1.0, 1.0, 0.0], &dev).unwrap().reshape((1, 1, 2, 3)).unwrap();
        let chroma = Var::from_tensor(&Tensor::new(&[0f32, 0.0, 0.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.5], &dev).unwrap().reshape((1, 2, 2, 3)).unwrap()).unwrap();
        let out = compose_chroma_over_luma(&xs, chroma.as_tensor()).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let g = grads.get(chroma.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}
