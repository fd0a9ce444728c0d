//! Image quality measures: PSNR, SSIM and colourfulness (Hasler & Süsstrunk).

use crate::data::Pixels;

/// Peak signal-to-noise ratio in dB for pixels in `[0,1]` (capped at 100 dB for identical images).
pub fn psnr(a: &Pixels, b: &Pixels) -> f64 {
    let mse = a.data.iter().zip(&b.data).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.data.len().max(1) as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

/// Colourfulness M of Hasler & Süsstrunk (2003), the measure colourisation papers report, on
/// 0–255 values: σ and μ of the opponent channels rg = R − G and yb = (R + G)/2 − B,
/// M = √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²). 0 for a grey image; ~33 for the landscape photos.
/// A 1-channel image has no colour (0).
pub fn colourfulness(p: &Pixels) -> f64 {
    if p.channels != 3 {
        return 0.0;
    }
    let n = p.width * p.height;
    let (mut s_rg, mut s_yb, mut q_rg, mut q_yb) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..n {
        let (r, g, b) = (p.data[i] as f64 * 255.0, p.data[n + i] as f64 * 255.0, p.data[2 * n + i] as f64 * 255.0);
        let (rg, yb) = (r - g, 0.5 * (r + g) - b);
        s_rg += rg;
        s_yb += yb;
        q_rg += rg * rg;
        q_yb += yb * yb;
    }
    let n = n.max(1) as f64;
    let (m_rg, m_yb) = (s_rg / n, s_yb / n);
    let var = (q_rg / n - m_rg * m_rg).max(0.0) + (q_yb / n - m_yb * m_yb).max(0.0);
    var.sqrt() + 0.3 * (m_rg * m_rg + m_yb * m_yb).sqrt()
}

/// Normalised 11-tap Gaussian (σ = 1.5), the window of Wang et al.'s SSIM.
fn gaussian_window() -> [f64; 11] {
    let mut w = [0.0; 11];
    for (i, v) in w.iter_mut().enumerate() {
        let x = i as f64 - 5.0;
        *v = (-x * x / (2.0 * 1.5 * 1.5)).exp();
    }
    let s: f64 = w.iter().sum();
    w.map(|v| v / s)
}

/// Separable Gaussian blur with clamped borders.
fn blur(plane: &[f64], w: usize, h: usize, k: &[f64; 11]) -> Vec<f64> {
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (0..11).map(|i| k[i] * plane[y * w + (x as isize + i as isize - 5).clamp(0, w as isize - 1) as usize]).sum();
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..11).map(|i| k[i] * tmp[(y as isize + i as isize - 5).clamp(0, h as isize - 1) as usize * w + x]).sum();
        }
    }
    out
}

/// Structural similarity (Wang et al. 2004: Gaussian window 11/1.5, K1 0.01, K2 0.03, L = 1),
/// averaged over pixels and channels.
pub fn ssim(a: &Pixels, b: &Pixels) -> f64 {
    let (w, h) = (a.width, a.height);
    let n = w * h;
    let k = gaussian_window();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mut total = 0.0;
    for c in 0..a.channels {
        let x: Vec<f64> = a.data[c * n..(c + 1) * n].iter().map(|&v| v as f64).collect();
        let y: Vec<f64> = b.data[c * n..(c + 1) * n].iter().map(|&v| v as f64).collect();
        let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<f64>>();
        let (mx, my) = (blur(&x, w, h, &k), blur(&y, w, h, &k));
        let (sxx, syy, sxy) = (blur(&prod(&x, &x), w, h, &k), blur(&prod(&y, &y), w, h, &k), blur(&prod(&x, &y), w, h, &k));
        for i in 0..n {
            let (vx, vy, cxy) = (sxx[i] - mx[i] * mx[i], syy[i] - my[i] * my[i], sxy[i] - mx[i] * my[i]);
            total += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2)) / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
        }
    }
    total / (n * a.channels).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    fn px(data: Vec<f32>, w: usize, h: usize) -> Pixels {
        Pixels { channels: 1, width: w, height: h, data }
    }
    #[test]
    fn identical_images_score_perfectly_and_noise_lowers_both() {
        let a = px((0..400).map(|i| (i % 20) as f32 / 20.0).collect(), 20, 20);
        assert_eq!(psnr(&a, &a), 100.0);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-9);
        let b = px(a.data.iter().enumerate().map(|(i, v)| v + if i % 2 == 0 { 0.1 } else { -0.1 }).collect(), 20, 20);
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-3); // MSE 0.01
        assert!(ssim(&a, &b) < 0.9);
    }
}
