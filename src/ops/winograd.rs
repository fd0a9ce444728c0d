//! 3×3 stride-1 convolutions without padding or with a reflection padding of 1 (the residual
//! blocks' convolutions) by Winograd's minimal filtering F(m×m, 3×3): every α×α input tile
//! (α = m + 2, tiles step by m) gives an m×m output tile with α² multiplications per input
//! channel instead of 9m². F(4×4, 3×3) by default (36 per 16 outputs: 4× less GEMM work than
//! im2col), F(2×2, 3×3) (16 per 4 outputs) with `CS_WINOGRAD_TILE=2`, to compare.
//!
//! With the transforms Bᵀ (α×α), G (α×3) and Aᵀ (m×α) of Lavin & Gray (2016), every input tile
//! d and every filter g give V = Bᵀ d B and U = G g Gᵀ, and
//!   y_tile = Aᵀ [ Σ_ci U[co,ci] ⊙ V[ci] ] A.
//! For each of the α² tile positions ξ the channel sum is one GEMM:
//!   M[ξ] [Cout, T] = U[ξ] [Cout, Cin] · V[ξ] [Cin, T].
//! Buffers are channel-major ([C][α²][ts], ts ≥ T a padded row length; U as [Cout][α²][Cin]) so
//! transforms run in parallel over channels on contiguous chunks and, within a channel, over whole
//! rows of tiles as vector loops; the GEMMs read them with strides.
//! The gradients are the adjoints of the same linear maps, so they are GEMMs in the same domain:
//!   dM = A dY Aᵀ,  dV[ξ] = U[ξ]ᵀ · dM[ξ],  dx = Σ_tiles B dV Bᵀ,
//!   dU[ξ] = dM[ξ] · V[ξ]ᵀ,  dW = Gᵀ dU G.
//! The three ops (forward, data gradient, filter gradient) are bilinear and each one's
//! derivatives are the other two, so second-order gradients work as for `conv`.

use super::gemm::{matmul_batch, with_scratch, with_scratch_slot, Mat};
use super::f32_data;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether a convolution takes this path: 3×3, stride 1, no padding, and enough channels for
/// the per-position GEMMs to beat one im2col GEMM. `CS_NO_WINOGRAD` set turns it off (for
/// benchmarks).
pub(crate) fn applies(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> bool {
    k == 3 && stride == 1 && pad == 0 && cin >= 16 && cout >= 16 && !super::settings().no_winograd
}

/// `xs` [B,Cin,H,W] reflection-padded by `pad` (0 or 1), `w` [Cout,Cin,3,3] →
/// [B,Cout,H+2·pad−2,W+2·pad−2] (contiguous f32 CPU operands). The padding happens inside the
/// transforms, so no padded copy of `xs` exists or is kept for backward.
pub(crate) fn conv3x3(xs: &Tensor, w: &Tensor, pad: usize) -> Result<Tensor> {
    xs.apply_op2(w, Forward { pad, m: default_tile() })
}

/// The output tile size m: 4, or 2 where `CS_WINOGRAD_TILE=2`.
fn default_tile() -> usize {
    super::settings().winograd_tile
}

/// A transform matrix of F(2×2, 3×3) or F(4×4, 3×3), row-major in the top-left corner.
type Mat6 = [[f32; 6]; 6];

const fn transpose(m: Mat6) -> Mat6 {
    let mut t = [[0f32; 6]; 6];
    let mut i = 0;
    while i < 6 {
        let mut j = 0;
        while j < 6 {
            t[j][i] = m[i][j];
            j += 1;
        }
        i += 1;
    }
    t
}

/// The matrices of one algorithm F(m×m, 3×3), with their transposes, so that every step of a
/// transform is "dst[r] = Σ_c mat[r][c]·src[c]" with compile-time coefficients.
struct Scheme {
    bt: Mat6, // Bᵀ [α, α]
    b: Mat6,  // B [α, α]
    g: Mat6,  // G [α, 3]
    gt: Mat6, // Gᵀ [3, α]
    at: Mat6, // Aᵀ [m, α]
    a: Mat6,  // A [α, m]
}

impl Scheme {
    const fn new(bt: Mat6, g: Mat6, at: Mat6) -> Self {
        Self { bt, b: transpose(bt), g, gt: transpose(g), at, a: transpose(at) }
    }
}

/// F(2×2, 3×3), interpolation points 0, ±1, ∞.
#[rustfmt::skip]
const F2: Scheme = Scheme::new(
    [[1., 0., -1., 0., 0., 0.],
     [0., 1., 1., 0., 0., 0.],
     [0., -1., 1., 0., 0., 0.],
     [0., 1., 0., -1., 0., 0.],
     [0.; 6], [0.; 6]],
    [[1., 0., 0., 0., 0., 0.],
     [0.5, 0.5, 0.5, 0., 0., 0.],
     [0.5, -0.5, 0.5, 0., 0., 0.],
     [0., 0., 1., 0., 0., 0.],
     [0.; 6], [0.; 6]],
    [[1., 1., 1., 0., 0., 0.],
     [0., 1., -1., -1., 0., 0.],
     [0.; 6], [0.; 6], [0.; 6], [0.; 6]],
);

/// F(4×4, 3×3), interpolation points 0, ±1, ±2, ∞.
#[rustfmt::skip]
const F4: Scheme = Scheme::new(
    [[4., 0., -5., 0., 1., 0.],
     [0., -4., -4., 1., 1., 0.],
     [0., 4., -4., -1., 1., 0.],
     [0., -2., -1., 2., 1., 0.],
     [0., 2., -1., -2., 1., 0.],
     [0., 4., 0., -5., 0., 1.]],
    [[1. / 4., 0., 0., 0., 0., 0.],
     [-1. / 6., -1. / 6., -1. / 6., 0., 0., 0.],
     [-1. / 6., 1. / 6., -1. / 6., 0., 0., 0.],
     [1. / 24., 1. / 12., 1. / 6., 0., 0., 0.],
     [1. / 24., -1. / 12., 1. / 6., 0., 0., 0.],
     [0., 0., 1., 0., 0., 0.]],
    [[1., 1., 1., 1., 1., 0.],
     [0., 1., -1., 2., -2., 0.],
     [0., 1., 1., 4., 4., 0.],
     [0., 1., -1., 8., -8., 1.],
     [0.; 6], [0.; 6]],
);

#[inline(always)]
fn scheme<const M: usize>() -> &'static Scheme {
    if M == 2 {
        &F2
    } else {
        &F4
    }
}

