//! Colour as classes (Zhang, Isola & Efros, ECCV 2016), in this project's YCbCr: the (Cb, Cr)
//! plane quantised into in-gamut bins that a `--paired-loss classify` generator predicts a
//! distribution over, soft-encoded targets, rebalancing weights from the training photos' colour
//! prior, and the annealed-mean read-out whose temperature sets how vivid translations are.

use candle_core::{Device, Result, Tensor};
use std::sync::OnceLock;

/// Bin spacing on the Cb and Cr axes (each spans [-0.5, 0.5]); 20 bins per axis, about the
/// paper's grid of 10 on ab values within ±110.
pub const STEP: f32 = 0.05;

/// Read-out temperature used by translations unless `--temperature` says otherwise (the paper's
/// 0.38: 1 is the mean of the distribution, towards 0 its mode).
pub const DEFAULT_TEMPERATURE: f64 = 0.38;

/// Mixing of the smoothed prior with the uniform distribution for the rebalancing weights (the
/// paper's λ = 0.5).
const PRIOR_MIX: f64 = 0.5;

/// Whether some brightness Y in [0,1] shows (cb, cr) with every RGB channel in [0,1]:
/// the JPEG offsets RGB − Y must span at most 1.
fn in_gamut(cb: f32, cr: f32) -> bool {
    let o = [1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb];
    let (lo, hi) = o.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    hi - lo <= 1.0
}

/// The in-gamut bin centres (Cb, Cr) in a fixed order: the network's output channels.
pub fn bins() -> &'static [(f32, f32)] {
    static BINS: OnceLock<Vec<(f32, f32)>> = OnceLock::new();
    BINS.get_or_init(|| {
        let n = (1.0 / STEP).round() as usize;
        let centre = |i: usize| -0.5 + STEP * (i as f32 + 0.5);
        (0..n).flat_map(|i| (0..n).map(move |j| (centre(i), centre(j)))).filter(|&(cb, cr)| in_gamut(cb, cr)).collect()
    })
}

/// The JPEG chroma of an RGB pixel in [0,1].
fn chroma_of(r: f32, g: f32, b: f32) -> (f32, f32) {
    (-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b)
}

fn nearest(cb: f32, cr: f32) -> usize {
    let d = |&(x, y): &(f32, f32)| (x - cb).powi(2) + (y - cr).powi(2);
    (0..bins().len()).min_by(|&a, &b| d(&bins()[a]).total_cmp(&d(&bins()[b]))).unwrap_or(0)
}

/// Counts of each bin (nearest centre) over RGB pixels `rgb` `[3·N]` in `[0,1]`, planar.
pub fn histogram(rgb: &[f32], counts: &mut [f64]) {
    let n = rgb.len() / 3;
    for i in 0..n {
        let (cb, cr) = chroma_of(rgb[i], rgb[n + i], rgb[2 * n + i]);
        counts[nearest(cb, cr)] += 1.0;
    }
}

/// Rebalancing weight of each bin from its counts in the training photos: the prior smoothed
/// by a Gaussian (σ half a bin), mixed half and half with the uniform distribution, inverted
/// and scaled so that its expectation under the smoothed prior is 1. Rare (saturated) colours
/// then weigh more than the common greyish ones, so the classifier does not settle on them.
pub fn rebalancing_weights(counts: &[f64]) -> Vec<f32> {
    let q = bins().len();
    let total = counts.iter().sum::<f64>().max(1.0);
    let sigma2 = (STEP as f64 / 2.0).powi(2);
    let smoothed: Vec<f64> = (0..q)
        .map(|a| {
            let (ax, ay) = bins()[a];
            let (mut s, mut norm) = (0.0, 0.0);
            for (b, &(bx, by)) in bins().iter().enumerate() {
                let k = (-(((ax - bx).powi(2) + (ay - by).powi(2)) as f64) / (2.0 * sigma2)).exp();
                s += k * counts[b] / total;
                norm += k;
            }
            s / norm
        })
        .collect();
    let sum: f64 = smoothed.iter().sum::<f64>().max(1e-12);
    let prior: Vec<f64> = smoothed.iter().map(|p| p / sum).collect();
    let w: Vec<f64> = prior.iter().map(|p| 1.0 / ((1.0 - PRIOR_MIX) * p + PRIOR_MIX / q as f64)).collect();
    let expectation: f64 = prior.iter().zip(&w).map(|(p, w)| p * w).sum();
    w.iter().map(|w| (w / expectation) as f32).collect()
}

