//! FID and KID from feature sets, as the field computes them: the Fréchet distance of
//! pytorch-fid's `calculate_frechet_distance` (means, sample covariances, trace of the matrix
//! square root of their product) and the Kernel Inception Distance of torch-fidelity (unbiased
//! MMD² with the cubic polynomial kernel, averaged over random subsets drawn by numpy's
//! `RandomState(2020)`, reproduced exactly).
//!
//! tr √(Σ₁Σ₂) is the sum of the square roots of the eigenvalues of Σ₁Σ₂, which are those of
//! the symmetric matrix LᵀΣ₂L (Σ₁ = LLᵀ) or, with fewer images than dimensions or a singular
//! Σ₁, the non-zero ones of X₁Σ₂X₁ᵀ/(n₁−1) (X₁ the centred features): a symmetric eigenvalue
//! problem in f64 instead of scipy's general `sqrtm`, exact for rank-deficient covariances too.

use anyhow::{bail, Result};
use gemm::Parallelism;

/// Features of a set of images: `n` rows of `dim` values.
#[derive(Clone, Debug)]
pub struct Features {
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn new(n: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != n * dim {
            bail!("features: {} values for {n}×{dim}", data.len());
        }
        Ok(Self { n, dim, data })
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Mean and rows minus the mean, in f64.
    fn centred(&self) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim;
        let mut mu = vec![0f64; d];
        for i in 0..self.n {
            for (m, v) in mu.iter_mut().zip(self.row(i)) {
                *m += *v as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= self.n as f64);
        let mut x = Vec::with_capacity(self.n * d);
        for i in 0..self.n {
            x.extend(self.row(i).iter().zip(&mu).map(|(v, m)| *v as f64 - m));
        }
        (mu, x)
    }
}

/// `dst` [m,n] = `alpha` · a [m,k] · b [k,n], with either operand optionally transposed
/// (`a_t`: a is stored [k,m]; `b_t`: b is stored [n,k]); row-major, f64, multithreaded.
#[allow(clippy::too_many_arguments)]
fn matmul_f64(m: usize, n: usize, k: usize, a: &[f64], a_t: bool, b: &[f64], b_t: bool, alpha: f64) -> Vec<f64> {
    let mut dst = vec![0f64; m * n];
    if m == 0 || n == 0 {
        return dst;
    }
    assert!(a.len() >= m * k && b.len() >= k * n, "matmul_f64: operands too small");
    let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
    // SAFETY: the assert keeps every read inside `a` and `b` (both m·k and k·n elements in
    // either layout), `dst` holds m·n elements written at row stride n, and it aliases neither.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    };
    dst
}

/// Eigenvalues of the symmetric matrix `a` `[n,n]` (row-major, symmetrised first; overwritten):
/// Householder reduction to tridiagonal form, then the implicit QL algorithm (Numerical Recipes'
/// `tred2` without vectors and `tqli`). The reduction keeps the whole leading block symmetric, so
/// its products run along rows (contiguous, in parallel) instead of down columns.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    if n == 0 {
        return Ok(vec![]);
    }
    if a.len() != n * n {
        bail!("eigenvalues: {} values for {n}×{n}", a.len());
    }
    for i in 0..n {
        for j in 0..i {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    for i in (1..n).rev() {
        let l = i - 1;
        let mut h = 0.0;
        if l > 0 {
            let scale: f64 = (0..=l).map(|k| a[i * n + k].abs()).sum();
            if scale == 0.0 {
                e[i] = a[i * n + l];
            } else {
                for k in 0..=l {
                    a[i * n + k] /= scale;
                    h += a[i * n + k] * a[i * n + k];
                }
                let f = a[i * n + l];
                let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
                e[i] = scale * g;
                h -= f * g;
                a[i * n + l] = f - g;
                let u: Vec<f64> = a[i * n..i * n + l + 1].to_vec();
                // p = A·u / h over the leading (l+1)×(l+1) block, K = uᵀp / 2h, q = p − K·u,
                // A −= u·qᵀ + q·uᵀ.
                let block = &mut a[..(l + 1) * n];
                let p: Vec<f64> = block.par_chunks(n).map(|row| row[..=l].iter().zip(&u).map(|(x, y)| x * y).sum::<f64>() / h).collect();
                let hh = p.iter().zip(&u).map(|(x, y)| x * y).sum::<f64>() / (h + h);
                let q: Vec<f64> = p.iter().zip(&u).map(|(pj, uj)| pj - hh * uj).collect();
                block.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
                    let (fj, gj) = (u[j], q[j]);
                    for ((x, qk), uk) in row[..=l].iter_mut().zip(&q).zip(&u) {
                        *x -= fj * qk + gj * uk;
                    }
                });
            }
        } else {
            e[i] = a[i * n + l];
        }
        d[i] = h;
    }
    for i in 0..n {
        d[i] = a[i * n + i];
    }
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    if !d.iter().chain(&e).all(|v| v.is_finite()) {
        bail!("eigenvalues: the matrix is not finite");
    }
    // Implicit QL on the tridiagonal (d, e). An off-diagonal element counts as zero when it is
    // negligible against the matrix's norm (as EISPACK's tql1 tests), not only against its
    // neighbours: eigenvalues near zero beside large ones would otherwise never converge.
    let norm = (0..n).map(|i| d[i].abs() + e[i].abs()).fold(0f64, f64::max);
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd.max(norm) {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 60 {
                bail!("eigenvalues: no convergence (d {} e {})", d[l], e[l]);
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r.abs() } else { -r.abs() });
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut deflated = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(d)
}