/// Floats of transformed data (inputs plus outputs) one band of tiles may use (64 MiB).
const BAND_FLOATS: usize = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Lets the unit tests force one tile row per band.
    static BAND_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(BAND_FLOATS) };
}

fn band_limit() -> usize {
    #[cfg(test)]
    return BAND_LIMIT.with(std::cell::Cell::get);
    #[cfg(not(test))]
    BAND_FLOATS
}

/// The tiling of one stored [sh, sw] input plane, reflection-padded by `pad` (0 or 1) to the
/// [h, w] plane the convolution sees: output (h−2)×(w−2) in m×m tiles, `th`×`tw` of them.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    sh: usize,
    sw: usize,
    pad: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    m: usize,
    alpha: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(sh: usize, sw: usize, pad: usize, m: usize) -> Result<Self> {
        if pad > 1 || (pad == 1 && (sh < 2 || sw < 2)) {
            bail!("winograd conv: reflection padding {pad} of a {sh}x{sw} input is not supported");
        }
        if m != 2 && m != 4 {
            bail!("winograd conv: output tiles of {m}x{m} are not supported (2 or 4)");
        }
        let (h, w) = (sh + 2 * pad, sw + 2 * pad);
        if h < 3 || w < 3 {
            bail!("3x3 convolution of a {h}x{w} input without padding has no output");
        }
        let (ho, wo) = (h - 2, w - 2);
        Ok(Self { sh, sw, pad, h, w, ho, wo, m, alpha: m + 2, th: ho.div_ceil(m), tw: wo.div_ceil(m) })
    }

    /// Tile positions α².
    fn positions(&self) -> usize {
        self.alpha * self.alpha
    }

    fn plane(&self) -> usize {
        self.sh * self.sw
    }

    /// Columns one row of tiles reads: m per tile plus the 2 the last one overlaps (zeros past `w`).
    fn row_width(&self) -> usize {
        self.m * self.tw + 2
    }

    /// Padded rows the tile rows `band` read.
    fn band_rows(&self, band: (usize, usize)) -> usize {
        self.m * (band.1 - band.0) + 2
    }

    /// The stored row that padded row `r` (< h) shows.
    fn source_row(&self, r: usize) -> usize {
        match (self.pad, r) {
            (0, r) => r,
            (_, 0) => 1,
            (_, r) if r > self.sh => self.sh - 2,
            (_, r) => r - 1,
        }
    }

    /// Writes padded row `r`'s `w` values into `row[..w]` from `src`, the stored row.
    fn padded_row(&self, src: &[f32], row: &mut [f32]) {
        if self.pad == 0 {
            row[..self.sw].copy_from_slice(src);
        } else {
            row[0] = src[1];
            row[1..self.sw + 1].copy_from_slice(src);
            row[self.sw + 1] = src[self.sw - 2];
        }
    }

    /// Adds padded row `row[..w]` into the stored row `dst` (the adjoint of `padded_row`).
    fn fold_row(&self, row: &[f32], dst: &mut [f32]) {
        let p = self.pad;
        for (d, v) in dst.iter_mut().zip(&row[p..p + self.sw]) {
            *d += v;
        }
        if p == 1 {
            dst[1] += row[0];
            dst[self.sw - 2] += row[self.sw + 1];
        }
    }

    /// Bands of tile rows whose transformed data (α² floats per tile for each of `channels`)
    /// stays within [`BAND_FLOATS`].
    fn bands(&self, channels: usize) -> Vec<(usize, usize)> {
        let rows = (band_limit() / (self.positions() * channels * self.tw).max(1)).clamp(1, self.th);
        (0..self.th).step_by(rows).map(|r0| (r0, (r0 + rows).min(self.th))).collect()
    }

    /// Row length of a band buffer: see [`row_stride`].
    fn band_stride(&self, band: (usize, usize)) -> usize {
        row_stride((band.1 - band.0) * self.tw)
    }
}