/// Soft-encoded targets of RGB images `rgb` `[B,3,H,W]` in `[-1,1]`: each pixel's 5 nearest bins
/// weighted by a Gaussian (σ half a bin) of their distance, as `[B,Q,H,W]`; and each pixel's
/// rebalancing weight (of its nearest bin) as `[B,1,H,W]`.
pub fn soft_targets(rgb: &Tensor, weights: &[f32]) -> Result<(Tensor, Tensor)> {
    let (b, c, h, w) = rgb.dims4()?;
    if c != 3 {
        candle_core::bail!("colour classes need 3-channel targets, got {c}");
    }
    let q = bins().len();
    let data = rgb.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let n = h * w;
    let mut targets = vec![0f32; b * q * n];
    let mut pixel_w = vec![0f32; b * n];
    let sigma2 = (STEP / 2.0).powi(2);
    let mut dist: Vec<(f32, usize)> = Vec::with_capacity(q);
    for img in 0..b {
        let plane = |ch: usize, i: usize| data[(img * 3 + ch) * n + i] * 0.5 + 0.5;
        for i in 0..n {
            let (cb, cr) = chroma_of(plane(0, i), plane(1, i), plane(2, i));
            dist.clear();
            dist.extend(bins().iter().enumerate().map(|(k, &(x, y))| ((x - cb).powi(2) + (y - cr).powi(2), k)));
            dist.select_nth_unstable_by(4.min(q - 1), |a, b| a.0.total_cmp(&b.0));
            let near = &mut dist[..5.min(q)];
            near.sort_by(|a, b| a.0.total_cmp(&b.0));
            let ks: Vec<f32> = near.iter().map(|(d, _)| (-d / (2.0 * sigma2)).exp()).collect();
            let norm: f32 = ks.iter().sum::<f32>().max(1e-12);
            for ((_, k), v) in near.iter().zip(&ks) {
                targets[(img * q + k) * n + i] = v / norm;
            }
            pixel_w[img * n + i] = weights.get(near[0].1).copied().unwrap_or(1.0);
        }
    }
    let device = rgb.device();
    Ok((Tensor::from_vec(targets, (b, q, h, w), device)?, Tensor::from_vec(pixel_w, (b, 1, h, w), device)?))
}

/// The rebalanced cross-entropy of `logits` `[B,Q,H,W]` against soft `targets` `[B,Q,H,W]` with
/// per-pixel weights `pixel_w` `[B,1,H,W]`, averaged over pixels.
pub fn class_loss(logits: &Tensor, targets: &Tensor, pixel_w: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    (targets * logp)?.sum_keepdim(1)?.neg()?.mul(pixel_w)?.mean_all()
}

/// The annealed mean of the colour distribution `logits` `[B,Q,H,W]` at temperature `t`: the
/// expected (Cb, Cr) under softmax(logits / t), as `[B,2,H,W]` in the network's units
/// (Cb, Cr ×2, as a direct chroma generator's tanh output).
pub fn annealed_mean(logits: &Tensor, t: f64) -> Result<Tensor> {
    let (b, q, h, w) = logits.dims4()?;
    let p = candle_nn::ops::softmax(&(logits / t)?, 1)?.reshape((b, q, h * w))?; // [B,Q,HW]
    let centres: Vec<f32> = bins().iter().map(|c| 2.0 * c.0).chain(bins().iter().map(|c| 2.0 * c.1)).collect();
    let centres = Tensor::from_vec(centres, (1, 2, q), logits.device())?.to_dtype(logits.dtype())?.broadcast_as((b, 2, q))?;
    centres.contiguous()?.matmul(&p.contiguous()?)?.reshape((b, 2, h, w)) // [B,2,H,W]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_gamut_and_targets_decode_back() {
        let q = bins().len();
        assert!((200..=400).contains(&q), "{q} bins");
        assert!(bins().iter().all(|&(cb, cr)| in_gamut(cb, cr)));
        // A few colours: their soft targets, read out at a low temperature, give them back to
        // within half a bin.
        let dev = Device::Cpu;
        let rgb = [[0.9f32, 0.2, 0.1], [0.1, 0.6, 0.2], [0.2, 0.3, 0.8], [0.5, 0.5, 0.5]];
        let planar: Vec<f32> = (0..3).flat_map(|c| rgb.iter().map(move |p| p[c] * 2.0 - 1.0)).collect();
        let img = Tensor::from_vec(planar, (1, 3, 1, 4), &dev).unwrap();
        let (targets, w) = soft_targets(&img, &vec![1.0; q]).unwrap();
        let sums = targets.sum_keepdim(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        assert_eq!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        let logits = (targets.clamp(1e-6, 1.0).unwrap().log().unwrap()).contiguous().unwrap();
        let decoded = annealed_mean(&logits, 1.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, p) in rgb.iter().enumerate() {
            let (cb, cr) = chroma_of(p[0], p[1], p[2]);
            assert!((decoded[i] / 2.0 - cb).abs() < STEP / 2.0 && (decoded[4 + i] / 2.0 - cr).abs() < STEP / 2.0, "{p:?}");
        }
    }

    #[test]
    fn rare_colours_weigh_more_and_the_expected_weight_is_one() {
        let q = bins().len();
        let mut counts = vec![0.0; q];
        counts[nearest(0.0, 0.0)] = 1000.0;
        counts[nearest(0.2, -0.1)] = 10.0;
        let w = rebalancing_weights(&counts);
        assert!(w[nearest(0.2, -0.1)] > w[nearest(0.0, 0.0)]);
        assert!(w.iter().all(|v| v.is_finite() && *v > 0.0));
    }
}