/// Lower Cholesky factor of the symmetric positive definite `a` [n,n], or None.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let s: f64 = a[j * n + j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
        if s.is_nan() || s <= 0.0 || !s.is_finite() {
            return None;
        }
        let ljj = s.sqrt();
        l[j * n + j] = ljj;
        for i in j + 1..n {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = s / ljj;
        }
    }
    Some(l)
}

/// Fréchet distance between Gaussians fitted to two feature sets (pytorch-fid's
/// `calculate_frechet_distance(mu1, sigma1, mu2, sigma2)` with `np.mean` / `np.cov`). Needs at
/// least two images on each side.
pub fn fid(a: &Features, b: &Features) -> Result<f64> {
    if a.dim != b.dim {
        bail!("FID: features of different lengths ({} and {})", a.dim, b.dim);
    }
    if a.n < 2 || b.n < 2 {
        bail!("FID needs at least 2 images on each side (got {} and {})", a.n, b.n);
    }
    let d = a.dim;
    let (mu1, x1) = a.centred();
    let (mu2, x2) = b.centred();
    let sigma2 = matmul_f64(d, d, b.n, &x2, true, &x2, false, 1.0 / (b.n - 1) as f64);
    let tr1: f64 = (0..a.n * d).map(|i| x1[i] * x1[i]).sum::<f64>() / (a.n - 1) as f64;
    let tr2: f64 = (0..d).map(|i| sigma2[i * d + i]).sum();
    let diff: f64 = mu1.iter().zip(&mu2).map(|(p, q)| (p - q) * (p - q)).sum();
    // Non-zero eigenvalues of Σ₁Σ₂ = those of X₁Σ₂X₁ᵀ/(n₁−1), exact whatever the rank of Σ₁.
    let gram = || -> Result<Vec<f64>> {
        let t = matmul_f64(a.n, d, d, &x1, false, &sigma2, false, 1.0);
        let m = matmul_f64(a.n, a.n, d, &t, false, &x1, true, 1.0 / (a.n - 1) as f64);
        symmetric_eigenvalues(m, a.n)
    };
    let eig = if a.n - 1 < d {
        gram()?
    } else {
        // Fewer dimensions than images: those of LᵀΣ₂L (Σ₁ = LLᵀ), a d×d problem; a singular
        // Σ₁ (duplicate or degenerate features) takes the Gram form instead.
        let sigma1 = matmul_f64(d, d, a.n, &x1, true, &x1, false, 1.0 / (a.n - 1) as f64);
        match cholesky(&sigma1, d) {
            Some(l) => {
                let t = matmul_f64(d, d, d, &l, true, &sigma2, false, 1.0);
                let m = matmul_f64(d, d, d, &t, false, &l, false, 1.0);
                symmetric_eigenvalues(m, d)?
            }
            None => gram()?,
        }
    };
    let tr_covmean: f64 = eig.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok(diff + tr1 + tr2 - 2.0 * tr_covmean)
}