/// Distance between the α² position rows of one channel in a band buffer: the band's tile count
/// rounded up to whole cache lines, and moved off multiples of 1 KiB so that the rows a
/// transform reads or writes side by side do not all fall into the same cache sets.
fn row_stride(tb: usize) -> usize {
    let s = tb.next_multiple_of(16);
    if s.is_multiple_of(256) {
        s + 16
    } else {
        s
    }
}

// The transforms below work on whole rows of tiles at once: every entry of a tile's α×α (or
// m×m, 3×3) matrix is a vector over the tiles of a tile row (or over input channels, for the
// filters), and every step of a matrix product maps all the input vectors to all the output
// vectors in one pass (`apply`), 8 lanes at a time in registers, with the scheme's constant
// coefficients folded in at compile time. Each transform body is written once for the tile
// size m (and α = m + 2) as const parameters and dispatched on `Tiles::m`.

/// `dst[dst_at[r]..][..len]` = Σ_c `mat[r][c]`·`src[src_at[c]..][..len]` for r < R, c < C.
#[inline(always)]
fn apply<const R: usize, const C: usize>(mat: &Mat6, src: &[f32], src_at: [usize; C], dst: &mut [f32], dst_at: [usize; R], len: usize) {
    let body = len - len % 8;
    let mut x = [[0f32; 8]; C];
    for q in (0..body).step_by(8) {
        for c in 0..C {
            x[c].copy_from_slice(&src[src_at[c] + q..][..8]);
        }
        for r in 0..R {
            let mut acc = [0f32; 8];
            for c in 0..C {
                let k = mat[r][c];
                if k != 0.0 {
                    for l in 0..8 {
                        acc[l] += k * x[c][l];
                    }
                }
            }
            dst[dst_at[r] + q..][..8].copy_from_slice(&acc);
        }
    }
    for q in body..len {
        for r in 0..R {
            let mut acc = 0f32;
            for c in 0..C {
                let k = mat[r][c];
                if k != 0.0 {
                    acc += k * src[src_at[c] + q];
                }
            }
            dst[dst_at[r] + q] = acc;
        }
    }
}

/// `N` offsets: `off`, `off + stride`, ….
#[inline(always)]
fn at<const N: usize>(off: usize, stride: usize) -> [usize; N] {
    let mut o = [off; N];
    for (i, v) in o.iter_mut().enumerate() {
        *v += i * stride;
    }
    o
}

/// Splits `row` into its `M` phases: `ph[p·len + q]` = `row[M·q + p]`, zeros past the row.
#[inline(always)]
fn deinterleave<const M: usize>(row: &[f32], ph: &mut [f32], len: usize) {
    let full = (row.len() / M).min(len);
    let ph = &mut ph[..M * len];
    for (q, chunk) in row.chunks_exact(M).take(full).enumerate() {
        for p in 0..M {
            ph[p * len + q] = chunk[p];
        }
    }
    for p in 0..M {
        for q in full..len {
            ph[p * len + q] = row.get(M * q + p).copied().unwrap_or(0.0);
        }
    }
}

/// The inverse of `deinterleave` into `out` (entries past `out` dropped): `out[M·q + p]`
/// = (or += where `add`) `ph[p·len + q]`.
#[inline(always)]
fn interleave<const M: usize>(ph: &[f32], len: usize, out: &mut [f32], add: bool) {
    let ph = &ph[..M * len];
    let full = (out.len() / M).min(len);
    for (q, chunk) in out.chunks_exact_mut(M).take(full).enumerate() {
        for p in 0..M {
            chunk[p] = if add { chunk[p] + ph[p * len + q] } else { ph[p * len + q] };
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(M * full) {
        let v = ph[(i % M) * len + i / M];
        *o = if add { *o + v } else { v };
    }
}

/// Calls `$f::<2, 4>` or `$f::<4, 6>` (m and α) for the tile size `$m`.
macro_rules! by_tile {
    ($m:expr, $f:ident($($arg:expr),*)) => {
        match $m {
            2 => $f::<2, 4>($($arg),*),
            _ => $f::<4, 6>($($arg),*),
        }
    };
}

/// Runs `f(scratch, dst chunk, src chunk)` on the first `c` chunks of `dst` and `src` (one per
/// channel, of the given lengths) in parallel, each thread with its own scratch of `scratch`
/// floats: the shape of every band transform below.
fn per_channel(
    (dst, dst_len): (&mut [f32], usize),
    (src, src_len): (&[f32], usize),
    c: usize,
    scratch: usize,
    f: impl Fn(&mut [f32], &mut [f32], &[f32]) + Send + Sync,
) {
    dst.par_chunks_mut(dst_len).zip(src.par_chunks(src_len)).take(c).for_each_init(|| vec![0f32; scratch], |buf, (d, s)| f(buf, d, s));
}

/// U [Cout][α²][Cin] from `w` [Cout, Cin, 3, 3] into `u` (so each output channel's part is one
/// contiguous chunk; the GEMMs read U[ξ] [Cout, Cin] with row stride α²·Cin).
fn filter_transform(w: &[f32], cout: usize, cin: usize, m: usize, u: &mut [f32]) {
    let al = m + 2;
    u.par_chunks_mut(al * al * cin).zip(w.par_chunks(9 * cin)).take(cout).for_each(|(uc, wc)| filter_plane(uc, wc, cin, m));
}

/// Runs `f` on U for `w` in a reused per-thread buffer: U is α²/9 times the size of the weights
/// (9.4 MB for 256 channels and 4×4 tiles), too much to allocate and zero on every call.
fn with_filter<R>(w: &[f32], cout: usize, cin: usize, m: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    with_scratch_slot(1, (m + 2) * (m + 2) * cout * cin, |u| {
        filter_transform(w, cout, cin, m, u);
        f(u)
    })
}

simd_fn! {
    fn filter_plane(uc: &mut [f32], wc: &[f32], cin: usize, m: usize) {
        by_tile!(m, filter_plane_m(uc, wc, cin))
    }
}

// The indices address several arrays at once (taps, H, U), as in the maths.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn filter_plane_m<const M: usize, const AL: usize>(uc: &mut [f32], wc: &[f32], cin: usize) {
    // 8 input channels at a time, in registers: their 9 taps g, H = G g (α×3), U = H Gᵀ (α×α),
    // every entry a vector over the 8 channels.
    let s = scheme::<M>();
    for c0 in (0..cin).step_by(8) {
        let n = (cin - c0).min(8);
        let mut g = [[0f32; 8]; 9];
        for (l, taps) in wc[c0 * 9..(c0 + n) * 9].chunks_exact(9).enumerate() {
            for (k, &v) in taps.iter().enumerate() {
                g[k][l] = v;
            }
        }
        let mut h = [[[0f32; 8]; 3]; AL];
        for i in 0..AL {
            for j in 0..3 {
                for k in 0..3 {
                    let c = s.g[i][k];
                    if c != 0.0 {
                        for l in 0..8 {
                            h[i][j][l] += c * g[k * 3 + j][l];
                        }
                    }
                }
            }
        }
        for i in 0..AL {
            for q in 0..AL {
                let mut u = [0f32; 8];
                for j in 0..3 {
                    let c = s.g[q][j];
                    if c != 0.0 {
                        for l in 0..8 {
                            u[l] += c * h[i][j][l];
                        }
                    }
                }
                uc[(i * AL + q) * cin + c0..][..n].copy_from_slice(&u[..n]);
            }
        }
    }
}

/// dW [Cout, Cin, 3, 3] from dU [Cout][α²][Cin] (the adjoint of `filter_transform`).
fn filter_transform_adjoint(du: &[f32], cout: usize, cin: usize, m: usize) -> Vec<f32> {
    let al = m + 2;
    let mut dw = vec![0f32; cout * cin * 9];
    let scratch = || vec![0f32; (9 + 3 * al) * cin];
    dw.par_chunks_mut(9 * cin).zip(du.par_chunks(al * al * cin)).take(cout).for_each_init(scratch, |buf, (wc, uc)| filter_adjoint_plane(buf, wc, uc, cin, m));
    dw
}

simd_fn! {
    fn filter_adjoint_plane(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize, m: usize) {
        by_tile!(m, filter_adjoint_plane_m(buf, wc, uc, cin))
    }
}

#[inline(always)]
fn filter_adjoint_plane_m<const M: usize, const AL: usize>(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize) {
    // H = Gᵀ dU (3×α), then dW = H G (3×3), each entry a vector over input channels.
    let s = scheme::<M>();
    let (h, o) = buf.split_at_mut(3 * AL * cin);
    for l in 0..AL {
        apply::<3, AL>(&s.gt, uc, at(l * cin, AL * cin), h, at(l * cin, AL * cin), cin);
    }
    for k in 0..3 {
        apply::<3, AL>(&s.gt, h, at(k * AL * cin, cin), o, at(k * 3 * cin, cin), cin);
    }
    for (k, ok) in o.chunks_exact(cin).take(9).enumerate() {
        for (wf, &v) in wc.chunks_exact_mut(9).zip(ok) {
            wf[k] = v;
        }
    }
}

/// V [C][α²][ts] for the tile rows `band` of `x` [C, sh, sw], padded as `t` says; reads past
/// the padded plane's edge (partial tiles) are zeros.
fn input_transform(x: &[f32], c: usize, t: &Tiles, band: (usize, usize), v: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = 2 * t.alpha * t.row_width() + t.m * (t.tw + 1);
    per_channel((v, t.positions() * ts), (x, t.plane()), c, scratch, |buf, vc, plane| input_plane(buf, vc, plane, t, band, ts));
}

simd_fn! {
    fn input_plane(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, input_plane_m(buf, vc, plane, t, band, ts))
    }
}