/// numpy's legacy `RandomState` (MT19937 seeded by `init_genrand`), as far as
/// `choice(n, size, replace=False)` needs it.
struct NumpyRandomState {
    mt: [u32; 624],
    pos: usize,
}

impl NumpyRandomState {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { mt, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in [0, max] by masked rejection.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16] {
            mask |= mask >> s;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `choice(n, size, replace=False)` = `permutation(n)[:size]`.
    fn choice(&mut self, n: usize, size: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            idx.swap(i, j);
        }
        idx.truncate(size);
        idx
    }
}

/// KID settings, torch-fidelity's defaults.
#[derive(Clone, Debug)]
pub struct KidOptions {
    pub subsets: usize,
    /// Images per subset; lowered to the smaller set's size when a set is smaller.
    pub subset_size: usize,
    pub degree: i32,
    /// None: 1 / feature length.
    pub gamma: Option<f64>,
    pub coef0: f64,
    pub seed: u32,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self { subsets: 100, subset_size: 1000, degree: 3, gamma: None, coef0: 1.0, seed: 2020 }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    /// The subset size used.
    pub subset_size: usize,
    pub subsets: usize,
}

/// Kernel Inception Distance as torch-fidelity's `kid_features_to_metric`: for each subset, m
/// rows of each set drawn without replacement, unbiased MMD² with k(x,y) = (γ x·y + c)^d; the
/// mean and (population) standard deviation over the subsets.
pub fn kid(a: &Features, b: &Features, opts: &KidOptions) -> Result<Kid> {
    if a.dim != b.dim {
        bail!("KID: features of different lengths ({} and {})", a.dim, b.dim);
    }
    let m = opts.subset_size.min(a.n).min(b.n);
    if m < 2 {
        bail!("KID needs at least 2 images on each side (got {} and {})", a.n, b.n);
    }
    let d = a.dim;
    let gamma = opts.gamma.unwrap_or(1.0 / d as f64);
    let to64 = |f: &Features| f.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (xa, xb) = (to64(a), to64(b));
    // All dot products at once when they fit (≤ 64 M values), else per subset.
    let whole = (a.n + b.n).pow(2) <= 64 << 20;
    let (gaa, gbb, gab) = if whole {
        (
            matmul_f64(a.n, a.n, d, &xa, false, &xa, true, 1.0),
            matmul_f64(b.n, b.n, d, &xb, false, &xb, true, 1.0),
            matmul_f64(a.n, b.n, d, &xa, false, &xb, true, 1.0),
        )
    } else {
        (vec![], vec![], vec![])
    };
    let k = |dot: f64| (gamma * dot + opts.coef0).powi(opts.degree);
    let mut rng = NumpyRandomState::new(opts.seed);
    let mut mmds = Vec::with_capacity(opts.subsets);
    for _ in 0..opts.subsets {
        let ia = rng.choice(a.n, m);
        let ib = rng.choice(b.n, m);
        let (kaa, kbb, kab): (Vec<f64>, Vec<f64>, Vec<f64>) = if whole {
            let pick = |g: &[f64], ni: usize, r: &[usize], c: &[usize]| -> Vec<f64> { r.iter().flat_map(|&i| c.iter().map(move |&j| k(g[i * ni + j]))).collect() };
            (pick(&gaa, a.n, &ia, &ia), pick(&gbb, b.n, &ib, &ib), pick(&gab, b.n, &ia, &ib))
        } else {
            let rows = |x: &[f64], idx: &[usize]| -> Vec<f64> { idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect() };
            let (sa, sb) = (rows(&xa, &ia), rows(&xb, &ib));
            let kern = |p: &[f64], q: &[f64]| matmul_f64(m, m, d, p, false, q, true, 1.0).into_iter().map(k).collect::<Vec<f64>>();
            (kern(&sa, &sa), kern(&sb, &sb), kern(&sa, &sb))
        };
        let off_diag = |kk: &[f64]| kk.iter().sum::<f64>() - (0..m).map(|i| kk[i * m + i]).sum::<f64>();
        let mf = m as f64;
        let mmd = (off_diag(&kaa) + off_diag(&kbb)) / (mf * (mf - 1.0)) - 2.0 * kab.iter().sum::<f64>() / (mf * mf);
        mmds.push(mmd);
    }
    let mean = mmds.iter().sum::<f64>() / mmds.len() as f64;
    let std = (mmds.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / mmds.len() as f64).sqrt();
    Ok(Kid { mean, std, subset_size: m, subsets: opts.subsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // Q·diag(1..5)·Qᵀ with Q a Householder reflection.
        let n = 5;
        let v = [0.3, -0.5, 0.2, 0.7, 0.1];
        let vv: f64 = v.iter().map(|x| x * x).sum();
        let q: Vec<f64> = (0..n * n).map(|i| (if i / n == i % n { 1.0 } else { 0.0 }) - 2.0 * v[i / n] * v[i % n] / vv).collect();
        let lam = [1.0, 2.0, 3.0, 4.0, 5.0];
        let a: Vec<f64> = (0..n * n).map(|i| (0..n).map(|k| q[(i / n) * n + k] * lam[k] * q[(i % n) * n + k]).sum()).collect();
        let mut e = symmetric_eigenvalues(a, n).unwrap();
        e.sort_by(f64::total_cmp);
        for (x, y) in e.iter().zip(lam) {
            assert!((x - y).abs() < 1e-12, "{e:?}");
        }
        // A larger one: the eigenvalues keep the trace and the Frobenius norm.
        let n = 60;
        let b: Vec<f64> = (0..n * n).map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0).collect();
        let a: Vec<f64> = (0..n * n).map(|i| (0..n).map(|k| b[(i / n) * n + k] * b[(i % n) * n + k]).sum()).collect();
        let tr: f64 = (0..n).map(|i| a[i * n + i]).sum();
        let fro: f64 = a.iter().map(|x| x * x).sum();
        let e = symmetric_eigenvalues(a, n).unwrap();
        assert!((e.iter().sum::<f64>() - tr).abs() < 1e-9 * tr);
        assert!((e.iter().map(|x| x * x).sum::<f64>() - fro).abs() < 1e-9 * fro);
        assert!(e.iter().all(|&x| x > -1e-9), "a Gram matrix has no negative eigenvalues");
    }

    #[test]
    fn numpy_random_state_choice() {
        // np.random.RandomState(2020): choice(10, 4, replace=False), then choice(1000, 3, ...).
        let mut r = NumpyRandomState::new(2020);
        assert_eq!(r.choice(10, 4), vec![2, 4, 9, 1]);
        assert_eq!(r.choice(1000, 3), vec![358, 763, 430]);
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero() {
        let f = Features::new(6, 3, (0..18).map(|i| ((i * 37) % 11) as f32 / 7.0).collect()).unwrap();
        let v = fid(&f, &f).unwrap();
        assert!(v.abs() < 1e-6, "{v}"); // rounding: this covariance is singular
    }
}