#[inline(always)]
fn input_plane_m<const M: usize, const AL: usize>(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    // Bᵀ down the columns of a whole tile row's α padded rows, then, on each result row split
    // into its m phases (column m·tj + j of tile tj is phase j mod m at tile tj + j div m),
    // Bᵀ across the tiles.
    let (s, tw, width) = (scheme::<M>(), t.tw, t.row_width());
    let pl = tw + 1;
    let (padded, rest) = buf.split_at_mut(AL * width);
    let (cols, ph) = rest.split_at_mut(AL * width);
    for ti in band.0..band.1 {
        for (i, row) in padded.chunks_exact_mut(width).enumerate() {
            let r = M * ti + i;
            if r < t.h {
                let sr = t.source_row(r);
                t.padded_row(&plane[sr * t.sw..(sr + 1) * t.sw], row);
                row[t.w..].fill(0.0);
            } else {
                row.fill(0.0);
            }
        }
        apply::<AL, AL>(&s.bt, padded, at(0, width), cols, at(0, width), width);
        let base = (ti - band.0) * tw;
        for k in 0..AL {
            deinterleave::<M>(&cols[k * width..][..width], ph, pl);
            let mut src_at = [0; AL];
            for (j, o) in src_at.iter_mut().enumerate() {
                *o = (j % M) * pl + j / M;
            }
            apply::<AL, AL>(&s.bt, ph, src_at, vc, at(k * AL * ts + base, ts), tw);
        }
    }
}

/// Adds Σ_tiles B dV Bᵀ from dV [C][α²][ts] into `dx` [C, sh, sw] (the adjoint of
/// `input_transform`): tiles add into a padded band of rows, which is then folded back.
fn input_transform_adjoint(dv: &[f32], c: usize, t: &Tiles, band: (usize, usize), dx: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = t.band_rows(band) * t.row_width() + 2 * t.positions() * t.tw + t.m * (t.tw + 1);
    per_channel((dx, t.plane()), (dv, t.positions() * ts), c, scratch, |buf, plane, vc| input_adjoint_plane(buf, plane, vc, t, band, ts));
}

simd_fn! {
    fn input_adjoint_plane(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, input_adjoint_plane_m(buf, plane, vc, t, band, ts))
    }
}

#[inline(always)]
fn input_adjoint_plane_m<const M: usize, const AL: usize>(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    let (s, tw, width) = (scheme::<M>(), t.tw, t.row_width());
    let pl = tw + 1;
    let r0 = M * band.0; // first padded row the band's tiles touch
    let (acc, rest) = buf.split_at_mut(t.band_rows(band) * width);
    let (cb, rest) = rest.split_at_mut(AL * AL * tw);
    let (dd, ph) = rest.split_at_mut(AL * AL * tw);
    acc.fill(0.0);
    for ti in band.0..band.1 {
        let base = (ti - band.0) * tw;
        // C = dV B (row k of C from row k of dV), then dD = B C (column j from column j).
        for k in 0..AL {
            apply::<AL, AL>(&s.b, vc, at(k * AL * ts + base, ts), cb, at(k * AL * tw, tw), tw);
        }
        for j in 0..AL {
            apply::<AL, AL>(&s.b, cb, at(j * tw, AL * tw), dd, at(j * tw, AL * tw), tw);
        }
        // Entry j of row i of tile tj adds into padded row m·ti + i, column m·tj + j: phase
        // j mod m at tile tj + j div m, where the last 2 entries of a tile meet the first 2 of
        // the next.
        for i in 0..AL {
            let d = |j: usize| &dd[(i * AL + j) * tw..][..tw];
            for p in 0..M {
                let part = &mut ph[p * pl..][..pl];
                part[..tw].copy_from_slice(d(p));
                part[tw] = 0.0;
                if p + M < AL {
                    for (v, &e) in part[1..].iter_mut().zip(d(p + M)) {
                        *v += e;
                    }
                }
            }
            interleave::<M>(ph, pl, &mut acc[(M * ti + i - r0) * width..][..width], true);
        }
    }
    for (i, row) in acc.chunks_exact(width).enumerate() {
        let r = r0 + i;
        if r >= t.h {
            break;
        }
        let sr = t.source_row(r);
        t.fold_row(row, &mut plane[sr * t.sw..(sr + 1) * t.sw]);
    }
}

/// Writes Aᵀ M A from M [C][α²][ts] into the tiles `band` of `y` [C, Ho, Wo].
fn output_transform(m: &[f32], c: usize, t: &Tiles, band: (usize, usize), y: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = (t.m * t.alpha + t.m) * t.tw;
    per_channel((y, t.ho * t.wo), (m, t.positions() * ts), c, scratch, |buf, plane, mc| output_plane(buf, plane, mc, t, band, ts));
}

simd_fn! {
    fn output_plane(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, output_plane_m(buf, plane, mc, t, band, ts))
    }
}

#[inline(always)]
fn output_plane_m<const M: usize, const AL: usize>(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    let (s, tw) = (scheme::<M>(), t.tw);
    let (r, ph) = buf.split_at_mut(M * AL * tw);
    for ti in band.0..band.1 {
        let base = (ti - band.0) * tw;
        // R = Aᵀ M down the columns (m×α), then each output row R A across the tiles, as its
        // m phases.
        for j in 0..AL {
            apply::<M, AL>(&s.at, mc, at(j * ts + base, AL * ts), r, at(j * tw, AL * tw), tw);
        }
        for i in 0..M {
            let row = M * ti + i;
            if row >= t.ho {
                break;
            }
            apply::<M, AL>(&s.at, r, at(i * AL * tw, tw), ph, at(0, tw), tw);
            interleave::<M>(ph, tw, &mut plane[row * t.wo..][..t.wo], false);
        }
    }
}

/// dM [C][α²][ts] = A dY Aᵀ for the tiles `band` of `dy` [C, Ho, Wo] (the adjoint of
/// `output_transform`; outputs past the edge count as zero).
fn output_transform_adjoint(dy: &[f32], c: usize, t: &Tiles, band: (usize, usize), dm: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = (t.m * t.m + t.alpha * t.m) * t.tw;
    per_channel((dm, t.positions() * ts), (dy, t.ho * t.wo), c, scratch, |buf, mc, plane| output_adjoint_plane(buf, mc, plane, t, band, ts));
}

simd_fn! {
    fn output_adjoint_plane(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, output_adjoint_plane_m(buf, mc, plane, t, band, ts))
    }
}

#[inline(always)]
fn output_adjoint_plane_m<const M: usize, const AL: usize>(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    let (s, tw) = (scheme::<M>(), t.tw);
    let (d, e) = buf.split_at_mut(M * M * tw);
    for ti in band.0..band.1 {
        let base = (ti - band.0) * tw;
        // The tile row's m output rows, each as its m phases (d[i][p]), zeros past the edges.
        for (i, di) in d.chunks_exact_mut(M * tw).enumerate() {
            let row = M * ti + i;
            if row < t.ho {
                deinterleave::<M>(&plane[row * t.wo..][..t.wo], di, tw);
            } else {
                di.fill(0.0);
            }
        }
        // E = A dY (α×m, column p from column p), then dM = E Aᵀ (row k from row k).
        for p in 0..M {
            apply::<AL, M>(&s.a, d, at(p * tw, M * tw), e, at(p * tw, M * tw), tw);
        }
        for k in 0..AL {
            apply::<AL, M>(&s.a, e, at(k * M * tw, tw), mc, at(k * AL * ts + base, ts), tw);
        }
    }
}

/// For every ξ: `dst`[ξ] (rows of a [rows][α²][ts] buffer) = U[ξ] · `src`[ξ] (rows of a
/// [k][α²][ts] buffer), with U [Cout][α²][Cin] and U[ξ] [Cout, Cin] or, `transpose_u`, its
/// transpose [Cin, Cout].
#[allow(clippy::too_many_arguments)]
fn gemm_per_position(u: &[f32], transpose_u: bool, rows: usize, k: usize, src: &[f32], t: &Tiles, band: (usize, usize), dst: &mut [f32]) {
    let cin = if transpose_u { rows } else { k };
    let (tb, ts, pos) = ((band.1 - band.0) * t.tw, t.band_stride(band), t.positions());
    let lhs = if transpose_u { Mat { data: u, rs: 1, cs: pos * cin } } else { Mat { data: u, rs: pos * cin, cs: 1 } };
    let rhs = Mat { data: src, rs: pos * ts, cs: 1 };
    matmul_batch(pos, (rows, tb, k), (dst, ts, pos * ts), false, (lhs, cin), (rhs, ts));
}

/// Runs `step(image, band, first, second)` for every image that `images` yields (its slices)
/// and every band of its tiles, with per-thread scratch for the band's planes in the transform
/// domain: `first` holds `split` channels of them, `second` the other `cin + cout − split`.
fn for_each_band<I>(t: &Tiles, cin: usize, cout: usize, split: usize, images: impl Iterator<Item = I>, mut step: impl FnMut(&mut I, (usize, usize), &mut [f32], &mut [f32])) {
    for mut image in images {
        for band in t.bands(cin + cout) {
            let len = t.positions() * t.band_stride(band);
            with_scratch(len * (cin + cout), |buf| {
                let (first, second) = buf.split_at_mut(len * split);
                step(&mut image, band, first, second);
            });
        }
    }
}

fn forward_kernel(x: &[f32], w: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let mut y = vec![0f32; x.len() / (cin * t.plane()) * cout * t.ho * t.wo];
    with_filter(w, cout, cin, t.m, |u| {
        let images = x.chunks_exact(cin * t.plane()).zip(y.chunks_exact_mut(cout * t.ho * t.wo));
        for_each_band(t, cin, cout, cin, images, |(xb, yb), band, v, m| {
            input_transform(xb, cin, t, band, v);
            gemm_per_position(u, false, cout, cin, v, t, band, m);
            output_transform(m, cout, t, band, yb);
        });
    });
    y
}

fn data_grad_kernel(dy: &[f32], w: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let mut dx = vec![0f32; dy.len() / (cout * t.ho * t.wo) * cin * t.plane()];
    with_filter(w, cout, cin, t.m, |u| {
        let images = dy.chunks_exact(cout * t.ho * t.wo).zip(dx.chunks_exact_mut(cin * t.plane()));
        for_each_band(t, cin, cout, cout, images, |(dyb, dxb), band, dm, dv| {
            output_transform_adjoint(dyb, cout, t, band, dm);
            // dV[ξ] [Cin, Tb] = U[ξ]ᵀ · dM[ξ]; U[ξ] is [Cout, Cin].
            gemm_per_position(u, true, cin, cout, dm, t, band, dv);
            input_transform_adjoint(dv, cin, t, band, dxb);
        });
    });
    dx
}

fn filter_grad_kernel(x: &[f32], dy: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let pos = t.positions();
    // dU in the reused buffer: the first band's GEMMs overwrite it, the others add.
    with_scratch_slot(1, pos * cout * cin, |du| {
        let mut first = true;
        let images = x.chunks_exact(cin * t.plane()).zip(dy.chunks_exact(cout * t.ho * t.wo));
        for_each_band(t, cin, cout, cin, images, |(xb, dyb), band, v, dm| {
            let (tb, ts) = ((band.1 - band.0) * t.tw, t.band_stride(band));
            input_transform(xb, cin, t, band, v);
            output_transform_adjoint(dyb, cout, t, band, dm);
            // dU[ξ] [Cout, Cin] (+)= dM[ξ] [Cout, Tb] · V[ξ]ᵀ [Tb, Cin].
            let lhs = Mat { data: dm, rs: pos * ts, cs: 1 };
            let rhs = Mat { data: v, rs: 1, cs: pos * ts };
            matmul_batch(pos, (cout, cin, tb), (du, cin, pos * cin), !first, (lhs, ts), (rhs, ts));
            first = false;
        });
        filter_transform_adjoint(du, cout, cin, t.m)
    })
}

/// (x [B,Cin,H,W], w [Cout,Cin,3,3]) → y [B,Cout,H+2p−2,W+2p−2], x reflection-padded by p.
struct Forward {
    pad: usize,
    m: usize,
}

/// (dy [B,Cout,H+2p−2,W+2p−2], w [Cout,Cin,3,3]) → dx [B,Cin,H,W].
struct DataGrad {
    h: usize,
    w: usize,
    pad: usize,
    m: usize,
}

/// (x [B,Cin,H,W], dy [B,Cout,H+2p−2,W+2p−2]) → dW [Cout,Cin,3,3].
struct FilterGrad {
    pad: usize,
    m: usize,
}

fn check_weight(l: &Layout, cin: usize) -> Result<usize> {
    let (cout, cin_w, kh, kw) = l.shape().dims4()?;
    if (cin_w, kh, kw) != (cin, 3, 3) {
        bail!("winograd conv: weight {:?} does not fit {cin} input channels and a 3x3 kernel", l.dims());
    }
    Ok(cout)
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "winograd-conv3x3"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let cout = check_weight(l2, cin)?;
        let t = Tiles::new(h, w, self.pad, self.m)?;
        let y = forward_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(y), Shape::from((bsz, cout, t.ho, t.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let (pad, m) = (self.pad, self.m);
        let dx = x.track_op().then(|| dy.apply_op2(w, DataGrad { h, w: wd, pad, m })).transpose()?;
        let dw = w.track_op().then(|| x.apply_op2(&dy, FilterGrad { pad, m })).transpose()?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for DataGrad {
    fn name(&self) -> &'static str {
        "winograd-conv3x3-data-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cout, ho, wo) = l1.shape().dims4()?;
        let (cout_w, cin, _, _) = l2.shape().dims4()?;
        if cout_w != cout || check_weight(l2, cin).is_err() {
            bail!("winograd conv backward: gradient {:?} does not fit weight {:?}", l1.dims(), l2.dims());
        }
        let t = Tiles::new(self.h, self.w, self.pad, self.m)?;
        if (t.ho, t.wo) != (ho, wo) {
            bail!("winograd conv backward: gradient {ho}x{wo} does not match input {}x{}", self.h, self.w);
        }
        let dx = data_grad_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(dx), Shape::from((bsz, cin, self.h, self.w))))
    }

    fn bwd(&self, dy: &Tensor, w: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddx = ddx.contiguous()?;
        let (pad, m) = (self.pad, self.m);
        let ddy = dy.track_op().then(|| ddx.apply_op2(w, Forward { pad, m })).transpose()?;
        let dw = w.track_op().then(|| ddx.apply_op2(dy, FilterGrad { pad, m })).transpose()?;
        Ok((ddy, dw))
    }
}

impl CustomOp2 for FilterGrad {
    fn name(&self) -> &'static str {
        "winograd-conv3x3-filter-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let (bg, cout, ho, wo) = l2.shape().dims4()?;
        let t = Tiles::new(h, w, self.pad, self.m)?;
        if (bg, ho, wo) != (bsz, t.ho, t.wo) {
            bail!("winograd conv filter gradient: gradient {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let dw = filter_grad_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(dw), Shape::from((cout, cin, 3, 3))))
    }

    fn bwd(&self, x: &Tensor, dy: &Tensor, _res: &Tensor, ddw: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddw = ddw.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let (pad, m) = (self.pad, self.m);
        let dx = x.track_op().then(|| dy.apply_op2(&ddw, DataGrad { h, w, pad, m })).transpose()?;
        let ddy = dy.track_op().then(|| x.apply_op2(&ddw, Forward { pad, m })).transpose()?;
        Ok((dx, ddy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (x, w, dy) test inputs for `t`.
    fn inputs(b: usize, cin: usize, cout: usize, t: &Tiles) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let val = super::super::test_value;
        let x = (0..b * cin * t.plane()).map(val).collect();
        let w = (0..cout * cin * 9).map(|i| val(i + 3)).collect();
        let dy = (0..b * cout * t.ho * t.wo).map(|i| val(i + 5)).collect();
        (x, w, dy)
    }

    type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);

    fn run_kernels(cin: usize, cout: usize, t: &Tiles, (x, w, dy): &Outputs) -> Outputs {
        (forward_kernel(x, w, cin, cout, t), data_grad_kernel(dy, w, cin, cout, t), filter_grad_kernel(x, dy, cin, cout, t))
    }

    /// The direct convolution, its data gradient and its filter gradient, in f64.
    fn direct(b: usize, cin: usize, cout: usize, t: &Tiles, (x, w, dy): &Outputs) -> [Vec<f64>; 3] {
        let rows = super::super::reflect_indices(t.sh, t.pad);
        let cols = super::super::reflect_indices(t.sw, t.pad);
        let mut y = vec![0f64; b * cout * t.ho * t.wo];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        for n in 0..b {
            for co in 0..cout {
                for ci in 0..cin {
                    for (i, j, ki, kj) in (0..t.ho).flat_map(|i| (0..t.wo).flat_map(move |j| (0..9).map(move |k| (i, j, k / 3, k % 3)))) {
                        let xi = ((n * cin + ci) * t.sh + rows[i + ki] as usize) * t.sw + cols[j + kj] as usize;
                        let wi = ((co * cin + ci) * 3 + ki) * 3 + kj;
                        let yi = ((n * cout + co) * t.ho + i) * t.wo + j;
                        y[yi] += w[wi] as f64 * x[xi] as f64;
                        dx[xi] += w[wi] as f64 * dy[yi] as f64;
                        dw[wi] += x[xi] as f64 * dy[yi] as f64;
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn max_rel_diff(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f64, |m, (&p, &q)| m.max((p as f64 - q).abs())) / scale
    }

    /// Both tile sizes, padded and not, with outputs that do and do not fill the last tiles:
    /// all three kernels against the direct sums.
    #[test]
    fn kernels_match_direct_convolution() {
        let (b, cin, cout) = (2, 5, 3);
        for m in [2, 4] {
            for (sh, sw, pad) in [(9, 8, 0), (7, 6, 1), (6, 11, 1), (3, 3, 0), (2, 2, 1), (12, 10, 1)] {
                let t = Tiles::new(sh, sw, pad, m).unwrap();
                let data = inputs(b, cin, cout, &t);
                let ours = run_kernels(cin, cout, &t, &data);
                let want = direct(b, cin, cout, &t, &data);
                for (name, a, w) in [("forward", &ours.0, &want[0]), ("data grad", &ours.1, &want[1]), ("filter grad", &ours.2, &want[2])] {
                    let d = max_rel_diff(a, w);
                    assert!(d < 2e-6, "F({m}x{m}) {sh}x{sw} pad {pad} {name}: {d}");
                }
            }
        }
    }

    /// One tile row per band gives the same results as one band, for all three kernels.
    #[test]
    fn banded_kernels_match_single_band() {
        let (b, cin, cout) = (2, 3, 4);
        for m in [2, 4] {
            for t in [Tiles::new(9, 8, 0, m).unwrap(), Tiles::new(7, 6, 1, m).unwrap(), Tiles::new(14, 13, 1, m).unwrap()] {
                let data = inputs(b, cin, cout, &t);
                let whole = run_kernels(cin, cout, &t, &data);
                BAND_LIMIT.with(|l| l.set(1));
                assert_eq!(t.bands(cin + cout).len(), t.th);
                let banded = run_kernels(cin, cout, &t, &data);
                BAND_LIMIT.with(|l| l.set(BAND_FLOATS));
                for (a, b) in [(&whole.0, &banded.0), (&whole.1, &banded.1), (&whole.2, &banded.2)] {
                    assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5), "F({m}x{m}) {t:?}");
                }
            }
        }
    }
}
